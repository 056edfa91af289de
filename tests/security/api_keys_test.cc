// API keys (router/api_keys.h) on a real router: every public method but health refuses a call
// without a key, with a wrong one and with the key in another case; a key's owner cannot Abort
// another owner's request; keys never reach a log; the HTTP API answers 401 the same way and
// keeps its probes open; the file's parsing. Also: reflection closed by --reflection=false, and
// certificate rotation under a running stream.
#include "router/api_keys.h"

#include <grpcpp/generic/generic_stub.h>

#include <cstdio>

#include "absl/strings/ascii.h"
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
using Metadata = std::vector<std::pair<std::string, std::string>>;

constexpr char kAlice[] = "alice-key-0123456789abcdef";
constexpr char kBob[] = "bob-key-fedcba9876543210xyz";

std::string WriteKeys(const std::string& dir) {
  const std::string path = dir + "/keys";
  WriteFileAtomically(path, absl::StrCat("# test keys\n", kAlice, " alice\n\n", kBob, " bob\n"));
  return path;
}

Metadata Bearer(const std::string& key) { return {{"authorization", "Bearer " + key}}; }

template <typename Fn>
grpc::Status Call(Fn fn, const Metadata& md) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  for (const auto& [k, v] : md) ctx.AddMetadata(k, v);
  return fn(&ctx);
}

// Every method of sambay.v1.Generation with `md`; the status of each, by name.
std::map<std::string, grpc::Status> CallEveryMethod(pb::Generation::Stub& stub,
                                                    const Metadata& md) {
  std::map<std::string, grpc::Status> out;
  out["Generate"] =
      Generate(stub, IdsRequest(PromptIds(4, 1), Greedy(), 3), absl::Seconds(10), md).status;
  out["Abort"] = Call(
      [&](grpc::ClientContext* c) {
        pb::AbortRequest req;
        req.set_request_id("x");
        pb::AbortResponse resp;
        return stub.Abort(c, req, &resp);
      },
      md);
  out["Tokenize"] = Call(
      [&](grpc::ClientContext* c) {
        pb::TokenizeRequest req;
        req.set_text("hello");
        pb::TokenizeResponse resp;
        return stub.Tokenize(c, req, &resp);
      },
      md);
  out["Detokenize"] = Call(
      [&](grpc::ClientContext* c) {
        pb::DetokenizeRequest req;
        req.add_token_ids(1);
        pb::DetokenizeResponse resp;
        return stub.Detokenize(c, req, &resp);
      },
      md);
  out["GetModelInfo"] = Call(
      [&](grpc::ClientContext* c) {
        pb::GetModelInfoRequest req;
        pb::ModelInfo resp;
        return stub.GetModelInfo(c, req, &resp);
      },
      md);
  return out;
}

std::string KeyInOtherCase(std::string key) {
  for (char& ch : key)
    ch = absl::ascii_isupper(ch) ? absl::ascii_tolower(ch) : absl::ascii_toupper(ch);
  return key;
}

TEST(ApiKeysTest, EveryMethodButHealthNeedsAValidKey) {
  ScratchDir scratch;
  auto worker = Worker::Start("both", {}, scratch.path(), "w");
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto router = Router::Start(
      {"--workers", (*worker)->address(), "--api-keys-file", WriteKeys(scratch.path())},
      scratch.path(), "router", 1);
  ASSERT_TRUE(router.ok()) << router.status();
  Router& r = **router;
  const std::vector<std::pair<std::string, Metadata>> refused = {
      {"no key", {}},
      {"a wrong key", Bearer("wrong-key-0123456789abcdef")},
      {"the key in another case", Bearer(KeyInOtherCase(kAlice))},
      {"not a bearer token", {{"authorization", std::string("Basic ") + kAlice}}},
      {"the key without a scheme", {{"authorization", kAlice}}}};
  for (const auto& [what, md] : refused) {
    for (const auto& [method, st] : CallEveryMethod(r.stub(), md)) {
      EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED)
          << what << ", " << method << ": " << Str(st);
      if (what != "no key" && what != "not a bearer token" && what != "the key without a scheme") {
        EXPECT_EQ(st.error_message(), "invalid API key") << what << ", " << method;
      }
    }
  }
  for (const auto& [method, st] : CallEveryMethod(r.stub(), Bearer(kAlice))) {
    // Abort of an unknown id is OK (aborted=false); everything else is served.
    EXPECT_TRUE(st.ok()) << method << ": " << Str(st) << r.Logs();
  }
  // The scheme is case-insensitive (RFC 7235).
  EXPECT_TRUE(CallEveryMethod(r.stub(), {{"authorization", std::string("bearer ") + kBob}})
                  .at("GetModelInfo")
                  .ok());
  auto health = r.Health("");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_GE(r.MetricSum("sambay_router_rejections_total", {{"reason", "unauthenticated"}}), 5);
  const std::string logs = r.Logs();
  EXPECT_FALSE(absl::StrContains(logs, kAlice) || absl::StrContains(logs, kBob) ||
               absl::StrContains(logs, "0123456789abcdef"))
      << "a key is in the log";
}

