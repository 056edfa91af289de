// Test support of the client tests (tests/client/): paths of the built tools, a scratch folder,
// running a tool to completion, sambay-run's reference ids, and finding (and killing) the
// processes of a test's cluster by a unique string of their command lines.
//
// Ownership: a Scratch owns its folder (removed by the destructor); KillLeftovers kills on scope
// exit. Thread-safety: none (use from the test's main thread).
#ifndef SAMBAY_TESTS_CLIENT_CLIENT_UTIL_H_
#define SAMBAY_TESTS_CLIENT_CLIENT_UTIL_H_

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "tests/worker/process.h"

namespace sambay::testing {

// The tiny model's EOS ids.
inline const std::set<uint32_t> kTinyEos = {260, 256};

std::string Bin(const std::string& tool);    // build/bin/TOOL
std::string TinyModel();                     // build/models/tiny
std::string PythonStubs();                   // build/python
std::string Source(const std::string& rel);  // the checkout's REL

// A new folder under the test's temporary folder, removed with everything in it at the end.
// path() is "" when it could not be made.
class Scratch {
 public:
  Scratch();
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct RunResult {
  int exit_code = -1;  // -1: did not exit in time (killed); 128 + n: killed by signal n
  std::string out;
  std::string err;
  std::string Describe() const {
    return absl::StrCat("exit ", exit_code, "\n--- stdout:\n", Tail(out, 4000), "\n--- stderr:\n",
                        Tail(err, 4000));
  }
};

// The exit code of a raw wait status (128 + n for signal n).
int ExitCodeOf(int status);

// Runs a program to completion (SIGKILL after `timeout`), its output in files under `dir`; `env`
// entries NAME=VALUE are added to the test's environment.
RunResult RunTool(const std::string& binary, const std::vector<std::string>& args,
                  const std::string& dir, absl::Duration timeout = absl::Seconds(60),
                  const std::vector<std::string>& env = {});

// The tokens sambay-run generates (`extra`: its flags after the model), cut after the first EOS id
// as the router does unless ignore_eos.
std::vector<uint32_t> Reference(const std::vector<std::string>& extra, const std::string& dir,
                                bool cut_at_eos = true);

// "PID: command line" of the processes (other than this one) whose command line mentions
// `needle`.
std::vector<std::string> ProcessesMentioning(const std::string& needle);

// On scope exit, SIGKILLs whatever still mentions `needle` (a test's unique workdir): the
// servers cluster.sh starts are in their own sessions, so a failed test must not leave them.
class KillLeftovers {
 public:
  explicit KillLeftovers(std::string needle) : needle_(std::move(needle)) {}
  ~KillLeftovers();
  KillLeftovers(const KillLeftovers&) = delete;
  KillLeftovers& operator=(const KillLeftovers&) = delete;

 private:
  std::string needle_;
};

// cluster.sh serving (no --run) in `workdir`, started by the test with `extra` flags; waits up to
// 120 s for the router address (empty when it did not come).
struct ServingScript {
  std::unique_ptr<Process> script;
  std::string address;
};
ServingScript StartServingScript(const Scratch& scratch, const std::string& workdir,
                                 const std::vector<std::string>& extra);

}  // namespace sambay::testing

#endif  // SAMBAY_TESTS_CLIENT_CLIENT_UTIL_H_
