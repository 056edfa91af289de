// Test support: real child processes (any binary) for integration tests on loopback.
//
//   Process        fork/execv of a binary with its stdout/stderr sent to files; Signal, Kill,
//                  WaitExit; the destructor kills (SIGKILL) and reaps a process still running.
//   ServerProcess  a Process that follows the sambay server contract: started with
//                  `--port-file PATH`, it writes PATH atomically with
//                  {"grpc_port":N,"metrics_port":M,"pid":P} once serving. Start() waits for it.
//
// Children also get PR_SET_PDEATHSIG(SIGKILL), so a crashed test never leaves servers behind.
//
// Ownership: a Process owns its child until it was reaped. Thread-safety: none (use one
// Process object from one thread at a time; different objects are independent).
#ifndef SAMBAY_TESTS_WORKER_PROCESS_H_
#define SAMBAY_TESTS_WORKER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sambay::testing {

struct ProcessOptions {
  std::string binary;             // path of the executable
  std::vector<std::string> args;  // argv[1..]
  std::string stdout_path;        // "" = /dev/null
  std::string stderr_path;        // "" = /dev/null
  std::vector<std::string> env;   // extra NAME=VALUE entries (added to the test's environment)
};

class Process {
 public:
  static absl::StatusOr<std::unique_ptr<Process>> Start(const ProcessOptions& options);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  const ProcessOptions& options() const { return options_; }

  // Sends `sig` to a running child. False if it was already reaped.
  bool Signal(int sig);
  // SIGKILL and reap (no-op when already reaped).
  void Kill();
  // Waits up to `timeout` for the child to exit; returns its raw wait status (use WIFEXITED /
  // WEXITSTATUS / WIFSIGNALED), or nullopt if it is still running. Once reaped, returns the
  // same status again.
  std::optional<int> WaitExit(absl::Duration timeout);
  // True while the child has not exited (reaps it if it just did).
  bool Running();

  // The files' contents now ("" when not redirected to a file).
  std::string ReadStdout() const;
  std::string ReadStderr() const;

 private:
  explicit Process(ProcessOptions options) : options_(std::move(options)) {}
  ProcessOptions options_;
  pid_t pid_ = -1;
  std::optional<int> exit_status_;
};

// "exited with code 3", "killed by signal 9 (Killed)", ...
std::string DescribeWaitStatus(int status);

// The JSON written by a server's --port-file.
struct PortFile {
  int grpc_port = 0;
  int metrics_port = 0;
  int pid = 0;
};

// Parses a port file's JSON. InvalidArgument if it is incomplete.
absl::StatusOr<PortFile> ParsePortFile(const std::string& json);

class ServerProcess {
 public:
  // Starts `binary args... --port-file DIR/NAME.port` with stderr in DIR/NAME.stderr and stdout
  // in DIR/NAME.stdout, and waits up to `timeout` for the port file. Fails early (with the
  // stderr tail in the message) when the process exits first.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::string& binary, const std::vector<std::string>& args, const std::string& dir,
      const std::string& name, absl::Duration timeout = absl::Seconds(30),
      const std::vector<std::string>& env = {});

  Process& process() { return *process_; }
  const std::string& name() const { return name_; }
  int grpc_port() const { return ports_.grpc_port; }
  int metrics_port() const { return ports_.metrics_port; }
  // "127.0.0.1:<grpc port>".
  std::string address() const;
  std::string ReadStderr() const { return process_->ReadStderr(); }

 private:
  ServerProcess() = default;
  std::string name_;
  std::unique_ptr<Process> process_;
  PortFile ports_;
};

// Runs a binary to completion (bounded by `timeout`, then SIGKILL) and returns its stdout.
// Fails with the exit status and stderr when it does not exit with code 0.
absl::StatusOr<std::string> RunToCompletion(const std::string& binary,
                                            const std::vector<std::string>& args,
                                            const std::string& scratch_dir,
                                            absl::Duration timeout = absl::Seconds(60));

// Reads a whole file ("" if missing).
std::string ReadWholeFile(const std::string& path);
// The last `max_bytes` of s (prefixed with "...\n" when cut).
std::string Tail(const std::string& s, size_t max_bytes = 8000);

}  // namespace sambay::testing

#endif  // SAMBAY_TESTS_WORKER_PROCESS_H_