TEST(ApiKeysTest, AnotherOwnerCannotAbortARequest) {
  ScratchDir scratch;
  auto worker = Worker::Start("both", {}, scratch.path(), "w");
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto router = Router::Start({"--workers", (*worker)->address(), "--api-keys-file",
                               WriteKeys(scratch.path()), "--log-level", "debug"},
                              scratch.path(), "router", 1);
  ASSERT_TRUE(router.ok()) << router.status();
  Router& r = **router;
  Metadata alice = Bearer(kAlice);
  alice.emplace_back("x-request-id", "alice-request-1");
  Stream stream(r.stub(), IdsRequest(PromptIds(6, 3), Greedy(), 3000), absl::Seconds(60), alice);
  ASSERT_TRUE(WaitFor([&] { return stream.tokens() >= 5 || stream.done(); }, absl::Seconds(20)));
  ASSERT_FALSE(stream.done()) << stream.Wait().Describe();
  auto abort_as = [&](const char* key) {
    pb::AbortResponse resp;
    const grpc::Status st = Call(
        [&](grpc::ClientContext* c) {
          pb::AbortRequest req;
          req.set_request_id("alice-request-1");
          return r.stub().Abort(c, req, &resp);
        },
        Bearer(key));
    EXPECT_TRUE(st.ok()) << Str(st);
    return resp.aborted();
  };
  EXPECT_FALSE(abort_as(kBob));
  const size_t before = stream.tokens();
  ASSERT_TRUE(WaitFor([&] { return stream.tokens() > before + 5; }, absl::Seconds(10)))
      << "the stream stopped after bob's Abort";
  EXPECT_FALSE(stream.done());
  EXPECT_TRUE(abort_as(kAlice));
  const StreamResult& res = stream.Wait();
  EXPECT_EQ(res.finish, pb::FINISH_REASON_ABORT) << res.Describe();
  // The log names the owner, never the key.
  ASSERT_TRUE(WaitFor([&] { return absl::StrContains(r.Logs(), "\"owner\":\"key:alice\""); },
                      absl::Seconds(5)))
      << r.Logs();
  EXPECT_FALSE(absl::StrContains(r.Logs(), kAlice));
  EXPECT_FALSE(absl::StrContains(r.Logs(), kBob));
}

