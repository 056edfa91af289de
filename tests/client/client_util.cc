#include "tests/client/client_util.h"

#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace sambay::testing {

std::string Bin(const std::string& tool) { return absl::StrCat(SAMBAY_BIN_DIR, "/", tool); }
std::string TinyModel() { return absl::StrCat(SAMBAY_BUILD_DIR, "/models/tiny"); }
std::string PythonStubs() { return absl::StrCat(SAMBAY_BUILD_DIR, "/python"); }
std::string Source(const std::string& rel) { return absl::StrCat(SAMBAY_SOURCE_DIR, "/", rel); }

Scratch::Scratch() {
  std::string tmpl = absl::StrCat(::testing::TempDir(), "sambay_client_XXXXXX");
  path_ = mkdtemp(tmpl.data()) ? tmpl : "";
}

Scratch::~Scratch() {
  std::error_code ec;
  if (!path_.empty()) std::filesystem::remove_all(path_, ec);
}

int ExitCodeOf(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

RunResult RunTool(const std::string& binary, const std::vector<std::string>& args,
                  const std::string& dir, absl::Duration timeout,
                  const std::vector<std::string>& env) {
  static int counter = 0;
  const int n = counter++;
  ProcessOptions o;
  o.binary = binary;
  o.args = args;
  o.stdout_path = absl::StrCat(dir, "/tool", n, ".stdout");
  o.stderr_path = absl::StrCat(dir, "/tool", n, ".stderr");
  o.env = env;
  RunResult r;
  auto p = Process::Start(o);
  if (!p.ok()) {
    r.err = std::string(p.status().message());
    return r;
  }
  std::optional<int> st = (*p)->WaitExit(timeout);
  if (st.has_value()) r.exit_code = ExitCodeOf(*st);
  (*p)->Kill();
  r.out = (*p)->ReadStdout();
  r.err = (*p)->ReadStderr();
  return r;
}

std::vector<uint32_t> Reference(const std::vector<std::string>& extra, const std::string& dir,
                                bool cut_at_eos) {
  std::vector<std::string> args = {"generate", "--model", TinyModel(), "--threads", "1"};
  args.insert(args.end(), extra.begin(), extra.end());
  RunResult r = RunTool(Bin("sambay-run"), args, dir);
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  std::vector<uint32_t> ids;
  for (absl::string_view t : absl::StrSplit(r.out, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
    uint32_t v = 0;
    EXPECT_TRUE(absl::SimpleAtoi(t, &v)) << t;
    ids.push_back(v);
    if (cut_at_eos && kTinyEos.count(v)) break;
  }
  return ids;
}

std::vector<std::string> ProcessesMentioning(const std::string& needle) {
  std::vector<std::string> found;
  DIR* d = opendir("/proc");
  if (d == nullptr) return found;
  const std::string self = absl::StrCat(getpid());
  while (dirent* e = readdir(d)) {
    const std::string pid = e->d_name;
    if (pid.empty() || !std::all_of(pid.begin(), pid.end(), ::isdigit) || pid == self) continue;
    std::string cmd = ReadWholeFile(absl::StrCat("/proc/", pid, "/cmdline"));
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (cmd.find(needle) != std::string::npos) found.push_back(absl::StrCat(pid, ": ", cmd));
  }
  closedir(d);
  return found;
}

KillLeftovers::~KillLeftovers() {
  for (const std::string& p : ProcessesMentioning(needle_)) {
    int pid = 0;
    if (absl::SimpleAtoi(p.substr(0, p.find(':')), &pid) && pid > 0) kill(pid, SIGKILL);
  }
}

ServingScript StartServingScript(const Scratch& scratch, const std::string& workdir,
                                 const std::vector<std::string>& extra) {
  ProcessOptions o;
  o.binary = "/bin/bash";
  o.args = {Source("deploy/local/cluster.sh"),
            "--bin",
            SAMBAY_BIN_DIR,
            "--port",
            "0",
            "--workdir",
            workdir,
            "--worker-args",
            "--threads 1"};
  o.args.insert(o.args.end(), extra.begin(), extra.end());
  o.stdout_path = absl::StrCat(scratch.path(), "/script.stdout");
  o.stderr_path = absl::StrCat(scratch.path(), "/script.stderr");
  ServingScript out;
  auto p = Process::Start(o);
  if (!p.ok()) return out;
  out.script = std::move(*p);
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (absl::Now() < deadline && out.script->Running()) {
    out.address = std::string(absl::StripSuffix(ReadWholeFile(workdir + "/router.address"), "\n"));
    if (!out.address.empty()) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return out;
}

}  // namespace sambay::testing
