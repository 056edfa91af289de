// Robustness of the router's public service against hostile or careless callers:
//   * Abort reaches only the caller's own requests (a stranger's Abort is answered as for an
//     unknown id);
//   * size limits (stop_token_ids, Detokenize ids, Tokenize/Detokenize bytes, and gRPC's receive
//     cap that refuses huge messages before they are buffered in the router);
//   * Tokenize and Generate encode chat prompts alike (roles, errors);
//   * a string field that is not UTF-8 is INVALID_ARGUMENT naming the field;
//   * a large prompt is tokenized off the streaming threads.
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/byte_buffer.h>
#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/grpc_channel.h"
#include "common/limits.h"
#include "gtest/gtest.h"
#include "tests/router/router_harness.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SAMBAY_TEST_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(SAMBAY_TEST_ASAN)
#define SAMBAY_TEST_ASAN 1
#endif

namespace sambay::testing {
namespace {

namespace v1 = sambay::v1;

// A router with no live worker (Tokenize, Detokenize and Abort need none).
std::unique_ptr<Router> StartBareRouter(const ScratchDir& dir, std::vector<std::string> args = {}) {
  args.insert(args.begin(), {"--workers", "127.0.0.1:1"});
  auto r = Router::Start(args, dir.path());
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : nullptr;
}

grpc::ClientContext* Deadline(grpc::ClientContext* ctx, absl::Duration d = absl::Seconds(20)) {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + d));
  return ctx;
}

int PortOf(const std::string& address) { return std::stoi(address.substr(address.rfind(':') + 1)); }

// Runs tests/router/raw_grpc_call.js: one call with `body` sent as it is (bytes a gRPC client
// would not serialize); its JSON line, or "" when node is missing.
std::string RawGrpcCall(int port, const std::string& path, const std::string& body) {
  return RunNodeScript("raw_grpc_call.js",
                       {absl::StrCat(port), path, "x-test", "61", absl::BytesToHexString(body)});
}

// VmRSS of `pid` in bytes (-1 when unreadable).
int64_t RssBytes(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(f, line)) {
    if (absl::StartsWith(line, "VmRSS:")) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

v1::AbortResponse AbortOn(v1::Generation::Stub& stub, const std::string& id, grpc::Status* st) {
  grpc::ClientContext ctx;
  v1::AbortRequest req;
  req.set_request_id(id);
  v1::AbortResponse resp;
  *st = stub.Abort(Deadline(&ctx, absl::Seconds(5)), req, &resp);
  return resp;
}

// A stranger (another host: [::1] instead of 127.0.0.1) cannot abort a request by its id; it
// gets the answer of an unknown id. The caller itself can.
TEST(RouterRobustness, AbortReachesOnlyTheCallersRequests) {
  Cluster c;
  ASSERT_STARTED(c.Start(0, 0, 1, {"--host", "[::]"}));
  v1::GenerateRequest req = IdsRequest(PromptIds(10, 11), Greedy(), 4000);
  req.set_request_id("victim-1");
  Stream s(c.stub(), req, absl::Seconds(60));
  ASSERT_TRUE(WaitFor([&] { return s.tokens() >= 5 || s.done(); }, absl::Seconds(10)));
  ASSERT_FALSE(s.done()) << s.Wait().Describe();

  auto stranger = v1::Generation::NewStub(
      MakeChannel(absl::StrCat("[::1]:", PortOf(c.router().address())), RpcLimits()));
  grpc::Status st;
  v1::AbortResponse resp = AbortOn(*stranger, "victim-1", &st);
  ASSERT_TRUE(st.ok()) << Str(st) << "\n" << c.Logs();
  EXPECT_FALSE(resp.aborted());
  const v1::AbortResponse unknown = AbortOn(*stranger, "never-existed", &st);
  ASSERT_TRUE(st.ok()) << Str(st);
  EXPECT_EQ(resp.SerializeAsString(), unknown.SerializeAsString());
  // Still streaming.
  const size_t before = s.tokens();
  ASSERT_TRUE(WaitFor([&] { return s.tokens() >= before + 5 || s.done(); }, absl::Seconds(10)));
  ASSERT_FALSE(s.done()) << s.Wait().Describe();

  resp = AbortOn(c.stub(), "victim-1", &st);
  ASSERT_TRUE(st.ok()) << Str(st);
  EXPECT_TRUE(resp.aborted());
  const StreamResult& r = s.Wait();
  EXPECT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.finish, v1::FINISH_REASON_ABORT) << r.Describe();
}