// The HTTP API: 401 with WWW-Authenticate and an OpenAI error without the key, with a wrong key
// and with the key in another case, on every route but the probes'.
TEST(ApiKeysTest, HttpApiAnswers401AndKeepsProbesOpen) {
  ScratchDir scratch;
  auto worker = Worker::Start("both", {}, scratch.path(), "w");
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto port = FreePort();
  ASSERT_TRUE(port.ok());
  auto router = Router::Start({"--workers", (*worker)->address(), "--api-keys-file",
                               WriteKeys(scratch.path()), "--http-port", absl::StrCat(*port)},
                              scratch.path(), "router", 1);
  ASSERT_TRUE(router.ok()) << router.status();
  auto exchange = [&](const std::string& method, const std::string& path, const std::string& auth,
                      const std::string& body = "") {
    std::string req =
        absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if (!auth.empty()) absl::StrAppend(&req, "Authorization: ", auth, "\r\n");
    if (!body.empty()) {
      absl::StrAppend(&req, "Content-Type: application/json\r\nContent-Length: ", body.size(),
                      "\r\n");
    }
    absl::StrAppend(&req, "\r\n", body);
    auto resp = HttpExchange("127.0.0.1", *port, req, absl::Seconds(10));
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? *resp : HttpResponse{};
  };
  const std::string chat =
      R"({"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":3})";
  for (const std::string& auth : {std::string(""), std::string("Bearer wrong-key-0123456789abc"),
                                  "Bearer " + KeyInOtherCase(kAlice)}) {
    for (const auto& [method, path, body] :
         std::vector<std::tuple<std::string, std::string, std::string>>{
             {"GET", "/v1/models", ""},
             {"POST", "/v1/chat/completions", chat},
             {"POST", "/tokenize", R"({"prompt":"hi"})"},
             {"GET", "/no/such/route", ""}}) {
      const HttpResponse resp = exchange(method, path, auth, body);
      EXPECT_EQ(resp.status, 401) << auth << " " << path << ": " << resp.body;
      EXPECT_TRUE(
          absl::StrContains(absl::AsciiStrToLower(resp.headers), "www-authenticate: bearer"))
          << resp.headers;
      EXPECT_TRUE(absl::StrContains(resp.body, "authentication_error")) << resp.body;
    }
  }
  EXPECT_EQ(exchange("GET", "/health", "").status, 200);
  EXPECT_EQ(exchange("GET", "/ready", "").status, 200);
  EXPECT_EQ(exchange("GET", "/v1/models", std::string("Bearer ") + kAlice).status, 200);
  const HttpResponse served =
      exchange("POST", "/v1/chat/completions", std::string("Bearer ") + kBob, chat);
  EXPECT_EQ(served.status, 200) << served.body;
  EXPECT_FALSE(absl::StrContains((*router)->Logs(), kAlice));
}

TEST(ApiKeysTest, FileParsing) {
  auto ok =
      ApiKeys::Parse("# comment\n\n  key-aaaaaaaaaaaaaaaa  owner.one \nkey-bbbbbbbbbbbbbbbb\n");
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_EQ(ok->size(), 2u);
  EXPECT_EQ((*ok)[0].name, "owner.one");
  EXPECT_TRUE(absl::StartsWith((*ok)[1].name, "key-") && (*ok)[1].name.size() == 12)
      << (*ok)[1].name;
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"", "no key"},
      {"# only a comment\n", "no key"},
      {"short\n", "line 1"},
      {"key-aaaaaaaaaaaaaaaa a b\n", "line 1: expected KEY or KEY NAME"},
      {"key-aaaaaaaaaaaaaaaa bad/name\n", "line 1: a name"},
      {"key-aaaaaaaaaaaaaaaa\nkey-aaaaaaaaaaaaaaaa x\n", "line 2: the key is listed twice"},
      {"key-aaaaaaaaaaaaaaa\xff\n", "line 1"}};
  for (const auto& [text, want] : bad) {
    auto r = ApiKeys::Parse(text);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_TRUE(absl::StrContains(r.status().message(), want)) << r.status();
    EXPECT_TRUE(absl::StartsWith(r.status().message(), "--api-keys-file: ")) << r.status();
    EXPECT_FALSE(absl::StrContains(r.status().message(), "aaaaaaaa")) << "the key is echoed";
  }
}

// Keys are reloaded when the file changes: a new key works, a removed one stops working.
TEST(ApiKeysTest, KeysFileReloads) {
  ScratchDir scratch;
  const std::string path = WriteKeys(scratch.path());
  auto keys = ApiKeys::Load(path, absl::Milliseconds(50));
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(*(*keys)->Authenticate(std::string("Bearer ") + kAlice), "alice");
  WriteFileAtomically(path, "carol-key-0123456789abcdef carol\n");
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ((*keys)->Authenticate(std::string("Bearer ") + kAlice).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(*(*keys)->Authenticate("Bearer carol-key-0123456789abcdef"), "carol");
  WriteFileAtomically(path, "garbage\n");  // does not parse: the keys loaded before stay
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(*(*keys)->Authenticate("Bearer carol-key-0123456789abcdef"), "carol");
}

}  // namespace
}  // namespace sambay::testing
