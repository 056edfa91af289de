// FlagSet: typed command-line flags for the server binaries, each also settable from an
// environment variable (precedence: command line > environment > default), with the
// effective configuration available as JSON for the startup log.
//
//   FlagSet flags("sambay-worker", "SAMBAY_");
//   std::string model; int64_t port = 50051;
//   flags.AddString("model", &model, "model directory");   // --model, SAMBAY_MODEL
//   flags.AddInt("port", &port, "gRPC port");              // --port, SAMBAY_PORT
//   absl::Status s = flags.Parse(argc, argv);              // --help gives kHelpRequested
//
// Names use dashes ("max-running"); the variable is the prefix + upper snake case
// (SAMBAY_MAX_RUNNING). "--name=value" and "--name value" are accepted; a bool flag also takes
// "--name" alone, and "true/false/1/0/yes/no". Errors name the flag or the variable.
//
// Ownership: the FlagSet writes through the pointers it is given, which must outlive Parse.
// Thread-safety: none; use from main() before starting threads.
#ifndef SAMBAY_COMMON_FLAGS_H_
#define SAMBAY_COMMON_FLAGS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace sambay {

class FlagSet {
 public:
  FlagSet(std::string program, std::string env_prefix);

  void AddString(const std::string& name, std::string* target, const std::string& help);
  void AddInt(const std::string& name, int64_t* target, const std::string& help);
  void AddDouble(const std::string& name, double* target, const std::string& help);
  void AddBool(const std::string& name, bool* target, const std::string& help);

  // Reads the environment, then argv. Positional arguments are an error. "--help" returns a
  // status with message kHelpRequested (print Usage() and exit 0).
  absl::Status Parse(int argc, char** argv);
  // Same, with an explicit environment lookup (tests).
  absl::Status Parse(const std::vector<std::string>& args,
                     const std::function<const char*(const char*)>& getenv);

  std::string Usage() const;
  // {"flag-name": value, ...} and where each value came from ("source": {...}).
  nlohmann::json Effective() const;
  std::string EnvName(const std::string& name) const;

  static constexpr const char* kHelpRequested = "help requested";

 private:
  enum class Type { kString, kInt, kDouble, kBool };
  struct Flag {
    Type type;
    void* target;
    std::string help;
    std::string default_text;
    std::string source = "default";
  };
  absl::Status Set(const std::string& name, Flag& flag, const std::string& value,
                   const std::string& origin);
  void Add(const std::string& name, Type type, void* target, const std::string& help);

  std::string program_;
  std::string env_prefix_;
  std::map<std::string, Flag> flags_;
};

}  // namespace sambay

#endif  // SAMBAY_COMMON_FLAGS_H_
