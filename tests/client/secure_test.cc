// TLS, mTLS and API keys from the clients' side: the flags of common/client_flags.h in
// sambay-client and sambay-bench (and the Python example's), their errors (each names its flag),
// the API key never showing in any output, and deploy/local/cluster.sh --secure: a throwaway CA,
// mTLS on the router's public port and between router and workers, an API key, and clients that
// work unchanged under --run. The secure cluster gives exactly the plaintext cluster's ids.
//
// Every test that starts a cluster gives it its own workdir and kills what is left of it.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/client/client_util.h"
#include "tests/worker/process.h"

namespace sambay::testing {
namespace {

// A key no output may contain (the cluster's own key is random and checked the same way).
constexpr const char* kSecret = "sk-test-5f1c2e9a7b3d4c6e8f0a1b2c3d4e5f60";

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// Expects exit code 2 and one stderr line starting with `prefix`.
void ExpectFlagError(const RunResult& r, const std::string& prefix) {
  EXPECT_EQ(r.exit_code, 2) << r.Describe();
  EXPECT_TRUE(absl::StartsWith(r.err, prefix)) << "want prefix: " << prefix << "\n" << r.Describe();
}

// A self-signed certificate and key made with openssl (a CA bundle that parses).
void MakeSelfSigned(const std::string& dir) {
  RunResult r = RunTool(
      "/usr/bin/openssl",
      {"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
       dir + "/self.key", "-out", dir + "/self.pem", "-subj", "/CN=self", "-days", "1"},
      dir);
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
}

TEST(ClientTlsFlags, ErrorsNameTheFlag) {
  Scratch scratch;
  ASSERT_FALSE(scratch.path().empty());
  const std::string dir = scratch.path();
  MakeSelfSigned(dir);
  const std::string client = Bin("sambay-client"), bench = Bin("sambay-bench");
  const std::string missing = dir + "/missing.pem";
  WriteFile(dir + "/not-pem.txt", "not a certificate\n");

  ExpectFlagError(RunTool(client, {"--tls-cert", dir + "/self.pem", "--ids", "3"}, dir),
                  "sambay-client: error: --tls-key: required with --tls-cert\n");
  ExpectFlagError(RunTool(client, {"--tls-key", dir + "/self.key", "--ids", "3"}, dir),
                  "sambay-client: error: --tls-cert: required with --tls-key\n");
  ExpectFlagError(RunTool(client, {"--tls-ca", missing, "--ids", "3"}, dir),
                  absl::StrCat("sambay-client: error: --tls-ca: ", missing, ": cannot read"));
  ExpectFlagError(RunTool(client, {"--tls-ca", dir + "/not-pem.txt", "--ids", "3"}, dir),
                  "sambay-client: error: --tls-ca: ");
  ExpectFlagError(
      RunTool(client, {"--tls-cert", dir + "/self.pem", "--tls-key", missing, "--ids", "3"}, dir),
      "sambay-client: error: --tls-key: ");
  ExpectFlagError(RunTool(client, {"--tls-server-name", "x", "--ids", "3"}, dir),
                  "sambay-client: error: --tls-server-name: only with TLS");
  // The shared variables are defaults of the flags, and their errors name the flag too.
  ExpectFlagError(RunTool(client, {"--ids", "3"}, dir, absl::Seconds(60),
                          {absl::StrCat("SAMBAY_TLS_CA=", missing)}),
                  "sambay-client: error: --tls-ca: ");
  ExpectFlagError(RunTool(bench, {"--requests", "1"}, dir, absl::Seconds(60),
                          {absl::StrCat("SAMBAY_TLS_CA=", missing)}),
                  "sambay-bench: error: --tls-ca: ");
  ExpectFlagError(RunTool(bench, {"--requests", "1"}, dir, absl::Seconds(60), {"SAMBAY_TLS=maybe"}),
                  "sambay-bench: error: SAMBAY_TLS: ");
  // A given flag wins over the variable: --tls-ca '' is plaintext again.
  RunResult off = RunTool(client, {"--tls-ca", "", "--address", "127.0.0.1:1", "--ids", "3"}, dir,
                          absl::Seconds(60), {absl::StrCat("SAMBAY_TLS_CA=", missing)});
  EXPECT_EQ(off.exit_code, 5) << off.Describe();

  // sambay-bench: the same flags, and TLS is refused with --api http (plain HTTP only).
  ExpectFlagError(RunTool(bench, {"--tls-key", dir + "/self.key"}, dir),
                  "sambay-bench: error: --tls-cert: required with --tls-key\n");
  ExpectFlagError(RunTool(bench, {"--api", "http", "--tls"}, dir),
                  "sambay-bench: error: --tls: --api http is plain HTTP (no HTTPS)");
  ExpectFlagError(RunTool(bench, {"--api", "http", "--tls-ca", dir + "/self.pem"}, dir),
                  "sambay-bench: error: --tls-ca: --api http is plain HTTP (no HTTPS)");
  ExpectFlagError(RunTool(bench, {"--api", "http"}, dir, absl::Seconds(60),
                          {absl::StrCat("SAMBAY_TLS_CA=", dir, "/self.pem")}),
                  "sambay-bench: error: --tls-ca: --api http is plain HTTP (no HTTPS)");

  // The Python example: the same names, exit code 2.
  const std::string py = "/usr/bin/python3", script = Source("tools/examples/generate_client.py");
  ExpectFlagError(
      RunTool(py, {script, "--stubs", PythonStubs(), "--tls-cert", dir + "/self.pem"}, dir),
      "generate_client: error: --tls-key: required with --tls-cert\n");
  ExpectFlagError(RunTool(py, {script, "--stubs", PythonStubs(), "--tls-ca", missing}, dir),
                  absl::StrCat("generate_client: error: --tls-ca: ", missing, ": cannot read"));
  ExpectFlagError(RunTool(py, {script, "--stubs", PythonStubs(), "--tls-server-name", "x"}, dir),
                  "generate_client: error: --tls-server-name: only with TLS");
}

// The key is in no output: --help (a key in the environment is not a default shown), flag errors,
// connection errors, a bad key's own error.
TEST(ClientTlsFlags, KeyIsNeverPrinted) {
  Scratch scratch;
  ASSERT_FALSE(scratch.path().empty());
  const std::string dir = scratch.path();
  const std::string env_key = absl::StrCat("SAMBAY_API_KEY=", kSecret);
  const std::string py = "/usr/bin/python3", script = Source("tools/examples/generate_client.py");
  const std::vector<std::string> stubs = {script, "--stubs", PythonStubs()};
  std::vector<RunResult> runs;
  for (const std::string& tool : {Bin("sambay-client"), Bin("sambay-bench")}) {
    runs.push_back(RunTool(tool, {"--help"}, dir, absl::Seconds(60), {env_key}));
    runs.push_back(RunTool(tool, {"--api-key", kSecret, "--tls-cert", "/nonexistent"}, dir,
                           absl::Seconds(60)));
    runs.push_back(RunTool(tool, {"--api-key", absl::StrCat(kSecret, " x")}, dir));
  }
  runs.push_back(RunTool(Bin("sambay-client"),
                         {"--api-key", kSecret, "--address", "127.0.0.1:1", "--ids", "3"}, dir));
  runs.push_back(
      RunTool(Bin("sambay-bench"), {"--requests", "-1"}, dir, absl::Seconds(60), {env_key}));
  runs.push_back(RunTool(py, {script, "--help"}, dir, absl::Seconds(60), {env_key}));
  runs.push_back(RunTool(py,
                         {script, "--stubs", PythonStubs(), "--api-key", kSecret, "--address",
                          "127.0.0.1:1", "--timeout", "2"},
                         dir));
  runs.push_back(RunTool(py, {script, "--stubs", PythonStubs(), "--api-key", "bad key"}, dir,
                         absl::Seconds(60), {env_key}));
  ASSERT_EQ(runs.size(), 11u);
  EXPECT_EQ(runs[0].exit_code, 0) << runs[0].Describe();
  EXPECT_NE(runs[0].out.find("--api-key (SAMBAY_API_KEY; default \"\")"), std::string::npos)
      << runs[0].out;
  ExpectFlagError(runs[2], "sambay-client: error: --api-key: must be printable ASCII");
  ExpectFlagError(runs[5], "sambay-bench: error: --api-key: must be printable ASCII");
  EXPECT_EQ(runs[6].exit_code, 5) << runs[6].Describe();
  ExpectFlagError(runs[7], "sambay-bench: error: --requests and --duration must be >= 0");
  EXPECT_EQ(runs[8].exit_code, 0) << runs[8].Describe();
  ExpectFlagError(runs[10], "generate_client: error: --api-key: must be printable ASCII");
  for (const RunResult& r : runs) {
    EXPECT_EQ(r.out.find(kSecret), std::string::npos) << r.Describe();
    EXPECT_EQ(r.err.find(kSecret), std::string::npos) << r.Describe();
  }
}

// NAME=VALUE lines of cluster.sh's WORKDIR/client.env ("export NAME=VALUE").
std::map<std::string, std::string> ClientEnv(const std::string& workdir) {
  std::map<std::string, std::string> env;
  for (absl::string_view line :
       absl::StrSplit(ReadWholeFile(workdir + "/client.env"), '\n', absl::SkipEmpty())) {
    absl::ConsumePrefix(&line, "export ");
    const size_t eq = line.find('=');
    if (eq != absl::string_view::npos) {
      env[std::string(line.substr(0, eq))] = std::string(line.substr(eq + 1));
    }
  }
  return env;
}

// NAME=VALUE entries of `env` for RunTool, leaving out the names in `drop`.
std::vector<std::string> EnvList(const std::map<std::string, std::string>& env,
                                 const std::vector<std::string>& drop = {}) {
  std::vector<std::string> out;
  for (const auto& [name, value] : env) {
    if (std::find(drop.begin(), drop.end(), name) == drop.end()) {
      out.push_back(absl::StrCat(name, "=", value));
    }
  }
  return out;
}

// A TCP port that was free a moment ago (for the router's --http-port, which takes no 0).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

std::vector<std::string> Args(std::vector<std::string> base, const std::vector<std::string>& more) {
  base.insert(base.end(), more.begin(), more.end());
  return base;
}

// cluster.sh --secure serving: the files it made, what a client needs (client.env), and who gets
// in: the right key with a client certificate; no key, a wrong key (UNAUTHENTICATED), no client
// certificate or plaintext (no connection) do not; health needs no key. sambay-bench over gRPC
// and over the HTTP API (Authorization: Bearer) with the key. The key shows in no output or log.
TEST(SecureClusterTest, MutualTlsAndApiKey) {
  Scratch scratch;
  ASSERT_FALSE(scratch.path().empty());
  const std::string dir = scratch.path(), workdir = dir + "/cluster";
  KillLeftovers guard(workdir);
  const int http_port = FreePort();
  ASSERT_GT(http_port, 0);
  ServingScript s = StartServingScript(
      scratch, workdir, {"--secure", "--router-args", absl::StrCat("--http-port ", http_port)});
  ASSERT_TRUE(s.script != nullptr);
  ASSERT_FALSE(s.address.empty()) << s.script->ReadStderr();

  // The files: in the workdir, keys and the key file readable by the user only.
  const std::string tls = workdir + "/tls";
  for (const char* f : {"ca.pem", "server.pem", "server.key", "internal.pem", "internal.key",
                        "client.pem", "client.key", "api-keys"}) {
    struct stat st {};
    ASSERT_EQ(stat((tls + "/" + f).c_str(), &st), 0) << f;
    if (absl::EndsWith(f, ".key") || absl::StrContains(f, "api-keys")) {
      EXPECT_EQ(st.st_mode & 077, 0u) << f;
    }
  }
  const std::map<std::string, std::string> env = ClientEnv(workdir);
  ASSERT_EQ(env.size(), 5u) << ReadWholeFile(workdir + "/client.env");
  const std::string key = env.at("SAMBAY_API_KEY");
  EXPECT_EQ(key.size(), 48u);  // openssl rand -hex 24
  EXPECT_EQ(ReadWholeFile(tls + "/api-keys"), key + " local\n");
  EXPECT_EQ(env.at("SAMBAY_ADDRESS"), s.address);
  EXPECT_EQ(env.at("SAMBAY_TLS_CA"), tls + "/ca.pem");

  const std::string client = Bin("sambay-client");
  const std::vector<std::string> gen = {"--ids", "3,14,15", "--max-new-tokens", "8", "--print-ids"};
  std::vector<RunResult> runs;
  runs.push_back(RunTool(client, gen, dir, absl::Seconds(60), EnvList(env)));
  // The key as a flag instead of the variable (the flag wins over the variable).
  runs.push_back(RunTool(client, Args(gen, {"--api-key", key}), dir, absl::Seconds(60),
                         EnvList(env, {"SAMBAY_API_KEY"})));
  runs.push_back(RunTool(client, gen, dir, absl::Seconds(60), EnvList(env, {"SAMBAY_API_KEY"})));
  runs.push_back(
      RunTool(client, Args(gen, {"--api-key", kSecret}), dir, absl::Seconds(60), EnvList(env)));
  runs.push_back(RunTool(client, Args(gen, {"--timeout", "5"}), dir, absl::Seconds(60),
                         EnvList(env, {"SAMBAY_TLS_CERT", "SAMBAY_TLS_KEY"})));
  runs.push_back(RunTool(
      client, Args(gen, {"--tls-ca", "", "--tls-cert", "", "--tls-key", "", "--timeout", "5"}), dir,
      absl::Seconds(60), EnvList(env)));
  runs.push_back(
      RunTool(client, {"--health"}, dir, absl::Seconds(60), EnvList(env, {"SAMBAY_API_KEY"})));
  // A wrong server name fails the handshake; the right one (the cert's DNS SAN) passes.
  runs.push_back(RunTool(client,
                         Args(gen, {"--tls-server-name", "wrong.example", "--timeout", "5"}), dir,
                         absl::Seconds(60), EnvList(env)));
  runs.push_back(RunTool(client, Args(gen, {"--tls-server-name", "localhost"}), dir,
                         absl::Seconds(60), EnvList(env)));
  ASSERT_EQ(runs[0].exit_code, 0) << runs[0].Describe() << s.script->ReadStderr();
  EXPECT_FALSE(runs[0].out.empty());
  EXPECT_EQ(runs[1].exit_code, 0) << runs[1].Describe();
  EXPECT_EQ(runs[1].out, runs[0].out);
  for (int i : {2, 3}) {
    EXPECT_EQ(runs[i].exit_code, 1) << runs[i].Describe();
    EXPECT_TRUE(absl::StartsWith(runs[i].err, "sambay-client: error: UNAUTHENTICATED: "))
        << runs[i].Describe();
  }
  for (int i : {4, 5, 7}) {
    EXPECT_EQ(runs[i].exit_code, 5) << i << ": " << runs[i].Describe();  // UNAVAILABLE
  }
  EXPECT_EQ(runs[6].exit_code, 0) << runs[6].Describe();
  EXPECT_EQ(runs[6].out, "SERVING\n");
  EXPECT_EQ(runs[8].exit_code, 0) << runs[8].Describe();

  // The Python example with the same variables; without the key it is refused.
  const std::string py = "/usr/bin/python3", script = Source("tools/examples/generate_client.py");
  const std::vector<std::string> py_gen = {script,     "--stubs",   PythonStubs(),
                                           "--prompt", "hello",     "--max-new-tokens",
                                           "8",        "--address", s.address};
  runs.push_back(RunTool(py, py_gen, dir, absl::Seconds(60), EnvList(env)));
  runs.push_back(RunTool(py, py_gen, dir, absl::Seconds(60), EnvList(env, {"SAMBAY_API_KEY"})));
  runs.push_back(RunTool(client, {"--prompt", "hello", "--max-new-tokens", "8"}, dir,
                         absl::Seconds(60), EnvList(env)));
  EXPECT_EQ(runs[9].exit_code, 0) << runs[9].Describe();
  EXPECT_EQ(runs[9].out, runs[11].out);
  EXPECT_EQ(runs[10].exit_code, 1) << runs[10].Describe();
  EXPECT_NE(runs[10].err.find("generate_client: error: UNAUTHENTICATED"), std::string::npos)
      << runs[10].Describe();

  // sambay-bench over gRPC (the shared SAMBAY_TLS_* / SAMBAY_API_KEY variables); the key is
  // redacted in its JSON report. The HTTP API takes the router's TLS (HTTPS with the client CA):
  // curl with the client certificate gets 200 with the key and 401 without; sambay-bench's
  // plain-HTTP path cannot reach it.
  const std::string json = dir + "/bench.json";
  const std::vector<std::string> load = {"--requests", "4", "--concurrency", "2",
                                         "--gen-len",  "4", "--quiet"};
  runs.push_back(RunTool(Bin("sambay-bench"), Args(load, {"--address", s.address, "--json", json}),
                         dir, absl::Seconds(120), EnvList(env)));
  const std::string https = absl::StrCat("https://127.0.0.1:", http_port, "/v1/models");
  const std::vector<std::string> curl = {"-s",
                                         "-o",
                                         "/dev/null",
                                         "-w",
                                         "%{http_code}",
                                         "--max-time",
                                         "20",
                                         "--cacert",
                                         tls + "/ca.pem",
                                         "--cert",
                                         tls + "/client.pem",
                                         "--key",
                                         tls + "/client.key"};
  runs.push_back(RunTool("/usr/bin/curl",
                         Args(curl, {"-H", absl::StrCat("Authorization: Bearer ", key), https}),
                         dir));
  runs.push_back(RunTool("/usr/bin/curl", Args(curl, {https}), dir));
  runs.push_back(
      RunTool(Bin("sambay-bench"),
              Args(load, {"--api", "http", "--address", absl::StrCat("127.0.0.1:", http_port)}),
              dir, absl::Seconds(120)));
  EXPECT_EQ(runs[12].exit_code, 0) << runs[12].Describe();
  EXPECT_NE(ReadWholeFile(json).find("\"api-key\": \"<redacted>\""), std::string::npos)
      << ReadWholeFile(json);
  EXPECT_EQ(runs[13].out, "200") << runs[13].Describe();
  EXPECT_EQ(runs[14].out, "401") << runs[14].Describe();
  EXPECT_NE(runs[15].exit_code, 0) << "plain HTTP reached the HTTPS port: " << runs[15].Describe();

  // The key is in no output, report or log (the script's, the router's, the workers').
  std::vector<std::string> texts = {ReadWholeFile(json), s.script->ReadStderr(),
                                    s.script->ReadStdout()};
  for (const RunResult& r : runs) {
    texts.push_back(r.out);
    texts.push_back(r.err);
  }
  for (const char* log : {"router.log", "router.stdout", "prefill-0.log", "decode-0.log"}) {
    texts.push_back(ReadWholeFile(absl::StrCat(workdir, "/", log)));
  }
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(texts[i].find(key), std::string::npos) << "text " << i << ":\n" << Tail(texts[i]);
    EXPECT_EQ(texts[i].find(kSecret), std::string::npos) << "text " << i << ":\n" << Tail(texts[i]);
  }
  s.script->Signal(SIGTERM);
  EXPECT_TRUE(s.script->WaitExit(absl::Seconds(60)).has_value());
  EXPECT_EQ(ProcessesMentioning(workdir), std::vector<std::string>{});
}

// 16 concurrent streams through sambay-client, as cluster.sh --run runs it: 8 greedy and 8 seeded
// (fixed seeds, --ignore-eos), one "NAME: ids" line each, in order.
constexpr const char* kStreams = R"sh(set -u
client=$1; out=$2; pids=(); names=()
mkdir -p "$out"
common=(--max-new-tokens 12 --print-ids --quiet)
for i in 0 1 2 3 4 5 6 7; do
  "$client" --ids "3,14,$((15 + i))" "${common[@]}" >"$out/greedy.$i" 2>&1 &
  pids+=($!); names+=("greedy.$i")
  "$client" --ids "5,6,$((7 + i))" "${common[@]}" --ignore-eos --temperature 0.8 --top-p 0.9 \
    --seed $((1000 + i)) >"$out/seeded.$i" 2>&1 &
  pids+=($!); names+=("seeded.$i")
done
rc=0
for k in "${!pids[@]}"; do
  wait "${pids[$k]}" || { echo "${names[$k]} failed: $(cat "$out/${names[$k]}")" >&2; rc=1; }
  echo "${names[$k]}: $(cat "$out/${names[$k]}")"
done
exit $rc
)sh";

