// Integration tests of the public-API clients against a real cluster on loopback: sambay-router
// with one prefill and one decode sambay-worker (separate processes, bundled tiny model), driven
// by sambay-client, the Python example (tools/examples/generate_client.py with Debian's
// python3-grpcio) and deploy/local/cluster.sh --run.
//
// Each test starts its own cluster (gtest_discover_tests runs every test in its own process).
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/client/client_util.h"
#include "tests/worker/process.h"

namespace sambay::testing {
namespace {

// Router + workers as separate processes on loopback.
class Cluster {
 public:
  explicit Cluster(const std::string& dir) : dir_(dir) {}

  void Start(int prefill, int decode) {
    std::vector<std::string> pf, dc;
    for (int i = 0; i < prefill + decode; ++i) {
      const bool is_prefill = i < prefill;
      const std::string name = absl::StrCat(is_prefill ? "prefill" : "decode", i);
      auto w = ServerProcess::Start(
          Bin("sambay-worker"),
          {"--model", TinyModel(), "--role", is_prefill ? "prefill" : "decode", "--host",
           "127.0.0.1", "--port", "0", "--metrics-port", "0", "--threads", "1"},
          dir_, name, absl::Seconds(60));
      ASSERT_TRUE(w.ok()) << w.status();
      (is_prefill ? pf : dc).push_back((*w)->address());
      workers_.push_back(std::move(*w));
    }
    ASSERT_EQ(access(Bin("sambay-router").c_str(), X_OK), 0)
        << Bin("sambay-router") << " is not built";
    auto r =
        ServerProcess::Start(Bin("sambay-router"),
                             {"--model", TinyModel(), "--host", "127.0.0.1", "--port", "0",
                              "--metrics-port", "0", "--usage-workers", "true", "--prefill-workers",
                              absl::StrJoin(pf, ","), "--decode-workers", absl::StrJoin(dc, ",")},
                             dir_, "router", absl::Seconds(60));
    ASSERT_TRUE(r.ok()) << r.status();
    router_ = std::move(*r);
    // Readiness through the client's own probe.
    RunResult h =
        RunTool(Bin("sambay-client"), {"--address", address(), "--health", "--wait-ready", "60"},
                dir_, absl::Seconds(90));
    ASSERT_EQ(h.exit_code, 0) << h.Describe() << "\n--- router log:\n"
                              << Tail(router_->ReadStderr());
    EXPECT_EQ(h.out, "SERVING\n");
  }

  std::string address() const { return router_->address(); }
  std::string Logs() const {
    std::string s = absl::StrCat("--- router:\n", Tail(router_ ? router_->ReadStderr() : "", 6000));
    for (const auto& w : workers_) {
      absl::StrAppend(&s, "\n--- ", w->name(), ":\n", Tail(w->ReadStderr(), 3000));
    }
    return s;
  }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<ServerProcess>> workers_;
  std::unique_ptr<ServerProcess> router_;
};

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(scratch_.path().empty());
    cluster_ = std::make_unique<Cluster>(scratch_.path());
    cluster_->Start(1, 1);
  }
  RunResult Client(std::vector<std::string> args, absl::Duration timeout = absl::Seconds(60)) {
    args.insert(args.begin(), {"--address", cluster_->address()});
    return RunTool(Bin("sambay-client"), args, scratch_.path(), timeout);
  }
  Scratch scratch_;
  std::unique_ptr<Cluster> cluster_;
};

struct JsonStream {
  std::vector<nlohmann::json> messages;
  std::vector<uint32_t> ids;
  std::string text;
  nlohmann::json last;
};

JsonStream ParseJsonLines(const std::string& out) {
  JsonStream s;
  for (absl::string_view line : absl::StrSplit(out, '\n', absl::SkipEmpty())) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << line;
    if (j.is_discarded()) continue;
    for (const auto& id : j.value("token_ids", nlohmann::json::array())) {
      s.ids.push_back(id.get<uint32_t>());
    }
    s.text += j.value("text", "");
    s.messages.push_back(j);
    s.last = j;
  }
  return s;
}

