// TLS, mTLS and API keys on real processes (docs/security.md): sambay-router and sambay-worker on
// loopback with throwaway certificates (tests/security/certs.h), driven by test clients with
// and without the right certificates and keys.
#include <grpcpp/generic/generic_stub.h>
#include <sys/wait.h>

#include <cstdio>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_channel.h"
#include "common/tls.h"
#include "gtest/gtest.h"
#include "tests/router/router_harness.h"
#include "tests/security/certs.h"
#include "tests/worker/http_get.h"

namespace sambay::testing {
namespace {

namespace pb = sambay::v1;

// The PEM files of one test: a cluster CA, another CA, and leaf certificates of both.
class Pki {
 public:
  explicit Pki(const std::string& dir) : dir_(dir) {
    WriteFileAtomically(Path("ca.crt"), ca_.cert_pem());
    WriteFileAtomically(Path("other-ca.crt"), other_.cert_pem());
    Write("server", ca_.Issue(Spec("router", {"localhost"}, {"127.0.0.1"})));
    Write("internal", ca_.Issue(Spec("worker", {"sambay-internal"})));
    Write("client", ca_.Issue(Spec("client")));
    Write("stranger", other_.Issue(Spec("stranger", {"sambay-internal"})));
    LeafSpec expired = Spec("expired", {"sambay-internal"});
    expired.not_before = -absl::Hours(48);
    expired.not_after = -absl::Hours(24);
    Write("expired", ca_.Issue(expired));
    Write("other-server", other_.Issue(Spec("router2", {"localhost"}, {"127.0.0.1"})));
  }
  static LeafSpec Spec(const std::string& cn, std::vector<std::string> dns = {},
                       std::vector<std::string> ips = {}) {
    LeafSpec spec;
    spec.common_name = cn;
    spec.dns = std::move(dns);
    spec.ips = std::move(ips);
    return spec;
  }
  std::string Path(const std::string& file) const { return dir_ + "/" + file; }
  std::string Cert(const std::string& name) const { return Path(name + ".crt"); }
  std::string Key(const std::string& name) const { return Path(name + ".key"); }
  void Write(const std::string& name, const Pem& pem) {
    WriteFileAtomically(Key(name), pem.key);
    WriteFileAtomically(Cert(name), pem.cert);
  }
  // --internal-tls-* flags with `name`'s certificate.
  std::vector<std::string> InternalFlags(const std::string& name = "internal") const {
    return {"--internal-tls-cert", Cert(name),    "--internal-tls-key", Key(name),
            "--internal-tls-ca",   Path("ca.crt")};
  }
  const Ca& ca() const { return ca_; }

