#include "tests/worker/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace sambay::testing {
namespace {

// Opens `path` for the child's output (or /dev/null) before fork: nothing after fork but
// async-signal-safe calls.
int OpenOutput(const std::string& path) {
  const char* p = path.empty() ? "/dev/null" : path.c_str();
  return open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
}

}  // namespace

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string Tail(const std::string& s, size_t max_bytes) {
  if (s.size() <= max_bytes) return s;
  return "...\n" + s.substr(s.size() - max_bytes);
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return absl::StrCat("killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)),
                        ")");
  }
  return absl::StrCat("wait status ", status);
}

absl::StatusOr<std::unique_ptr<Process>> Process::Start(const ProcessOptions& options) {
  if (access(options.binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat(options.binary, ": not an executable file"));
  }
  std::unique_ptr<Process> p(new Process(options));
  // Everything the child needs is built before fork.
  std::vector<std::string> argv_s;
  argv_s.push_back(options.binary);
  argv_s.insert(argv_s.end(), options.args.begin(), options.args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_s;
  for (char** e = environ; *e != nullptr; ++e) env_s.emplace_back(*e);
  env_s.insert(env_s.end(), options.env.begin(), options.env.end());
  std::vector<char*> envp;
  for (std::string& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  const int out_fd = OpenOutput(options.stdout_path);
  const int err_fd = OpenOutput(options.stderr_path);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (out_fd < 0 || err_fd < 0 || null_fd < 0) {
    const int e = errno;
    for (int fd : {out_fd, err_fd, null_fd}) {
      if (fd >= 0) close(fd);
    }
    return absl::InternalError(absl::StrCat("cannot open output files: ", strerror(e)));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    const int e = errno;
    close(out_fd);
    close(err_fd);
    close(null_fd);
    return absl::InternalError(absl::StrCat("fork: ", strerror(e)));
  }
  if (pid == 0) {
    // Child: async-signal-safe calls only.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    dup2(null_fd, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    // Drop every other inherited descriptor (the test's gRPC sockets, epoll fds...).
    syscall(SYS_close_range, 3u, ~0u, 0u);
    // Undo signal state the test framework may have changed.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  close(out_fd);
  close(err_fd);
  close(null_fd);
  p->pid_ = pid;
  return p;
}

Process::~Process() { Kill(); }

bool Process::Signal(int sig) {
  if (pid_ <= 0 || exit_status_.has_value()) return false;
  return kill(pid_, sig) == 0;
}

void Process::Kill() {
  if (pid_ <= 0 || exit_status_.has_value()) return;
  kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  exit_status_ = status;
}

std::optional<int> Process::WaitExit(absl::Duration timeout) {
  if (exit_status_.has_value() || pid_ <= 0) return exit_status_;
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_status_ = status;
      return exit_status_;
    }
    if (r < 0 && errno != EINTR) return std::nullopt;
    if (absl::Now() >= deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

bool Process::Running() { return pid_ > 0 && !WaitExit(absl::ZeroDuration()).has_value(); }

std::string Process::ReadStdout() const {
  return options_.stdout_path.empty() ? "" : ReadWholeFile(options_.stdout_path);
}

std::string Process::ReadStderr() const {
  return options_.stderr_path.empty() ? "" : ReadWholeFile(options_.stderr_path);
}

absl::StatusOr<PortFile> ParsePortFile(const std::string& json) {
  nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("port file is not a JSON object: ", json));
  }
  PortFile p;
  for (auto [key, field] : {std::pair{"grpc_port", &p.grpc_port},
                            std::pair{"metrics_port", &p.metrics_port}, std::pair{"pid", &p.pid}}) {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat("port file: \"", key, "\" missing or not an integer: ", json));
    }
    *field = it->get<int>();
  }
  if (p.grpc_port <= 0 || p.grpc_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("port file: bad grpc_port: ", json));
  }
  return p;
}

std::string ServerProcess::address() const { return absl::StrCat("127.0.0.1:", grpc_port()); }

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const std::string& binary, const std::vector<std::string>& args, const std::string& dir,
    const std::string& name, absl::Duration timeout, const std::vector<std::string>& env) {
  const std::string port_file = absl::StrCat(dir, "/", name, ".port");
  unlink(port_file.c_str());
  ProcessOptions o;
  o.binary = binary;
  o.args = args;
  o.args.push_back("--port-file");
  o.args.push_back(port_file);
  o.stdout_path = absl::StrCat(dir, "/", name, ".stdout");
  o.stderr_path = absl::StrCat(dir, "/", name, ".stderr");
  o.env = env;
  std::unique_ptr<ServerProcess> s(new ServerProcess());
  s->name_ = name;
  auto proc = Process::Start(o);
  if (!proc.ok()) return proc.status();
  s->process_ = std::move(*proc);
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (access(port_file.c_str(), R_OK) == 0) {
      auto ports = ParsePortFile(ReadWholeFile(port_file));
      if (ports.ok()) {
        s->ports_ = *ports;
        if (s->ports_.pid != s->process_->pid()) {
          return absl::InternalError(absl::StrCat(name, ": port file pid ", s->ports_.pid,
                                                  " != child pid ", s->process_->pid()));
        }
        return s;
      }
      // Written atomically, so a parse error is final.
      return absl::InternalError(absl::StrCat(name, ": ", ports.status().message()));
    }
    if (std::optional<int> st = s->process_->WaitExit(absl::ZeroDuration())) {
      return absl::InternalError(absl::StrCat(name, " ", DescribeWaitStatus(*st),
                                              " before writing its port file; stderr:\n",
                                              Tail(s->ReadStderr())));
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(name, ": no port file after ",
                                                      absl::FormatDuration(timeout), "; stderr:\n",
                                                      Tail(s->ReadStderr())));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

absl::StatusOr<std::string> RunToCompletion(const std::string& binary,
                                            const std::vector<std::string>& args,
                                            const std::string& scratch_dir,
                                            absl::Duration timeout) {
  static std::atomic<int> counter{0};
  const int n = counter.fetch_add(1);
  ProcessOptions o;
  o.binary = binary;
  o.args = args;
  o.stdout_path = absl::StrCat(scratch_dir, "/run", n, ".stdout");
  o.stderr_path = absl::StrCat(scratch_dir, "/run", n, ".stderr");
  auto p = Process::Start(o);
  if (!p.ok()) return p.status();
  std::optional<int> st = (*p)->WaitExit(timeout);
  if (!st.has_value()) {
    (*p)->Kill();
    return absl::DeadlineExceededError(
        absl::StrCat(binary, " still running after ", absl::FormatDuration(timeout)));
  }
  if (!WIFEXITED(*st) || WEXITSTATUS(*st) != 0) {
    return absl::InternalError(absl::StrCat(binary, " ", DescribeWaitStatus(*st), "; stderr:\n",
                                            Tail((*p)->ReadStderr())));
  }
  return (*p)->ReadStdout();
}

}  // namespace sambay::testing
