// The router's OpenAI-compatible HTTP API against the real `openai` npm client: a real cluster
// (1 prefill + 1 decode worker of the tiny model) with --http-port, and
// tests/router/openai_client.mjs run under Node with the router's base URL. The script's checks
// (chat and completions, streaming and not, include_usage, stop strings, logprobs, seeded
// sampling, models.list, AbortController mid-stream with the running gauges back at 0, and the
// SDK's typed errors) are listed in its header; it prints one line per check and exits non-zero
// at the first failure, whose output this test prints.
//
// Skips when node or the SDK (third_party/npm/node_modules/openai, from
// scripts/install-deps.sh; $SAMBAY_OPENAI_DIR overrides) is missing.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/router/router_harness.h"

namespace sambay::testing {
namespace {

std::string OpenAiDir() {
  const char* env = std::getenv("SAMBAY_OPENAI_DIR");
  return env != nullptr && *env != '\0'
             ? std::string(env)
             : std::string(SAMBAY_SOURCE_DIR) + "/third_party/npm/node_modules/openai";
}

// Why the script cannot run here, or "".
std::string MissingTools() {
  if (std::system("command -v node >/dev/null 2>&1") != 0) {
    return "node is not installed (scripts/install-deps.sh installs it)";
  }
  if (!std::filesystem::exists(OpenAiDir() + "/index.mjs")) {
    return "the npm package openai is not in " + OpenAiDir() + " (scripts/install-deps.sh)";
  }
  return "";
}

struct ScriptResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs `node tests/router/openai_client.mjs ARGS... 2>&1` (RunNodeScript gives no exit status).
// The script bounds itself: every SDK call has a 20 s timeout and no retries.
ScriptResult RunClientScript(const std::vector<std::string>& args) {
  std::string cmd = absl::StrCat("node ", SAMBAY_SOURCE_DIR, "/tests/router/openai_client.mjs");
  for (const std::string& a : args) absl::StrAppend(&cmd, " '", a, "'");
  absl::StrAppend(&cmd, " 2>&1");
  ScriptResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The script's arguments after the mode: the base URL and the metrics URLs of the router and of
// the decode workers.
std::vector<std::string> ScriptArgs(Cluster& c, const std::string& mode, int http_port) {
  std::vector<std::string> args = {
      mode, absl::StrCat("http://127.0.0.1:", http_port, "/v1"),
      absl::StrCat("http://127.0.0.1:", c.router().metrics_port(), "/metrics")};
  for (auto& w : c.decode()) {
    args.push_back(absl::StrCat("http://127.0.0.1:", w->metrics_port(), "/metrics"));
  }
  return args;
}

// Starts 1 prefill + 1 decode worker and a router with the HTTP API on a free port (and
// `router_args`); the port.
int StartWithHttp(Cluster& c, const std::vector<std::string>& router_args, absl::Status* started) {
  auto port = FreePort();
  if (!port.ok()) {
    *started = port.status();
    return 0;
  }
  std::vector<std::string> args = {"--http-port", absl::StrCat(*port)};
  args.insert(args.end(), router_args.begin(), router_args.end());
  *started = c.Start(1, 1, 0, args);
  return *port;
}

TEST(OpenAiClient, SdkChecksAgainstCluster) {
  if (const std::string missing = MissingTools(); !missing.empty()) GTEST_SKIP() << missing;
  Cluster c;
  absl::Status started;
  const int port = StartWithHttp(c, {}, &started);
  ASSERT_STARTED(started);
  const ScriptResult r = RunClientScript(ScriptArgs(c, "main", port));
  EXPECT_EQ(r.exit_code, 0) << r.output << "\n" << c.Logs();
  EXPECT_TRUE(absl::StrContains(r.output, "all main checks passed")) << r.output;
  EXPECT_TRUE(c.WaitWorkersIdle().ok()) << c.Logs();
}

// A router with one serving slot and no queue: the SDK gets RateLimitError (429) for a request
// sent while another streams.
TEST(OpenAiClient, SdkRateLimitErrorOnFullQueue) {
  if (const std::string missing = MissingTools(); !missing.empty()) GTEST_SKIP() << missing;
  Cluster c;
  absl::Status started;
  const int port = StartWithHttp(c, {"--max-concurrent", "1", "--max-queue", "0"}, &started);
  ASSERT_STARTED(started);
  const ScriptResult r = RunClientScript(ScriptArgs(c, "ratelimit", port));
  EXPECT_EQ(r.exit_code, 0) << r.output << "\n" << c.Logs();
  EXPECT_TRUE(absl::StrContains(r.output, "all ratelimit checks passed")) << r.output;
  EXPECT_EQ(c.router().MetricSum("sambay_router_rejections_total", {{"reason", "queue_full"}}), 1)
      << r.output;
}

// A router with an API key: the SDK with the key is served; with a wrong key, or the key in
// another case, it gets AuthenticationError (401) on every route.
TEST(OpenAiClient, SdkAuthenticationErrorWithApiKeys) {
  if (const std::string missing = MissingTools(); !missing.empty()) GTEST_SKIP() << missing;
  Cluster c;
  const std::string key = "sk-local-0123456789abcdef";
  const std::string keys_file = c.dir() + "/keys";
  {
    std::FILE* f = std::fopen(keys_file.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fprintf(f, "%s sdk-user\n", key.c_str());
    std::fclose(f);
  }
  absl::Status started;
  const int port = StartWithHttp(c, {"--api-keys-file", keys_file}, &started);
  ASSERT_STARTED(started);
  setenv("SAMBAY_API_KEY", key.c_str(), 1);
  const ScriptResult r = RunClientScript({"auth", absl::StrCat("http://127.0.0.1:", port, "/v1")});
  unsetenv("SAMBAY_API_KEY");
  EXPECT_EQ(r.exit_code, 0) << r.output << "\n" << c.Logs();
  EXPECT_TRUE(absl::StrContains(r.output, "all auth checks passed")) << r.output;
  EXPECT_FALSE(absl::StrContains(c.Logs(), key)) << "the key is in a log";
}

}  // namespace
}  // namespace sambay::testing