 private:
  std::string dir_;
  Ca ca_{"sambay-test-ca"};
  Ca other_{"other-ca"};
};

std::shared_ptr<grpc::Channel> Plain(const std::string& address) {
  return MakeChannel(address, RpcLimits{});
}

// A TLS channel trusting `ca`, presenting cert/key when given; `name` overrides the checked name.
std::shared_ptr<grpc::Channel> Tls(const std::string& address, const std::string& ca,
                                   const std::string& cert = "", const std::string& key = "",
                                   const std::string& name = "") {
  RpcLimits limits;
  limits.credentials = MakeTlsChannelCredentials({cert, key, ca}, absl::Seconds(1));
  limits.tls_server_name = name;
  return MakeChannel(address, limits);
}

grpc::Status ModelInfo(const std::shared_ptr<grpc::Channel>& ch,
                       const std::vector<std::pair<std::string, std::string>>& md = {}) {
  auto stub = pb::Generation::NewStub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  for (const auto& [k, v] : md) ctx.AddMetadata(k, v);
  pb::GetModelInfoRequest req;
  pb::ModelInfo resp;
  return stub->GetModelInfo(&ctx, req, &resp);
}

grpc::Status WorkerGetLoad(const std::shared_ptr<grpc::Channel>& ch) {
  auto stub = pb::Worker::NewStub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  pb::GetLoadRequest req;
  pb::WorkerLoad resp;
  return stub->GetLoad(&ctx, req, &resp);
}

absl::StatusOr<std::unique_ptr<ServerProcess>> StartWorker(const std::string& role,
                                                           const std::vector<std::string>& extra,
                                                           const std::string& dir,
                                                           const std::string& name) {
  std::vector<std::string> args = {
      "--model", TinyModelDir(),   "--role", role,        "--host", "127.0.0.1", "--port",
      "0",       "--metrics-port", "0",      "--threads", "1"};
  args.insert(args.end(), extra.begin(), extra.end());
  return ServerProcess::Start(BinDir() + "/sambay-worker", args, dir, name);
}

// A router's exit status and stderr when it must refuse to start.
std::pair<int, std::string> RunRouterExpectingExit(const std::vector<std::string>& args,
                                                   const std::string& dir) {
  std::string cmd = absl::StrCat(BinDir(), "/sambay-router --model ", TinyModelDir(),
                                 " --port 0 --metrics-port 0 --workers 127.0.0.1:1");
  for (const auto& a : args) absl::StrAppend(&cmd, " '", a, "'");
  absl::StrAppend(&cmd, " 2>", dir, "/refused.err");
  const int st = std::system(cmd.c_str());
  std::string err;
  if (FILE* f = std::fopen((dir + "/refused.err").c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) err.append(buf, n);
    std::fclose(f);
  }
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, err};
}

// The public port with TLS and a client CA: only clients with a certificate of that CA, valid
// now, get through; plaintext and other clients fail the handshake (UNAVAILABLE). The health-only
// port answers plaintext probes and serves nothing else.
TEST(SecurityTest, PublicMtlsRefusesEveryClientWithoutAValidCertificate) {
  ScratchDir scratch;
  Pki pki(scratch.path());
  auto worker = Worker::Start("both", {}, scratch.path(), "w");
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto router = Router::Start(
      {"--workers", (*worker)->address(), "--tls-cert", pki.Cert("server"), "--tls-key",
       pki.Key("server"), "--tls-client-ca", pki.Path("ca.crt"), "--health-port", "0"},
      scratch.path(), "router", 1);
  ASSERT_TRUE(router.ok()) << router.status();
  Router& r = **router;
  const std::string addr = r.address();
  const std::string ca = pki.Path("ca.crt");

  EXPECT_EQ(ModelInfo(Plain(addr)).error_code(), grpc::StatusCode::UNAVAILABLE) << "plaintext";
  EXPECT_EQ(ModelInfo(Tls(addr, ca)).error_code(), grpc::StatusCode::UNAVAILABLE) << "no cert";
  EXPECT_EQ(ModelInfo(Tls(addr, ca, pki.Cert("stranger"), pki.Key("stranger"))).error_code(),
            grpc::StatusCode::UNAVAILABLE)
      << "another CA's cert";
  EXPECT_EQ(ModelInfo(Tls(addr, ca, pki.Cert("expired"), pki.Key("expired"))).error_code(),
            grpc::StatusCode::UNAVAILABLE)
      << "expired cert";
  // A client that does not trust the server's CA refuses the server.
  EXPECT_EQ(ModelInfo(Tls(addr, pki.Path("other-ca.crt"), pki.Cert("client"), pki.Key("client")))
                .error_code(),
            grpc::StatusCode::UNAVAILABLE);

  auto good = Tls(addr, ca, pki.Cert("client"), pki.Key("client"));
  EXPECT_TRUE(ModelInfo(good).ok()) << Str(ModelInfo(good)) << r.Logs();
  auto stub = pb::Generation::NewStub(good);
  const auto request = IdsRequest(PromptIds(9, 5), Greedy(), 12);
  auto ref = ReferenceIds(request, scratch.path());
  ASSERT_TRUE(ref.ok()) << ref.status();
  const StreamResult res = Generate(*stub, request, absl::Seconds(30));
  ASSERT_TRUE(res.status.ok()) << res.Describe();
  EXPECT_EQ(res.ids, *ref);

  // The health-only port: plaintext, health only.
  const std::string port_file = ReadWholeFile(scratch.path() + "/router.port");
  const size_t at = port_file.find("\"health_port\":");
  ASSERT_NE(at, std::string::npos) << port_file;
  const std::string health_addr =
      absl::StrCat("127.0.0.1:", std::atoi(port_file.c_str() + at + 14));
  auto health = grpc::health::v1::Health::NewStub(Plain(health_addr));
  grpc::ClientContext hctx;
  hctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest hreq;
  grpc::health::v1::HealthCheckResponse hresp;
  ASSERT_TRUE(health->Check(&hctx, hreq, &hresp).ok());
  EXPECT_EQ(hresp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(ModelInfo(Plain(health_addr)).error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

// Bad certificate files stop the start with exit 2 and a message naming the flag.
TEST(SecurityTest, BadCertificateFilesAreRefusedAtStart) {
  ScratchDir scratch;
  Pki pki(scratch.path());
  auto [code, err] = RunRouterExpectingExit(
      {"--tls-cert", pki.Cert("expired"), "--tls-key", pki.Key("expired")}, scratch.path());
  EXPECT_EQ(code, 2) << err;
  EXPECT_TRUE(absl::StrContains(err, "--tls-cert:") && absl::StrContains(err, "expired")) << err;
  std::tie(code, err) = RunRouterExpectingExit(
      {"--tls-cert", pki.Cert("server"), "--tls-key", pki.Key("client")}, scratch.path());
  EXPECT_EQ(code, 2) << err;
  EXPECT_TRUE(absl::StrContains(err, "--tls-key:") && absl::StrContains(err, "does not match"))
      << err;
  std::tie(code, err) = RunRouterExpectingExit({"--tls-cert", pki.Cert("server")}, scratch.path());
  EXPECT_EQ(code, 2) << err;
  EXPECT_TRUE(absl::StrContains(err, "--tls-key: required")) << err;
  std::tie(code, err) = RunRouterExpectingExit(
      {"--internal-tls-cert", pki.Cert("internal"), "--internal-tls-key", pki.Key("internal")},
      scratch.path());
  EXPECT_EQ(code, 2) << err;
  EXPECT_TRUE(absl::StrContains(err, "--internal-tls-ca: required")) << err;
  std::tie(code, err) =
      RunRouterExpectingExit({"--tls-client-ca", pki.Path("ca.crt")}, scratch.path());
  EXPECT_EQ(code, 2) << err;
  EXPECT_TRUE(absl::StrContains(err, "--tls-client-ca:")) << err;
}

// Internal mTLS: the router reaches mTLS workers and the output is exact; a process without the
// cluster's certificate (none, another CA's, an expired one) cannot call any worker method, and
// a router without internal TLS cannot use the workers at all.
TEST(SecurityTest, InternalMtlsServesExactlyAndShutsOutStrangers) {
  ScratchDir scratch;
  Pki pki(scratch.path());
  auto prefill = StartWorker("prefill", pki.InternalFlags(), scratch.path(), "prefill");
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  auto decode = StartWorker("decode", pki.InternalFlags(), scratch.path(), "decode");
  ASSERT_TRUE(decode.ok()) << decode.status();
  std::vector<std::string> args = {"--prefill-workers", (*prefill)->address(), "--decode-workers",
                                   (*decode)->address()};
  std::vector<std::string> secure = args;
  for (const auto& a : pki.InternalFlags()) secure.push_back(a);
  auto router = Router::Start(secure, scratch.path(), "router", 2);
  ASSERT_TRUE(router.ok()) << router.status();

  std::vector<pb::GenerateRequest> requests;
  for (int i = 0; i < 8; ++i) {
    requests.push_back(IdsRequest(PromptIds(5 + 7 * i, 40 + i),
                                  i % 2 == 0 ? Greedy() : Seeded(0.8f, 0.95f, 1000 + i), 24));
  }
  const std::vector<Reference> refs = References(requests, scratch.path());
  const std::vector<StreamResult> got = GenerateAll((*router)->stub(), requests);
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(got[i].status.ok()) << i << ": " << got[i].Describe() << (*router)->Logs();
    EXPECT_EQ(got[i].ids, refs[i].ids) << "stream " << i;
  }

  const std::string ca = pki.Path("ca.crt");
  for (auto* w : {prefill->get(), decode->get()}) {
    const std::string a = w->address();
    EXPECT_EQ(WorkerGetLoad(Plain(a)).error_code(), grpc::StatusCode::UNAVAILABLE) << a;
    EXPECT_EQ(WorkerGetLoad(Tls(a, ca, "", "", "sambay-internal")).error_code(),
              grpc::StatusCode::UNAVAILABLE);
    EXPECT_EQ(
        WorkerGetLoad(Tls(a, ca, pki.Cert("stranger"), pki.Key("stranger"), "sambay-internal"))
            .error_code(),
        grpc::StatusCode::UNAVAILABLE);
    EXPECT_EQ(WorkerGetLoad(Tls(a, ca, pki.Cert("expired"), pki.Key("expired"), "sambay-internal"))
                  .error_code(),
              grpc::StatusCode::UNAVAILABLE);
    // The positive control: the cluster's certificate gets through.
    EXPECT_TRUE(
        WorkerGetLoad(Tls(a, ca, pki.Cert("internal"), pki.Key("internal"), "sambay-internal"))
            .ok());
  }
  // Every other worker method from a plaintext stranger: refused before any handler runs.
  auto stranger = pb::Worker::NewStub(Plain((*decode)->address()));
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    pb::ReleaseRequest req;
    req.set_handle("x");
    pb::ReleaseResponse resp;
    EXPECT_EQ(stranger->Release(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    pb::PushStateResponse resp;
    auto w = stranger->PushState(&ctx, &resp);
    pb::StateChunk chunk;
    w->Write(chunk);
    w->WritesDone();
    EXPECT_EQ(w->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    pb::DecodeRequest req;
    auto rd = stranger->Decode(&ctx, req);
    pb::DecodeResponse resp;
    while (rd->Read(&resp)) {
    }
    EXPECT_EQ(rd->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  // A router without the cluster certificate sees no worker up.
  auto plain_router = Router::Start(args, scratch.path(), "plain-router");
  ASSERT_TRUE(plain_router.ok()) << plain_router.status();
  absl::SleepFor(absl::Seconds(2));
  EXPECT_EQ((*plain_router)->MetricSum("sambay_router_worker_up"), 0) << (*plain_router)->Logs();
}

// kill -9 of the decode worker mid-stream with internal mTLS: the sequences migrate (re-prefill
// on the other workers, over mTLS) and finish exactly.
TEST(SecurityTest, FailoverWithMtlsIsExact) {
  ScratchDir scratch;
  Pki pki(scratch.path());
  auto prefill = StartWorker("prefill", pki.InternalFlags(), scratch.path(), "prefill");
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  auto d1 = StartWorker("decode", pki.InternalFlags(), scratch.path(), "d1");
  ASSERT_TRUE(d1.ok()) << d1.status();
  auto d2 = StartWorker("decode", pki.InternalFlags(), scratch.path(), "d2");
  ASSERT_TRUE(d2.ok()) << d2.status();
  std::vector<std::string> args = {
      "--prefill-workers", (*prefill)->address(),
      "--decode-workers",  absl::StrCat((*d1)->address(), ",", (*d2)->address()),
      "--placement",       "round-robin"};
  for (const auto& a : pki.InternalFlags()) args.push_back(a);
  auto router = Router::Start(args, scratch.path(), "router", 3);
  ASSERT_TRUE(router.ok()) << router.status();
  std::vector<pb::GenerateRequest> requests;
  for (int i = 0; i < 4; ++i) {
    requests.push_back(IdsRequest(PromptIds(6 + 5 * i, 70 + i), Greedy(), 300));
  }
  const std::vector<Reference> refs = References(requests, scratch.path());
  std::vector<std::unique_ptr<Stream>> streams;
  for (const auto& q : requests) {
    streams.push_back(std::make_unique<Stream>((*router)->stub(), q, absl::Seconds(90)));
  }
  ASSERT_TRUE(WaitFor(
      [&] {
        for (const auto& s : streams) {
          if (s->tokens() < 20 && !s->done()) return false;
        }
        return true;
      },
      absl::Seconds(30)));
  (*d1)->process().Kill();
  for (size_t i = 0; i < streams.size(); ++i) {
    const StreamResult& res = streams[i]->Wait();
    ASSERT_TRUE(res.status.ok()) << i << ": " << res.Describe() << (*router)->Logs();
    EXPECT_EQ(res.ids, refs[i].ids) << "stream " << i;
  }
  EXPECT_GE((*router)->MetricSum("sambay_router_migrations_total"), 1) << (*router)->Logs();
}

// The status of a reflection stream opened and closed at once (UNIMPLEMENTED when the server has
// no reflection).
grpc::Status ReflectionCall(const std::shared_ptr<grpc::Channel>& ch) {
  grpc::GenericStub stub(ch);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto call =
      stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag = nullptr;
  bool ok = false;
  call->StartCall(reinterpret_cast<void*>(1));
  cq.Next(&tag, &ok);
  call->WritesDone(reinterpret_cast<void*>(2));
  cq.Next(&tag, &ok);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(3));
  while (cq.Next(&tag, &ok) && tag != reinterpret_cast<void*>(3)) {
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

// --reflection=false closes gRPC reflection on the public port; it is open by default.
TEST(SecurityTest, ReflectionFollowsTheFlag) {
  ScratchDir scratch;
  auto worker = Worker::Start("both", {}, scratch.path(), "w");
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto open = Router::Start({"--workers", (*worker)->address()}, scratch.path(), "open");
  ASSERT_TRUE(open.ok()) << open.status();
  EXPECT_TRUE(ReflectionCall(Plain((*open)->address())).ok())
      << Str(ReflectionCall(Plain((*open)->address())));
  auto closed = Router::Start({"--workers", (*worker)->address(), "--reflection=false"},
                              scratch.path(), "closed");
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(ReflectionCall(Plain((*closed)->address())).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
}

// Certificate rotation without a restart: the files are replaced (by a certificate of another
// CA, so that the test can tell which one a handshake saw) under a running stream; within the
// reload interval new connections get the new certificate, and the running stream finishes
// exactly on the connection it had.
TEST(SecurityTest, CertificateRotationUnderARunningStream) {
  ScratchDir scratch;
  Pki pki(scratch.path());
  auto worker = Worker::Start("both", {}, scratch.path(), "w");
  ASSERT_TRUE(worker.ok()) << worker.status();
  WriteFileAtomically(pki.Path("live.crt"), ReadWholeFile(pki.Cert("server")));
  WriteFileAtomically(pki.Path("live.key"), ReadWholeFile(pki.Key("server")));
  auto router =
      Router::Start({"--workers", (*worker)->address(), "--tls-cert", pki.Path("live.crt"),
                     "--tls-key", pki.Path("live.key"), "--tls-reload-seconds", "1"},
                    scratch.path(), "router", 1);
  ASSERT_TRUE(router.ok()) << router.status();
  const std::string addr = (*router)->address();
  const std::string old_ca = pki.Path("ca.crt"), new_ca = pki.Path("other-ca.crt");
  ASSERT_TRUE(ModelInfo(Tls(addr, old_ca)).ok());
  ASSERT_EQ(ModelInfo(Tls(addr, new_ca)).error_code(), grpc::StatusCode::UNAVAILABLE);

  auto stub = pb::Generation::NewStub(Tls(addr, old_ca));
  const auto request = IdsRequest(PromptIds(7, 9), Greedy(), 3000);
  auto ref = ReferenceIds(request, scratch.path());
  ASSERT_TRUE(ref.ok()) << ref.status();
  Stream stream(*stub, request, absl::Seconds(120));
  ASSERT_TRUE(WaitFor([&] { return stream.tokens() >= 10; }, absl::Seconds(20)));

  // The key first, then the certificate (a renewal swaps both; the provider reads a matching pair).
  WriteFileAtomically(pki.Path("live.key"), ReadWholeFile(pki.Key("other-server")));
  WriteFileAtomically(pki.Path("live.crt"), ReadWholeFile(pki.Cert("other-server")));
  EXPECT_TRUE(WaitFor([&] { return ModelInfo(Tls(addr, new_ca)).ok(); }, absl::Seconds(10)))
      << "new connections never saw the new certificate\n"
      << (*router)->Logs();
  EXPECT_EQ(ModelInfo(Tls(addr, old_ca)).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_FALSE(stream.done()) << "the stream ended before the rotation was seen: make it longer";
  const StreamResult& res = stream.Wait();
  ASSERT_TRUE(res.status.ok()) << res.Describe();
  EXPECT_EQ(res.ids, *ref);
}

// The metrics endpoint's flags: HTTPS with the given certificate and a bearer token, on the
// worker and on the router alike (curl stands in for Prometheus).
TEST(SecurityTest, MetricsEndpointWithTlsAndToken) {
  if (std::system("command -v curl >/dev/null 2>&1") != 0) GTEST_SKIP() << "no curl";
  ScratchDir scratch;
  Pki pki(scratch.path());
  WriteFileAtomically(pki.Path("token"), "scrape-token-0123456789\n");
  const std::vector<std::string> metrics_flags = {"--metrics-tls-cert",          pki.Cert("server"),
                                                  "--metrics-tls-key",           pki.Key("server"),
                                                  "--metrics-bearer-token-file", pki.Path("token")};
  auto worker = StartWorker("both", metrics_flags, scratch.path(), "w");
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto status_of = [&](int port, const std::string& scheme, const std::string& token) {
    std::string cmd = absl::StrCat("curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert ",
                                   pki.Path("ca.crt"));
    if (!token.empty()) absl::StrAppend(&cmd, " -H 'Authorization: Bearer ", token, "'");
    absl::StrAppend(&cmd, " ", scheme, "://127.0.0.1:", port, "/metrics");
    FILE* p = popen(cmd.c_str(), "r");
    char buf[16] = {0};
    const size_t n = p != nullptr ? std::fread(buf, 1, sizeof buf - 1, p) : 0;
    if (p != nullptr) pclose(p);
    return std::string(buf, n);
  };
  const int port = (*worker)->metrics_port();
  EXPECT_EQ(status_of(port, "https", "scrape-token-0123456789"), "200");
  EXPECT_EQ(status_of(port, "https", ""), "401");
  EXPECT_EQ(status_of(port, "https", "SCRAPE-TOKEN-0123456789"), "401");
  EXPECT_EQ(status_of(port, "http", "scrape-token-0123456789"), "000");  // plaintext: closed
  // The router takes the same flags (and its registry sees the worker over the gRPC port).
  std::vector<std::string> args = {"--workers", (*worker)->address()};
  args.insert(args.end(), metrics_flags.begin(), metrics_flags.end());
  auto router = Router::Start(args, scratch.path(), "router");
  ASSERT_TRUE(router.ok()) << router.status();
  EXPECT_EQ(status_of((*router)->metrics_port(), "https", "scrape-token-0123456789"), "200");
  EXPECT_EQ(status_of((*router)->metrics_port(), "https", "wrong"), "401");
}

// The HTTP API speaks HTTPS with the public port's certificate and client CA.
TEST(SecurityTest, HttpApiServesHttpsWithThePublicCertificate) {
  if (std::system("command -v curl >/dev/null 2>&1") != 0) GTEST_SKIP() << "no curl";
  ScratchDir scratch;
  Pki pki(scratch.path());
  auto worker = Worker::Start("both", {}, scratch.path(), "w");
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto port = FreePort();
  ASSERT_TRUE(port.ok());
  auto router = Router::Start({"--workers", (*worker)->address(), "--tls-cert", pki.Cert("server"),
                               "--tls-key", pki.Key("server"), "--tls-client-ca",
                               pki.Path("ca.crt"), "--http-port", absl::StrCat(*port)},
                              scratch.path(), "router", 1);
  ASSERT_TRUE(router.ok()) << router.status();
  auto code = [&](const std::string& scheme, const std::string& client) {
    std::string cmd = absl::StrCat("curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert ",
                                   pki.Path("ca.crt"));
    if (!client.empty()) {
      absl::StrAppend(&cmd, " --cert ", pki.Cert(client), " --key ", pki.Key(client));
    }
    absl::StrAppend(&cmd, " ", scheme, "://127.0.0.1:", *port, "/v1/models");
    FILE* p = popen(cmd.c_str(), "r");
    char buf[16] = {0};
    const size_t n = p != nullptr ? std::fread(buf, 1, sizeof buf - 1, p) : 0;
    if (p != nullptr) pclose(p);
    return std::string(buf, n);
  };
  EXPECT_EQ(code("https", "client"), "200") << (*router)->Logs();
  EXPECT_EQ(code("https", ""), "000") << "no client certificate";
  EXPECT_EQ(code("https", "stranger"), "000") << "another CA's certificate";
  EXPECT_EQ(code("http", "client"), "000") << "plaintext";
}

}  // namespace
}  // namespace sambay::testing