// (a) --ids through prefill -> decode gives exactly sambay-run's ids; --json carries ids, finish
// reason and usage; --print-ids prints the same ids.
TEST_F(ClientTest, IdsMatchSambayRun) {
  const std::vector<uint32_t> want =
      Reference({"--ids", "3,14,15", "--max-new-tokens", "16"}, scratch_.path());
  RunResult r = Client({"--ids", "3,14,15", "--max-new-tokens", "16", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe() << cluster_->Logs();
  JsonStream s = ParseJsonLines(r.out);
  EXPECT_EQ(s.ids, want) << r.Describe();
  ASSERT_FALSE(s.messages.empty());
  EXPECT_FALSE(s.messages.front().value("request_id", "").empty()) << r.out;
  const std::string finish = s.last.value("finish_reason", "");
  EXPECT_EQ(finish, kTinyEos.count(want.back()) ? "STOP" : "LENGTH") << r.out;
  ASSERT_TRUE(s.last.contains("usage")) << r.out;
  const nlohmann::json& u = s.last["usage"];
  EXPECT_EQ(u["prompt_tokens"], 3);
  EXPECT_EQ(u["completion_tokens"], want.size());
  ASSERT_EQ(u["workers"].size(), 2u) << u.dump();  // prefill worker, then decode worker
  EXPECT_NE(u["workers"][0], u["workers"][1]);
  EXPECT_GT(u["transfer_bytes"].get<uint64_t>(), 0u) << u.dump();
  EXPECT_NE(r.err.find("finish"), std::string::npos) << r.err;  // summary on stderr

  RunResult p = Client({"--ids", "3,14,15", "--max-new-tokens", "16", "--print-ids", "--quiet"});
  ASSERT_EQ(p.exit_code, 0) << p.Describe();
  std::vector<std::string> want_s;
  for (uint32_t id : want) want_s.push_back(absl::StrCat(id));
  EXPECT_EQ(p.out, absl::StrCat(absl::StrJoin(want_s, " "), "\n"));
  EXPECT_EQ(p.err, "");
}

// (a') Seeded sampling and --ignore-eos, with logprobs: still sambay-run's ids.
TEST_F(ClientTest, SeededSamplingMatchesSambayRun) {
  const std::vector<std::string> sampling = {"--temperature", "0.8", "--top-p", "0.9",
                                             "--top-k",       "50",  "--seed",  "1234"};
  std::vector<std::string> ref = {"--ids", "5,6,7,8", "--max-new-tokens", "24"};
  ref.insert(ref.end(), sampling.begin(), sampling.end());
  const std::vector<uint32_t> want = Reference(ref, scratch_.path(), /*cut_at_eos=*/false);
  std::vector<std::string> args = {"--ids",        "5,6,7,8", "--max-new-tokens", "24",
                                   "--ignore-eos", "--json",  "--logprobs",       "2"};
  args.insert(args.end(), sampling.begin(), sampling.end());
  RunResult r = Client(args);
  ASSERT_EQ(r.exit_code, 0) << r.Describe() << cluster_->Logs();
  JsonStream s = ParseJsonLines(r.out);
  EXPECT_EQ(s.ids, want);
  EXPECT_EQ(s.last.value("finish_reason", ""), "LENGTH");
  size_t positions = 0;
  for (const auto& m : s.messages) {
    if (!m.contains("logprobs")) continue;
    ASSERT_EQ(m["logprobs"].size(), m["token_ids"].size()) << m.dump();
    for (size_t i = 0; i < m["logprobs"].size(); ++i) {
      const auto& e = m["logprobs"][i];
      EXPECT_EQ(e["token_id"], m["token_ids"][i]);
      EXPECT_LE(e["logprob"].get<double>(), 0.0);
      EXPECT_EQ(e["top"].size(), 2u);
      ++positions;
    }
  }
  EXPECT_EQ(positions, want.size()) << r.out;
}

// (b) --prompt streams text: stdout is the concatenated text of the messages plus one newline,
// and the same text as the --json run of the same (greedy) request.
TEST_F(ClientTest, PromptStreamsText) {
  RunResult r = Client({"--prompt", "hello", "--max-new-tokens", "24"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe() << cluster_->Logs();
  ASSERT_FALSE(r.out.empty());
  EXPECT_EQ(r.out.back(), '\n');
  EXPECT_NE(r.err.find("sambay-client: request "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("completion_tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("workers 127.0.0.1:"), std::string::npos) << r.err;

  RunResult j = Client({"--prompt", "hello", "--max-new-tokens", "24", "--json"});
  ASSERT_EQ(j.exit_code, 0) << j.Describe();
  JsonStream s = ParseJsonLines(j.out);
  EXPECT_EQ(r.out, s.text + "\n");
  EXPECT_FALSE(s.ids.empty());
  EXPECT_EQ(s.last["usage"]["prompt_tokens"], 5);  // byte tokenizer: 5 bytes
  EXPECT_EQ(s.last["usage"]["completion_tokens"], s.ids.size());

  // The router's tokenizer and detokenizer agree with sambay-run's for the same prompt.
  RunResult ref = RunTool(Bin("sambay-run"),
                          {"generate", "--model", TinyModel(), "--threads", "1", "--prompt",
                           "hello", "--max-new-tokens", "24"},
                          scratch_.path());
  ASSERT_EQ(ref.exit_code, 0) << ref.Describe();
  EXPECT_EQ(r.out, ref.out);

  // --chat with --system is accepted and generates.
  RunResult c = Client({"--chat", "hi", "--system", "be brief", "--max-new-tokens", "8"});
  EXPECT_EQ(c.exit_code, 0) << c.Describe();
}

// (c) Bad input: the router's INVALID_ARGUMENT names the field; exit code 3. Bad flags: 2.
// A passed deadline: 6. Nobody listening: 5.
TEST_F(ClientTest, ErrorsMapToExitCodes) {
  RunResult r = Client({"--ids", "3,14,15", "--top-p", "1.5"});
  EXPECT_EQ(r.exit_code, 3) << r.Describe() << cluster_->Logs();
  EXPECT_EQ(r.err.rfind("sambay-client: error: INVALID_ARGUMENT: sampling.top_p", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;

  RunResult v = Client({"--ids", "3,999", "--max-new-tokens", "4"});
  EXPECT_EQ(v.exit_code, 3) << v.Describe();
  EXPECT_NE(v.err.find("INVALID_ARGUMENT: "), std::string::npos) << v.err;

  RunResult j = Client({"--ids", "3,14,15", "--top-p", "1.5", "--json"});
  EXPECT_EQ(j.exit_code, 3);
  JsonStream s = ParseJsonLines(j.out);
  ASSERT_TRUE(s.last.contains("error")) << j.out;
  EXPECT_EQ(s.last["error"]["code"], "INVALID_ARGUMENT");

  RunResult f = Client({"--ids", "3,14,15", "--no-such-flag", "1"});
  EXPECT_EQ(f.exit_code, 2) << f.Describe();
  EXPECT_EQ(f.err, "sambay-client: error: unknown flag --no-such-flag\n");
  RunResult two = Client({"--ids", "3", "--prompt", "x"});
  EXPECT_EQ(two.exit_code, 2) << two.Describe();

  RunResult d = Client({"--ids", "3,14,15", "--timeout", "0.000001"});
  EXPECT_EQ(d.exit_code, 6) << d.Describe();
  EXPECT_NE(d.err.find("DEADLINE_EXCEEDED"), std::string::npos) << d.err;

  RunResult u =
      RunTool(Bin("sambay-client"), {"--address", "127.0.0.1:1", "--ids", "3"}, scratch_.path());
  EXPECT_EQ(u.exit_code, 5) << u.Describe();
  EXPECT_EQ(u.err.rfind("sambay-client: error: UNAVAILABLE: ", 0), 0u) << u.err;

  // The address also comes from SAMBAY_ADDRESS.
  RunResult e =
      RunTool(Bin("sambay-client"), {"--ids", "3,14,15", "--max-new-tokens", "2"}, scratch_.path(),
              absl::Seconds(60), {absl::StrCat("SAMBAY_ADDRESS=", cluster_->address())});
  EXPECT_EQ(e.exit_code, 0) << e.Describe();
}

// --info prints the model's GetModelInfo.
TEST_F(ClientTest, Info) {
  RunResult r = Client({"--info"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe() << cluster_->Logs();
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["vocab_size"], 320);
  EXPECT_EQ(j["tokenizer"], "byte-level");
  EXPECT_FALSE(j["fingerprint"].get<std::string>().empty());
}

// (d) The Python example streams text and prints the usage summary; --health says SERVING.
TEST_F(ClientTest, PythonExample) {
  const std::string py = "/usr/bin/python3";
  const std::string script = Source("tools/examples/generate_client.py");
  RunResult h =
      RunTool(py, {script, "--stubs", PythonStubs(), "--address", cluster_->address(), "--health"},
              scratch_.path());
  ASSERT_EQ(h.exit_code, 0) << h.Describe();
  EXPECT_EQ(h.out, "SERVING\n");

  RunResult r = RunTool(py,
                        {script, "--stubs", PythonStubs(), "--address", cluster_->address(),
                         "--prompt", "hello", "--max-new-tokens", "24", "--seed", "3"},
                        scratch_.path());
  ASSERT_EQ(r.exit_code, 0) << r.Describe() << cluster_->Logs();
  RunResult c = Client({"--prompt", "hello", "--max-new-tokens", "24", "--seed", "3"});
  ASSERT_EQ(c.exit_code, 0) << c.Describe();
  EXPECT_EQ(r.out, c.out);  // greedy: the same text as sambay-client
  EXPECT_NE(r.err.find("generate_client: request "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("prompt_tokens 5 completion_tokens "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("workers 127.0.0.1:"), std::string::npos) << r.err;

  RunResult bad = RunTool(py,
                          {script, "--stubs", PythonStubs(), "--address", cluster_->address(),
                           "--prompt", "hello", "--temperature", "-1"},
                          scratch_.path());
  EXPECT_EQ(bad.exit_code, 1) << bad.Describe();
  EXPECT_NE(bad.err.find("generate_client: error: INVALID_ARGUMENT: sampling.temperature"),
            std::string::npos)
      << bad.err;
}

// Ctrl-C cancels the call and exits 130 (SIGTERM: 143): against a listener that never answers,
// so the call is certainly still running when the signal comes.
TEST(ClientSignalTest, SigintCancelsTheCall) {
  Scratch scratch;
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string address = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
  for (auto [sig, code] : {std::pair{SIGINT, 130}, std::pair{SIGTERM, 143}}) {
    ProcessOptions o;
    o.binary = Bin("sambay-client");
    o.args = {"--address", address, "--ids", "3,14,15", "--timeout", "60"};
    o.stdout_path = absl::StrCat(scratch.path(), "/sig.stdout");
    o.stderr_path = absl::StrCat(scratch.path(), "/sig.stderr");
    auto p = Process::Start(o);
    ASSERT_TRUE(p.ok()) << p.status();
    absl::SleepFor(absl::Milliseconds(500));
    ASSERT_TRUE((*p)->Running()) << (*p)->ReadStderr();
    (*p)->Signal(sig);
    std::optional<int> st = (*p)->WaitExit(absl::Seconds(10));
    ASSERT_TRUE(st.has_value()) << "still running 10 s after the signal";
    EXPECT_EQ(ExitCodeOf(*st), code) << (*p)->ReadStderr();
    EXPECT_NE((*p)->ReadStderr().find("sambay-client: error: CANCELLED: interrupted by"),
              std::string::npos)
        << (*p)->ReadStderr();
  }
  close(fd);
}

// (e) cluster.sh --run starts the cluster, runs the command with SAMBAY_ADDRESS set, exits with
// its status, and leaves no process behind.
TEST(ClusterScriptTest, RunLeavesNoProcessBehind) {
  Scratch scratch;
  const std::vector<uint32_t> want =
      Reference({"--ids", "3,14,15", "--max-new-tokens", "16"}, scratch.path());
  std::vector<std::string> want_s;
  for (uint32_t id : want) want_s.push_back(absl::StrCat(id));
  const std::string workdir = absl::StrCat(scratch.path(), "/cluster");
  KillLeftovers guard(workdir);
  const std::vector<std::string> base = {Source("deploy/local/cluster.sh"),
                                         "--bin",
                                         SAMBAY_BIN_DIR,
                                         "--port",
                                         "0",
                                         "--workdir",
                                         workdir,
                                         "--timeout",
                                         "90",
                                         "--worker-args",
                                         "--threads 1"};
  std::vector<std::string> args = base;
  for (const char* a : {"--run", "--", SAMBAY_BIN_DIR "/sambay-client", "--ids", "3,14,15",
                        "--max-new-tokens", "16", "--print-ids"}) {
    args.push_back(a);
  }
  RunResult r = RunTool("/bin/bash", args, scratch.path(), absl::Seconds(200));
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_EQ(r.out, absl::StrCat(absl::StrJoin(want_s, " "), "\n")) << r.Describe();
  EXPECT_NE(r.err.find("router ready at 127.0.0.1:"), std::string::npos) << r.err;
  EXPECT_NE(ReadWholeFile(workdir + "/router.address").find("127.0.0.1:"), std::string::npos);
  EXPECT_EQ(ProcessesMentioning(workdir), std::vector<std::string>{});

  // The command's exit status is the script's.
  args = base;
  for (const char* a : {"--run", "--", "/bin/sh", "-c", "exit 7"}) args.push_back(a);
  RunResult s = RunTool("/bin/bash", args, scratch.path(), absl::Seconds(200));
  EXPECT_EQ(s.exit_code, 7) << s.Describe();
  EXPECT_EQ(ProcessesMentioning(workdir), std::vector<std::string>{});

  // A missing binary is a clear one-line error.
  RunResult m =
      RunTool("/bin/bash",
              {Source("deploy/local/cluster.sh"), "--bin", scratch.path(), "--run", "--", "true"},
              scratch.path());
  EXPECT_EQ(m.exit_code, 1) << m.Describe();
  EXPECT_NE(m.err.find("sambay-router: not found or not executable"), std::string::npos) << m.err;
}

// Without --run the script serves until SIGTERM / Ctrl-C, then stops everything.
TEST(ClusterScriptTest, ServesUntilSignalled) {
  Scratch scratch;
  const std::string workdir = absl::StrCat(scratch.path(), "/cluster");
  KillLeftovers guard(workdir);
  ProcessOptions o;
  o.binary = "/bin/bash";
  o.args = {Source("deploy/local/cluster.sh"),
            "--bin",
            SAMBAY_BIN_DIR,
            "--port",
            "0",
            "--workdir",
            workdir,
            "--prefill",
            "2",
            "--decode",
            "1",
            "--worker-args",
            "--threads 1"};
  o.stdout_path = absl::StrCat(scratch.path(), "/script.stdout");
  o.stderr_path = absl::StrCat(scratch.path(), "/script.stderr");
  auto p = Process::Start(o);
  ASSERT_TRUE(p.ok()) << p.status();
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  std::string address;
  while (absl::Now() < deadline && (*p)->Running()) {
    address = std::string(absl::StripSuffix(ReadWholeFile(workdir + "/router.address"), "\n"));
    if (!address.empty()) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_FALSE(address.empty()) << (*p)->ReadStderr();
  RunResult r =
      RunTool(Bin("sambay-client"),
              {"--address", address, "--ids", "3,14,15", "--max-new-tokens", "4"}, scratch.path());
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  size_t servers = 0;  // router + 3 workers (the script's own command line names workdir too)
  for (const std::string& p : ProcessesMentioning(workdir)) {
    servers += p.find("--port-file") != std::string::npos;
  }
  EXPECT_EQ(servers, 4u);
  (*p)->Signal(SIGTERM);
  std::optional<int> st = (*p)->WaitExit(absl::Seconds(60));
  ASSERT_TRUE(st.has_value()) << (*p)->ReadStderr();
  EXPECT_EQ(ExitCodeOf(*st), 143) << (*p)->ReadStderr();
  EXPECT_EQ(ProcessesMentioning(workdir), std::vector<std::string>{});
}

// The pids of the servers (command lines with --port-file) of `workdir` whose command line also
// holds `needle`.
std::vector<int> ServerPids(const std::string& workdir, const std::string& needle) {
  std::vector<int> pids;
  for (const std::string& p : ProcessesMentioning(workdir)) {
    int pid = 0;
    if (p.find("--port-file") != std::string::npos && p.find(needle) != std::string::npos &&
        absl::SimpleAtoi(p.substr(0, p.find(':')), &pid)) {
      pids.push_back(pid);
    }
  }
  return pids;
}

// Generates through `address` until it succeeds or `timeout` passes; the last result.
RunResult GenerateUntilOk(const std::string& address, const std::string& dir,
                          absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  RunResult r;
  do {
    r = RunTool(Bin("sambay-client"),
                {"--address", address, "--ids", "3,14,15", "--max-new-tokens", "4"}, dir);
    if (r.exit_code == 0) break;
    absl::SleepFor(absl::Milliseconds(500));
  } while (absl::Now() < deadline);
  return r;
}

// a worker that dies used to make cluster.sh stop the whole cluster. Now
// the cluster keeps serving on the other workers.
TEST(ClusterScriptTest, KilledWorkerLeavesTheClusterServing) {
  Scratch scratch;
  const std::string workdir = absl::StrCat(scratch.path(), "/cluster");
  KillLeftovers guard(workdir);
  ServingScript s = StartServingScript(scratch, workdir, {"--decode", "2"});
  ASSERT_TRUE(s.script != nullptr);
  ASSERT_FALSE(s.address.empty()) << s.script->ReadStderr();
  const std::vector<int> decode = ServerPids(workdir, "--role decode");
  ASSERT_EQ(decode.size(), 2u);
  ASSERT_EQ(kill(decode[0], SIGKILL), 0);
  absl::SleepFor(absl::Seconds(3));  // the script's monitor (1 s) has seen it
  EXPECT_TRUE(s.script->Running()) << s.script->ReadStderr();
  for (int i = 0; i < 3; ++i) {
    RunResult r = GenerateUntilOk(s.address, scratch.path(), absl::Seconds(20));
    EXPECT_EQ(r.exit_code, 0) << r.Describe() << s.script->ReadStderr();
  }
  EXPECT_TRUE(s.script->Running()) << s.script->ReadStderr();
  EXPECT_NE(s.script->ReadStderr().find("decode-0 exited"), std::string::npos)
      << s.script->ReadStderr();
  s.script->Signal(SIGTERM);
  std::optional<int> st = s.script->WaitExit(absl::Seconds(60));
  ASSERT_TRUE(st.has_value()) << s.script->ReadStderr();
  EXPECT_EQ(ExitCodeOf(*st), 143) << s.script->ReadStderr();
  EXPECT_EQ(ProcessesMentioning(workdir), std::vector<std::string>{});
}

// With --restart the killed worker comes back on its port and the router uses it again.
TEST(ClusterScriptTest, RestartBringsAKilledWorkerBack) {
  Scratch scratch;
  const std::string workdir = absl::StrCat(scratch.path(), "/cluster");
  KillLeftovers guard(workdir);
  ServingScript s = StartServingScript(scratch, workdir, {"--restart"});
  ASSERT_TRUE(s.script != nullptr);
  ASSERT_FALSE(s.address.empty()) << s.script->ReadStderr();
  const std::vector<int> decode = ServerPids(workdir, "--role decode");
  ASSERT_EQ(decode.size(), 1u);
  ASSERT_EQ(kill(decode[0], SIGKILL), 0);
  std::vector<int> now;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    now = ServerPids(workdir, "--role decode");
    if (now.size() == 1 && now[0] != decode[0]) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_EQ(now.size(), 1u) << s.script->ReadStderr();
  EXPECT_NE(now[0], decode[0]);
  // The only decode worker is back: generations succeed again (once the router re-admits it).
  RunResult r = GenerateUntilOk(s.address, scratch.path(), absl::Seconds(60));
  EXPECT_EQ(r.exit_code, 0) << r.Describe() << s.script->ReadStderr();
  EXPECT_TRUE(s.script->Running());
  s.script->Signal(SIGTERM);
  std::optional<int> st = s.script->WaitExit(absl::Seconds(60));
  ASSERT_TRUE(st.has_value()) << s.script->ReadStderr();
  EXPECT_EQ(ProcessesMentioning(workdir), std::vector<std::string>{});
}

// a second signal during the teardown used to kill the script before it
// had stopped the workers, leaving them running. Now it SIGKILLs them and still reaps them all.
TEST(ClusterScriptTest, SecondSignalDuringTeardownLeavesNoProcess) {
  for (const int second : {SIGTERM, SIGINT}) {
    SCOPED_TRACE(second);
    Scratch scratch;
    const std::string workdir = absl::StrCat(scratch.path(), "/cluster");
    KillLeftovers guard(workdir);
    ServingScript s = StartServingScript(scratch, workdir, {"--prefill", "2"});
    ASSERT_TRUE(s.script != nullptr);
    ASSERT_FALSE(s.address.empty()) << s.script->ReadStderr();
    ASSERT_EQ(ServerPids(workdir, "").size(), 4u);
    s.script->Signal(SIGTERM);
    absl::SleepFor(absl::Milliseconds(30));
    s.script->Signal(second);
    std::optional<int> st = s.script->WaitExit(absl::Seconds(60));
    ASSERT_TRUE(st.has_value()) << s.script->ReadStderr();
    // 143 (SIGTERM), or 130 when a loaded machine delivered both before the script ran its
    // trap: bash handles pending signals in number order.
    const int code = ExitCodeOf(*st);
    EXPECT_TRUE(code == 143 || (second == SIGINT && code == 130)) << code << "\n"
                                                                  << s.script->ReadStderr();
    // Nothing of this cluster is left, not even for a moment after the script exited.
    EXPECT_EQ(ProcessesMentioning(workdir), std::vector<std::string>{}) << s.script->ReadStderr();
  }
}

}  // namespace
}  // namespace sambay::testing