TEST(RouterRobustness, StopTokenIdsAreCapped) {
  Cluster c;
  ASSERT_STARTED(c.Start(0, 0, 1));
  for (const size_t n : {kMaxStopTokenIds, kMaxStopTokenIds + 1}) {
    SCOPED_TRACE(absl::StrCat(n, " stop ids"));
    v1::GenerateRequest req = IdsRequest({1, 2, 3}, Greedy(), 4);
    for (size_t i = 0; i < n; ++i) req.mutable_stopping()->add_stop_token_ids(300 + i % 16);
    const StreamResult r = Generate(c.stub(), req, absl::Seconds(20));
    if (n <= kMaxStopTokenIds) {
      EXPECT_TRUE(r.status.ok()) << r.Describe();
    } else {
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << r.Describe();
      EXPECT_TRUE(absl::StartsWith(r.status.error_message(), "stopping.stop_token_ids:"))
          << r.Describe();
    }
  }
}

TEST(RouterRobustness, DetokenizeIdsAreCapped) {
  ScratchDir dir;
  auto router = StartBareRouter(dir);
  ASSERT_NE(router, nullptr);
  for (const size_t n : {kMaxDetokenizeIds, kMaxDetokenizeIds + 1}) {
    SCOPED_TRACE(absl::StrCat(n, " ids"));
    v1::DetokenizeRequest req;
    req.mutable_token_ids()->Resize(static_cast<int>(n), 'a');
    v1::DetokenizeResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status st = router->stub().Detokenize(Deadline(&ctx), req, &resp);
    if (n <= kMaxDetokenizeIds) {
      ASSERT_TRUE(st.ok()) << Str(st);
      EXPECT_EQ(resp.text(), std::string(n, 'a'));
    } else {
      EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Str(st);
      EXPECT_TRUE(absl::StartsWith(st.error_message(), "token_ids:")) << Str(st);
    }
  }
}

// --max-request-bytes bounds Tokenize and Detokenize too: at the limit OK, a little past it
// INVALID_ARGUMENT naming the field, far past it refused by gRPC (RESOURCE_EXHAUSTED).
TEST(RouterRobustness, TokenizeAndDetokenizeBytesAreCapped) {
  constexpr int kLimit = 65536;
  ScratchDir dir;
  auto router = StartBareRouter(dir, {"--max-request-bytes", absl::StrCat(kLimit)});
  ASSERT_NE(router, nullptr);
  // 1 tag byte + 3 length bytes + the text.
  for (const int len : {kLimit - 4, kLimit - 3, 5 * kLimit}) {
    SCOPED_TRACE(absl::StrCat("Tokenize, text of ", len, " bytes"));
    v1::TokenizeRequest req;
    req.set_text(std::string(len, 'a'));
    v1::TokenizeResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status st = router->stub().Tokenize(Deadline(&ctx), req, &resp);
    if (req.ByteSizeLong() <= kLimit) {
      ASSERT_EQ(req.ByteSizeLong(), static_cast<size_t>(kLimit));
      ASSERT_TRUE(st.ok()) << Str(st);
      EXPECT_EQ(resp.token_ids_size(), len);
    } else if (len < 2 * kLimit) {
      EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Str(st);
      EXPECT_TRUE(absl::StartsWith(st.error_message(), "text:")) << Str(st);
    } else {
      EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Str(st);
    }
  }
  // Ids below 128 are one byte each.
  for (const int n : {kLimit - 4, kLimit - 3}) {
    SCOPED_TRACE(absl::StrCat("Detokenize, ", n, " ids"));
    v1::DetokenizeRequest req;
    req.mutable_token_ids()->Resize(n, 'b');
    v1::DetokenizeResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status st = router->stub().Detokenize(Deadline(&ctx), req, &resp);
    if (req.ByteSizeLong() <= kLimit) {
      ASSERT_EQ(req.ByteSizeLong(), static_cast<size_t>(kLimit));
      ASSERT_TRUE(st.ok()) << Str(st);
      EXPECT_EQ(resp.text().size(), static_cast<size_t>(n));
    } else {
      EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Str(st);
      EXPECT_TRUE(absl::StartsWith(st.error_message(), "token_ids:")) << Str(st);
    }
  }
}