// What sambay-run gives for the streams of kStreams, in its format.
std::string ReferenceStreams(const std::string& dir) {
  std::string want;
  for (int i = 0; i < 8; ++i) {
    const std::vector<uint32_t> greedy =
        Reference({"--ids", absl::StrCat("3,14,", 15 + i), "--max-new-tokens", "12"}, dir);
    const std::vector<uint32_t> seeded =
        Reference({"--ids", absl::StrCat("5,6,", 7 + i), "--max-new-tokens", "12", "--temperature",
                   "0.8", "--top-p", "0.9", "--seed", absl::StrCat(1000 + i)},
                  dir, /*cut_at_eos=*/false);
    absl::StrAppend(&want, "greedy.", i, ": ", absl::StrJoin(greedy, " "), "\n", "seeded.", i, ": ",
                    absl::StrJoin(seeded, " "), "\n");
  }
  return want;
}

// The exactness check: `cluster.sh --run` and `cluster.sh --secure --run` (the same unchanged
// sambay-client, configured by the variables --run sets) give the same ids for 16 concurrent
// streams, and those are sambay-run's.
TEST(SecureClusterTest, SecureIdsMatchPlaintext) {
  Scratch scratch;
  ASSERT_FALSE(scratch.path().empty());
  const std::string dir = scratch.path();
  WriteFile(dir + "/streams.sh", kStreams);
  std::map<std::string, RunResult> got;
  for (const std::string mode : {"plain", "secure"}) {
    const std::string workdir = absl::StrCat(dir, "/cluster-", mode);
    KillLeftovers guard(workdir);
    std::vector<std::string> args = {Source("deploy/local/cluster.sh"),
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
    if (mode == "secure") args.push_back("--secure");
    for (const std::string& a :
         {std::string("--run"), std::string("--"), std::string("/bin/bash"), dir + "/streams.sh",
          Bin("sambay-client"), absl::StrCat(dir, "/out-", mode)}) {
      args.push_back(a);
    }
    got[mode] = RunTool("/bin/bash", args, dir, absl::Seconds(240));
    EXPECT_EQ(got[mode].exit_code, 0) << mode << ": " << got[mode].Describe();
    EXPECT_EQ(ProcessesMentioning(workdir), std::vector<std::string>{});
  }
  EXPECT_NE(got["secure"].err.find("source " + dir + "/cluster-secure/client.env"),
            std::string::npos)
      << got["secure"].err;
  EXPECT_EQ(std::count(got["plain"].out.begin(), got["plain"].out.end(), '\n'), 16)
      << got["plain"].out;
  EXPECT_EQ(got["secure"].out, got["plain"].out);
  EXPECT_EQ(got["plain"].out, ReferenceStreams(dir));
}

}  // namespace
}  // namespace sambay::testing
