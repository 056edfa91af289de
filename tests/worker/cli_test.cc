// The sambay-worker command line: flags also come from SAMBAY_<UPPER_SNAKE> environment
// variables, and a bad configuration ends the process at once with a non-zero exit code and
// an error naming the flag (never a half-started server).
#include <sys/wait.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/worker/process.h"
#include "tests/worker/worker_harness.h"

namespace sambay::testing {
namespace {

TEST(WorkerCliTest, FlagsComeFromTheEnvironment) {
  ScratchDir dir;
  auto w = Worker::Start("", {}, dir.path(), "env",
                         {"SAMBAY_ROLE=decode", "SAMBAY_MAX_RUNNING=3", "SAMBAY_LEASE_TIMEOUT=7",
                          "SAMBAY_MAX_CONTEXT=128", "SAMBAY_STATE_MEMORY_MIB=5"});
  ASSERT_TRUE(w.ok()) << w.status();
  auto info = (*w)->GetInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(std::vector<std::string>(info->roles().begin(), info->roles().end()),
            std::vector<std::string>{"decode"});
  EXPECT_EQ(info->max_running(), 3u);
  EXPECT_EQ(info->lease_seconds(), 7.0);
  EXPECT_EQ(info->max_context_tokens(), 128u);
  EXPECT_EQ(info->state_bytes_total(), 5u << 20);
}

TEST(WorkerCliTest, BadConfigurationExitsWithAnError) {
  ScratchDir dir;
  const std::string model = TinyModelDir();
  struct Case {
    std::vector<std::string> args;
    std::string needle;  // expected in stderr
  };
  const std::vector<Case> cases = {
      {{"--model", model, "--role", "router"}, "role"},
      {{"--model", dir.path() + "/no-such-model", "--role", "decode"}, "no-such-model"},
      {{"--role", "decode"}, "model"},
      {{"--model", model, "--max-running", "0"}, "max-running"},
      {{"--model", model, "--lease-timeout", "-1"}, "lease-timeout"},
      {{"--model", model, "--no-such-flag", "1"}, "no-such-flag"},
  };
  int n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrJoin(c.args, " "));
    std::vector<std::string> args = c.args;
    for (const char* a : {"--port", "0", "--metrics-port", "0"}) args.push_back(a);
    auto s = ServerProcess::Start(BinDir() + "/sambay-worker", args, dir.path(),
                                  absl::StrCat("bad", n++), absl::Seconds(20));
    ASSERT_FALSE(s.ok()) << "the worker started";
    EXPECT_NE(s.status().message().find("exited with code"), std::string::npos) << s.status();
    EXPECT_EQ(s.status().message().find("exited with code 0"), std::string::npos) << s.status();
    EXPECT_NE(s.status().message().find(c.needle), std::string::npos) << s.status();
  }
}

TEST(WorkerCliTest, PortInUseIsAnError) {
  ScratchDir dir;
  auto first = Worker::Start("decode", {}, dir.path(), "first");
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string port = absl::StrCat((*first)->server().grpc_port());
  auto s = ServerProcess::Start(
      BinDir() + "/sambay-worker",
      {"--model", TinyModelDir(), "--role", "decode", "--port", port, "--metrics-port", "0"},
      dir.path(), "second", absl::Seconds(20));
  ASSERT_FALSE(s.ok()) << "two workers on port " << port;
  EXPECT_NE(s.status().message().find("exited with code"), std::string::npos) << s.status();
  // The first one is unharmed.
  EXPECT_TRUE((*first)->process().Running());
  EXPECT_TRUE((*first)->GetLoad().ok());
}

}  // namespace
}  // namespace sambay::testing