// 16 Generate requests of 60 MB at once: gRPC refuses each before it is buffered whole, so the
// router's memory stays flat (it once parsed each into a second copy before rejecting it).
TEST(RouterRobustness, HugeRequestsDoNotGrowTheRouter) {
  constexpr int kCalls = 16;
  constexpr size_t kBytes = 60u << 20;
  Cluster c;
  ASSERT_STARTED(c.Start(0, 0, 1));
  const pid_t pid = c.router().process().pid();
  const int64_t rss0 = RssBytes(pid);
  ASSERT_GT(rss0, 0);

  // One serialized request shared by every call (ByteBuffer copies share the slice).
  std::string body;
  {
    v1::GenerateRequest req;
    req.set_text(std::string(kBytes, 'a'));
    body = req.SerializeAsString();
  }
  grpc::Slice slice(body);
  body.clear();
  body.shrink_to_fit();
  const grpc::ByteBuffer request(&slice, 1);

  std::atomic<bool> sampling{true};
  std::atomic<int64_t> peak{rss0};
  std::thread sampler([&] {
    while (sampling.load()) {
      const int64_t rss = RssBytes(pid);
      if (rss > peak.load()) peak.store(rss);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });

  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(-1);
  auto channel =
      grpc::CreateCustomChannel(c.router().address(), grpc::InsecureChannelCredentials(), args);
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  struct Call {
    grpc::ClientContext ctx;
    grpc::ByteBuffer response;
    grpc::Status status;
    std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  };
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < kCalls; ++i) {
    auto call = std::make_unique<Call>();
    Deadline(&call->ctx, absl::Seconds(120));
    call->reader =
        stub.PrepareUnaryCall(&call->ctx, "/sambay.v1.Generation/Generate", request, &cq);
    call->reader->StartCall();
    call->reader->Finish(&call->response, &call->status, call.get());
    calls.push_back(std::move(call));
  }
  for (int i = 0; i < kCalls; ++i) {
    void* tag = nullptr;
    bool ok = false;
    ASSERT_TRUE(cq.Next(&tag, &ok));
  }
  sampling.store(false);
  sampler.join();
  for (const auto& call : calls) {
    EXPECT_EQ(call->status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Str(call->status);
  }
  const int64_t growth = peak.load() - rss0;
  std::cerr << "router RSS: " << rss0 / (1 << 20) << " MiB, peak growth " << growth / (1 << 20)
            << " MiB\n";
#ifdef SAMBAY_TEST_ASAN
  // ASan keeps freed memory in its quarantine and pads every allocation: RSS is not the
  // router's. The Release run checks the figure; this one checks only that nothing broke.
  constexpr int64_t kMaxGrowth = int64_t{1} << 40;
#else
  constexpr int64_t kMaxGrowth = 100 << 20;
#endif
  EXPECT_LT(growth, kMaxGrowth) << "the router's RSS grew by " << growth / (1 << 20) << " MiB";
  // It still serves.
  const StreamResult r = Generate(c.stub(), IdsRequest({1, 2, 3}, Greedy(), 4), absl::Seconds(20));
  EXPECT_TRUE(r.status.ok()) << r.Describe() << "\n" << c.Logs();
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
}

// Tokenize and Generate encode chat prompts with one function: they accept the same roles and
// refuse the same messages with the same error.
TEST(RouterRobustness, TokenizeAndGenerateAgreeOnChatRoles) {
  Cluster c;
  ASSERT_STARTED(c.Start(0, 0, 1));
  struct Case {
    std::vector<std::string> roles;
    bool ok;  // the tiny model's byte tokenizer has no <|tool|> token
  };
  const std::vector<Case> cases = {{{"system", "user"}, true},
                                   {{"user"}, true},
                                   {{"user", "assistant", "user"}, true},
                                   {{"user", "tool"}, false},
                                   {{"robot"}, false},
                                   {{"user", ""}, false},
                                   {{}, false}};
  for (const Case& cs : cases) {
    SCOPED_TRACE(absl::StrCat("roles: ", absl::StrJoin(cs.roles, ",")));
    v1::Chat chat;
    for (const std::string& role : cs.roles) {
      v1::ChatMessage* m = chat.add_messages();
      m->set_role(role);
      m->set_content("hi " + role);
    }
    v1::TokenizeRequest treq;
    *treq.mutable_chat() = chat;
    v1::TokenizeResponse tresp;
    grpc::ClientContext ctx;
    const grpc::Status tst = c.stub().Tokenize(Deadline(&ctx), treq, &tresp);
    v1::GenerateRequest greq = IdsRequest({1}, Greedy(), 1);
    *greq.mutable_chat() = chat;
    const StreamResult g = Generate(c.stub(), greq, absl::Seconds(20));
    EXPECT_EQ(tst.ok(), cs.ok) << Str(tst);
    EXPECT_EQ(g.status.error_code(), tst.error_code()) << Str(tst) << " vs " << g.Describe();
    EXPECT_EQ(g.status.error_message(), tst.error_message());
    if (tst.ok()) {
      EXPECT_EQ(g.usage.prompt_tokens(), static_cast<uint32_t>(tresp.token_ids_size()))
          << g.Describe();
    } else if (!cs.roles.empty()) {
      EXPECT_EQ(tst.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Str(tst);
      EXPECT_TRUE(absl::StartsWith(tst.error_message(), "chat.messages[")) << Str(tst);
      EXPECT_TRUE(absl::StrContains(tst.error_message(), "].role: ")) << Str(tst);
    } else {
      EXPECT_EQ(tst.error_message(), "chat.messages: must not be empty");
    }
  }
}

// A string field holding bytes that are not UTF-8 is INVALID_ARGUMENT naming the field (protobuf
// refuses to parse it; gRPC once answered INTERNAL "Unable to parse request").
TEST(RouterRobustness, InvalidUtf8IsInvalidArgumentNamingTheField) {
  Cluster c;
  ASSERT_STARTED(c.Start(0, 0, 1));
  const int port = PortOf(c.router().address());
  // ChatMessage{role "user", content 0xff}, in Chat.messages, in GenerateRequest.chat (field 4).
  const std::string message = std::string("\x0a\x04user\x12\x01\xff", 9);
  const std::string chat = std::string("\x0a\x09", 2) + message;
  struct Case {
    std::string method, body, field;
  };
  const std::vector<Case> cases = {
      {"Generate", std::string("\x12\x02\xff\x61", 4), "text"},
      {"Generate", std::string("\x22\x0b", 2) + chat, "chat.messages[0].content"},
      {"Generate", std::string("\x0a\x02\x61\xc0", 4), "request_id"},
      {"Tokenize", std::string("\x0a\x02\xff\x61", 4), "text"},
      {"Tokenize", std::string("\x12\x0b", 2) + chat, "chat.messages[0].content"},
      {"Abort", std::string("\x0a\x03\xed\xa0\x80", 5), "request_id"},  // a surrogate
  };
  for (const Case& cs : cases) {
    const std::string out = RawGrpcCall(port, "/sambay.v1.Generation/" + cs.method, cs.body);
    if (out.empty()) GTEST_SKIP() << "node is not installed (scripts/install-deps.sh installs it)";
    SCOPED_TRACE(absl::StrCat(cs.method, " ", absl::BytesToHexString(cs.body), ": ", out));
    EXPECT_TRUE(absl::StrContains(out, "\"grpc_status\":\"3\"")) << c.Logs();
    EXPECT_TRUE(
        absl::StrContains(out, absl::StrCat("\"grpc_message\":\"", cs.field, ": invalid UTF-8\"")));
  }
  // Valid UTF-8 passes, and the router still serves.
  const std::string out =
      RawGrpcCall(port, "/sambay.v1.Generation/Tokenize", std::string("\x0a\x03\xc3\xa9\x61", 5));
  EXPECT_TRUE(absl::StrContains(out, "\"grpc_status\":\"0\"")) << out;
  const StreamResult r = Generate(c.stub(), IdsRequest({1, 2, 3}, Greedy(), 4), absl::Seconds(20));
  EXPECT_TRUE(r.status.ok()) << r.Describe();
}

// While large prompts are tokenized, the streams of the same streaming thread (--io-threads 1)
// keep getting their tokens.
//
// Note: the tiny model's byte tokenizer encodes 4 MiB in a few tens of milliseconds, so with it
// this test can hardly fail even when tokenization runs on the streaming thread; it fails only on
// a tokenizer as slow as a real BPE one (or a slow machine). gRPC's own parse of each 4 MiB
// message still runs on the streaming thread, fix or not.
TEST(RouterRobustness, LargePromptsDoNotStallOtherStreams) {
  constexpr int kLarge = 4;
  Cluster c;
  ASSERT_STARTED(c.Start(0, 0, 1, {"--io-threads", "1", "--max-request-bytes", "16777216"}));
  Stream small(c.stub(), IdsRequest(PromptIds(8, 3), Greedy(), 3000), absl::Seconds(60));
  ASSERT_TRUE(WaitFor([&] { return small.tokens() >= 5 || small.done(); }, absl::Seconds(10)));
  ASSERT_FALSE(small.done()) << small.Wait().Describe();

  std::vector<std::unique_ptr<Stream>> large;
  for (int i = 0; i < kLarge; ++i) {
    large.push_back(std::make_unique<Stream>(
        c.stub(), TextRequest(std::string(4u << 20, static_cast<char>('a' + i)), Greedy(), 1),
        absl::Seconds(60)));
  }
  // The longest pause of the small stream while the large prompts are handled.
  absl::Duration longest;
  size_t last = small.tokens();
  absl::Time last_at = absl::Now();
  while (!small.done() &&
         !std::all_of(large.begin(), large.end(), [](const auto& s) { return s->done(); })) {
    const size_t n = small.tokens();
    const absl::Time now = absl::Now();
    if (n != last) {
      last = n;
      last_at = now;
    }
    longest = std::max(longest, now - last_at);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  for (auto& s : large) {
    const StreamResult& r = s->Wait();
    // The prompt (4 Mi tokens) exceeds the context: refused once tokenized.
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << r.Describe();
    EXPECT_TRUE(absl::StartsWith(r.status.error_message(), "prompt:")) << r.Describe();
  }
  EXPECT_LT(longest, absl::Milliseconds(500)) << c.Logs();
  small.Cancel();
}

}  // namespace
}  // namespace sambay::testing
