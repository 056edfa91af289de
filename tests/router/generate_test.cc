// The public API end to end: sambay-router in front of real workers returns exactly what
// `sambay-run generate` gives for the same request, on every worker layout (prefill + decode
// workers with the state handoff, one role-both worker in place, two role-both workers), for
// 16 concurrent streams; plus stop strings, request ids, Tokenize/Detokenize and GetModelInfo.
//
// Each test starts its own cluster (gtest_discover_tests runs every test in its own process).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/router/router_harness.h"

namespace sambay::testing {
namespace {

namespace v1 = sambay::v1;

// 16 requests: 12 token-id prompts of different lengths (greedy, seeded, top-k, penalties; some
// stop at EOS, some ignore it) and 4 text prompts.
std::vector<v1::GenerateRequest> SixteenRequests() {
  std::vector<v1::GenerateRequest> r;
  const size_t lengths[] = {1, 3, 8, 15, 16, 17, 33, 64, 100, 257, 400, 512};
  for (int i = 0; i < 12; ++i) {
    Sampling s;
    switch (i % 4) {
      case 0:
        s = Greedy();
        break;
      case 1:
        s = Seeded(0.8f, 0.9f, 7 + i);
        break;
      case 2:
        s = Seeded(1.0f, 1.0f, 100 + i, /*top_k=*/20);
        break;
      case 3:  // penalties: all three, or the frequency penalty alone (i == 7)
        s = Seeded(0.7f, 0.95f, 1000 + i);
        if (i == 7) {
          s.frequency_penalty = 0.8f;
        } else {
          s.repetition_penalty = 1.3f;
          s.presence_penalty = 0.5f;
          s.frequency_penalty = i == 3 ? 0.3f : -0.4f;
        }
        break;
    }
    const uint32_t max_new = 12 + 9 * i;  // 12 .. 111
    const bool ignore_eos = i % 3 != 2;   // every third stops at EOS
    r.push_back(IdsRequest(PromptIds(lengths[i], 40 + i), s, max_new, ignore_eos));
  }
  r.push_back(TextRequest("Hello, world!", Greedy(), 48, /*ignore_eos=*/false));
  r.push_back(TextRequest("The quick brown fox jumps over the lazy dog.", Seeded(0.8f, 0.9f, 7), 64,
                          /*ignore_eos=*/true));
  r.push_back(TextRequest("Grüße aus Zürich — ½ €", Greedy(), 40, /*ignore_eos=*/true));
  r.push_back(TextRequest("x", Seeded(0.9f, 0.8f, 12345), 80, /*ignore_eos=*/false));
  return r;
}

bool IsEos(uint32_t id) { return std::count(kTinyEosIds.begin(), kTinyEosIds.end(), id) > 0; }

// Runs the 16 requests concurrently and compares every stream with sambay-run. `check_workers`
// checks usage.workers (and transfer bytes) for the layout.
void ExpectMatchesReference(
    Cluster& c,
    const std::function<void(const v1::Usage&, const std::string& what)>& check_workers) {
  const std::vector<v1::GenerateRequest> requests = SixteenRequests();
  const std::vector<Reference> refs = References(requests, c.dir());
  const std::vector<StreamResult> results = GenerateAll(c.stub(), requests, absl::Seconds(60));
  for (size_t i = 0; i < requests.size(); ++i) {
    const v1::GenerateRequest& q = requests[i];
    const StreamResult& r = results[i];
    const std::string what = absl::StrCat("request ", i, " {", q.ShortDebugString(), "}");
    ASSERT_TRUE(refs[i].status.ok()) << what << ": " << refs[i].status;
    ASSERT_TRUE(r.status.ok()) << what << ": " << r.Describe() << "\n" << c.Logs();
    EXPECT_TRUE(r.protocol_error.empty()) << what << ": " << r.Describe();
    const uint32_t max_new = q.stopping().max_new_tokens();
    if (q.prompt_case() == v1::GenerateRequest::kTokenIds) {
      EXPECT_EQ(r.ids, refs[i].ids) << what << ": " << r.Describe();
      EXPECT_EQ(r.usage.prompt_tokens(), static_cast<uint32_t>(q.token_ids().ids_size())) << what;
    } else {
      EXPECT_EQ(r.text, refs[i].text) << what << ": " << r.Describe();
      EXPECT_EQ(r.usage.prompt_tokens(), q.text().size()) << what;  // byte tokenizer
    }
    ASSERT_FALSE(r.ids.empty()) << what;
    EXPECT_LE(r.ids.size(), max_new) << what;
    if (!q.stopping().ignore_eos() && IsEos(r.ids.back())) {
      EXPECT_EQ(r.finish, v1::FINISH_REASON_STOP) << what << ": " << r.Describe();
    } else {
      EXPECT_EQ(r.ids.size(), max_new) << what << ": " << r.Describe();
      EXPECT_EQ(r.finish, v1::FINISH_REASON_LENGTH) << what << ": " << r.Describe();
    }
    if (q.stopping().ignore_eos()) {
      // Nothing before the last token may be an EOS the router should have stopped at.
    } else {
      for (size_t k = 0; k + 1 < r.ids.size(); ++k) EXPECT_FALSE(IsEos(r.ids[k])) << what;
    }
    EXPECT_EQ(r.usage.completion_tokens(), r.ids.size()) << what;
    EXPECT_EQ(r.usage.migrations(), 0u) << what;
    EXPECT_GT(r.usage.time_to_first_token_seconds(), 0) << what;
    EXPECT_FALSE(r.request_id.empty()) << what;
    check_workers(r.usage, what);
  }
  // Every worker is idle again, and the router counted the streams.
  EXPECT_TRUE(c.WaitWorkersIdle().ok()) << c.WaitWorkersIdle();
  EXPECT_EQ(c.router().WaitMetricSum("sambay_router_requests_total", {},
                                     [&](double v) { return v == requests.size(); }),
            requests.size());
  EXPECT_EQ(c.router().WaitMetricSum("sambay_router_running_requests", {},
                                     [](double v) { return v == 0; }),
            0);
}

TEST(RouterGenerate, PrefillAndDecodeWorkersMatchSambayRun) {
  Cluster c;
  {
    const absl::Status started = c.Start(1, 1, 0);
    ASSERT_TRUE(started.ok()) << started << "\n" << c.Logs();
  }
  const std::string p = c.prefill()[0]->address(), d = c.decode()[0]->address();
  ExpectMatchesReference(c, [&](const v1::Usage& u, const std::string& what) {
    ASSERT_EQ(u.workers_size(), 2) << what << ": " << u.ShortDebugString();
    EXPECT_EQ(u.workers(0), p) << what;
    EXPECT_EQ(u.workers(1), d) << what;
    // The state moved unless the prefill's first token ended the request.
    if (u.completion_tokens() > 1) {
      EXPECT_GT(u.transfer_bytes(), 0u) << what;
    }
    EXPECT_GT(u.prefill_seconds(), 0) << what;
  });
}

TEST(RouterGenerate, OneRoleBothWorkerInPlaceMatchesSambayRun) {
  Cluster c;
  {
    const absl::Status started = c.Start(0, 0, 1);
    ASSERT_TRUE(started.ok()) << started << "\n" << c.Logs();
  }
  const std::string b = c.both()[0]->address();
  ExpectMatchesReference(c, [&](const v1::Usage& u, const std::string& what) {
    ASSERT_EQ(u.workers_size(), 1) << what << ": " << u.ShortDebugString();
    EXPECT_EQ(u.workers(0), b) << what;
    EXPECT_EQ(u.transfer_bytes(), 0u) << what;
  });
}

TEST(RouterGenerate, TwoRoleBothWorkersMatchSambayRun) {
  Cluster c;
  {
    const absl::Status started = c.Start(0, 0, 2);
    ASSERT_TRUE(started.ok()) << started << "\n" << c.Logs();
  }
  const std::set<std::string> both = {c.both()[0]->address(), c.both()[1]->address()};
  std::set<std::string> used;
  ExpectMatchesReference(c, [&](const v1::Usage& u, const std::string& what) {
    ASSERT_GE(u.workers_size(), 1) << what;
    ASSERT_LE(u.workers_size(), 2) << what;
    for (const auto& w : u.workers()) {
      EXPECT_TRUE(both.count(w)) << what << ": " << w;
      used.insert(w);
    }
    if (u.workers_size() == 1) {
      EXPECT_EQ(u.transfer_bytes(), 0u) << what;
    }
  });
  // 16 concurrent streams are spread over both workers.
  EXPECT_EQ(used.size(), 2u);
}

// A stop string taken from the output of the same request without it: the text ends just
// before its first occurrence, finish_reason STOP, and the ids are a prefix of the full run.
TEST(RouterGenerate, StopStringEndsTheTextBeforeIt) {
  Cluster c;
  {
    const absl::Status started = c.Start(1, 1, 0);
    ASSERT_TRUE(started.ok()) << started << "\n" << c.Logs();
  }
  for (const Sampling& s : {Greedy(), Seeded(0.8f, 0.9f, 7)}) {
    v1::GenerateRequest req = TextRequest("Once upon a time", s, 120, /*ignore_eos=*/true);
    const StreamResult full = Generate(c.stub(), req, absl::Seconds(30));
    ASSERT_TRUE(full.status.ok()) << full.Describe();
    ASSERT_EQ(full.ids.size(), 120u);
    // Two whole UTF-8 characters from the middle of the text.
    const std::string& t = full.text;
    size_t start = t.size() / 2;
    while (start < t.size() && (static_cast<unsigned char>(t[start]) & 0xC0) == 0x80) ++start;
    size_t end = start;
    for (int chars = 0; chars < 2 && end < t.size(); ++chars) {
      ++end;
      while (end < t.size() && (static_cast<unsigned char>(t[end]) & 0xC0) == 0x80) ++end;
    }
    ASSERT_LT(start, end) << "text too short: \"" << t << "\"";
    const std::string stop = t.substr(start, end - start);
    const size_t at = t.find(stop);
    ASSERT_NE(at, std::string::npos);

    req.mutable_stopping()->add_stop_strings("a string that never appears \x01\x02\x03");
    req.mutable_stopping()->add_stop_strings(stop);
    const StreamResult r = Generate(c.stub(), req, absl::Seconds(30));
    ASSERT_TRUE(r.status.ok()) << r.Describe();
    EXPECT_TRUE(r.protocol_error.empty()) << r.Describe();
    EXPECT_EQ(r.finish, v1::FINISH_REASON_STOP) << r.Describe();
    EXPECT_EQ(r.text, t.substr(0, at)) << "stop string \"" << stop << "\"";
    ASSERT_LT(r.ids.size(), full.ids.size());
    EXPECT_TRUE(std::equal(r.ids.begin(), r.ids.end(), full.ids.begin())) << r.Describe();
    EXPECT_EQ(r.usage.completion_tokens(), r.ids.size());
  }
  // The decode worker released the sequence when the router stopped at the stop string.
  EXPECT_TRUE(c.WaitWorkersIdle().ok()) << c.WaitWorkersIdle();
  EXPECT_EQ(c.router().MetricSum("sambay_router_requests_total", {{"finish_reason", "stop"}}), 2);
}

// stop_token_ids end the stream after the id, like sambay-run --stop-ids.
TEST(RouterGenerate, StopTokenIds) {
  Cluster c;
  {
    const absl::Status started = c.Start(1, 1, 0);
    ASSERT_TRUE(started.ok()) << started << "\n" << c.Logs();
  }
  v1::GenerateRequest req = IdsRequest(PromptIds(10, 5), Greedy(), 80, /*ignore_eos=*/true);
  const StreamResult full = Generate(c.stub(), req, absl::Seconds(30));
  ASSERT_TRUE(full.status.ok()) << full.Describe();
  ASSERT_EQ(full.ids.size(), 80u);
  const uint32_t stop_id = full.ids[40];
  req.mutable_stopping()->add_stop_token_ids(stop_id);
  const StreamResult r = Generate(c.stub(), req, absl::Seconds(30));
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  auto ref = ReferenceIds(req, c.dir());
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(r.ids, *ref);
  EXPECT_EQ(r.ids.back(), stop_id);
  EXPECT_EQ(r.finish, v1::FINISH_REASON_STOP);
}

// The response's request_id: the request's own, else the x-request-id metadata, else a
// generated one.
TEST(RouterGenerate, RequestIds) {
  Cluster c;
  {
    const absl::Status started = c.Start(1, 1, 0);
    ASSERT_TRUE(started.ok()) << started << "\n" << c.Logs();
  }
  v1::GenerateRequest req = IdsRequest({3, 14, 15}, Greedy(), 4);

  StreamResult r = Generate(c.stub(), req, absl::Seconds(20), {{"x-request-id", "trace-abc-123"}});
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.request_id, "trace-abc-123");

  req.set_request_id("my-own-id");
  r = Generate(c.stub(), req, absl::Seconds(20), {{"x-request-id", "trace-ignored"}});
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.request_id, "my-own-id");

  req.clear_request_id();
  r = Generate(c.stub(), req, absl::Seconds(20));
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_FALSE(r.request_id.empty());
  StreamResult r2 = Generate(c.stub(), req, absl::Seconds(20));
  EXPECT_NE(r.request_id, r2.request_id);
  // A request the router rejects logs the id it would have used.
  v1::GenerateRequest bad = req;
  bad.mutable_sampling()->set_top_k(-1);
  r = Generate(c.stub(), bad, absl::Seconds(20), {{"x-request-id", "trace-rejected-7"}});
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << r.Describe();
  EXPECT_TRUE(WaitFor([&] { return absl::StrContains(c.router().Logs(), "trace-rejected-7"); },
                      absl::Seconds(2)))
      << c.router().Logs();
}

// Runs tests/router/raw_grpc_call.js (Node's http2: a client that sends header values gRPC
// clients refuse) against the router; its JSON line, or "" when node is missing.
std::string RawGrpcCall(int port, const std::string& path, const std::string& header,
                        const std::string& value, const std::string& body) {
  return RunNodeScript("raw_grpc_call.js",
                       {absl::StrCat(port), path, header, absl::BytesToHexString(value),
                        absl::BytesToHexString(body)});
}

// An x-request-id that gRPC accepts inbound but refuses to send (TAB, bytes >= 0x80) once made
// the router abort when it copied the header into the worker calls, losing every stream. Now the
// router replaces it with a generated id: the call succeeds and the router keeps serving.
TEST(RouterGenerate, HeaderIdsGrpcCannotSendAreReplaced) {
  Cluster c;
  {
    const absl::Status started = c.Start(1, 1, 0);
    ASSERT_TRUE(started.ok()) << started << "\n" << c.Logs();
  }
  const v1::GenerateRequest req = IdsRequest({3, 14, 15}, Greedy(), 4);
  const std::string body = req.SerializeAsString();
  const std::string port(c.router().address().substr(c.router().address().rfind(':') + 1));
  for (const std::string& value : {std::string("trace\tid"), std::string("caf\xe9"),
                                   std::string("\x80\xff"), std::string(200, 'x')}) {
    const std::string out =
        RawGrpcCall(std::stoi(port), "/sambay.v1.Generation/Generate", "x-request-id", value, body);
    if (out.empty()) GTEST_SKIP() << "node is not installed (scripts/install-deps.sh installs it)";
    SCOPED_TRACE(absl::StrCat("x-request-id ", absl::CHexEscape(value), ": ", out));
    EXPECT_TRUE(absl::StrContains(out, "\"grpc_status\":\"0\"")) << c.Logs();
    EXPECT_GE(std::count(out.begin(), out.end(), '{'), 1);
    // The router still serves: a normal stream succeeds.
    const StreamResult r = Generate(c.stub(), req, absl::Seconds(20));
    ASSERT_TRUE(r.status.ok()) << r.Describe() << "\n" << c.Logs();
    EXPECT_EQ(r.ids.size(), 4u);
  }
}

TEST(RouterGenerate, TokenizeDetokenizeRoundTrip) {
  Cluster c;
  {
    const absl::Status started = c.Start(1, 1, 0);
    ASSERT_TRUE(started.ok()) << started << "\n" << c.Logs();
  }
  const std::string text = "Hello, Grüße — 日本語 ✓\n\ttabs";
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::TokenizeRequest treq;
  treq.set_text(text);
  v1::TokenizeResponse tresp;
  grpc::Status st = c.stub().Tokenize(&ctx, treq, &tresp);
  ASSERT_TRUE(st.ok()) << Str(st);
  // The byte tokenizer: one id per byte.
  ASSERT_EQ(static_cast<size_t>(tresp.token_ids_size()), text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    EXPECT_EQ(tresp.token_ids(i), static_cast<unsigned char>(text[i])) << i;
  }
  grpc::ClientContext ctx2;
  ctx2.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::DetokenizeRequest dreq;
  *dreq.mutable_token_ids() = tresp.token_ids();
  v1::DetokenizeResponse dresp;
  st = c.stub().Detokenize(&ctx2, dreq, &dresp);
  ASSERT_TRUE(st.ok()) << Str(st);
  EXPECT_EQ(dresp.text(), text);

  // A generated stream's ids detokenize to its text. The stream gives no text for special
  // tokens (as sambay-run); Detokenize may spell them out, so they are left out here.
  const StreamResult r =
      Generate(c.stub(), TextRequest("abc", Seeded(0.8f, 0.9f, 3), 50, true), absl::Seconds(20));
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  grpc::ClientContext ctx3;
  ctx3.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::DetokenizeRequest dreq2;
  for (uint32_t id : r.ids) {
    if (id < 256 || id > 260) dreq2.add_token_ids(id);  // 256..260: added_tokens.json
  }
  st = c.stub().Detokenize(&ctx3, dreq2, &dresp);
  ASSERT_TRUE(st.ok()) << Str(st);
  EXPECT_EQ(dresp.text(), r.text);

  // An id outside the vocabulary is named.
  grpc::ClientContext ctx4;
  ctx4.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::DetokenizeRequest bad;
  bad.add_token_ids(65);
  bad.add_token_ids(kTinyVocab);
  st = c.stub().Detokenize(&ctx4, bad, &dresp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Str(st);
  EXPECT_TRUE(absl::StartsWith(st.error_message(), "token_ids[1]")) << Str(st);

  // Tokenize with nothing set.
  grpc::ClientContext ctx5;
  ctx5.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  st = c.stub().Tokenize(&ctx5, v1::TokenizeRequest(), &tresp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Str(st);
}

TEST(RouterGenerate, GetModelInfo) {
  Cluster c;
  {
    const absl::Status started = c.Start(1, 1, 0, {"--max-new-tokens-limit", "1000"});
    ASSERT_TRUE(started.ok()) << started << "\n" << c.Logs();
  }
  auto winfo = c.decode()[0]->GetInfo();
  ASSERT_TRUE(winfo.ok()) << winfo.status();
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::ModelInfo info;
  grpc::Status st = c.stub().GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
  ASSERT_TRUE(st.ok()) << Str(st);
  EXPECT_EQ(info.model_type(), "phi4flash");
  EXPECT_EQ(info.fingerprint(), winfo->fingerprint());
  EXPECT_FALSE(info.fingerprint().empty());
  EXPECT_EQ(info.vocab_size(), kTinyVocab);
  EXPECT_EQ(info.max_context_tokens(), kTinyMaxContext);
  EXPECT_EQ(std::set<uint32_t>(info.eos_token_ids().begin(), info.eos_token_ids().end()),
            std::set<uint32_t>(kTinyEosIds.begin(), kTinyEosIds.end()));
  EXPECT_FALSE(info.tokenizer().empty());  // "byte-level"
  EXPECT_EQ(info.max_new_tokens_limit(), 1000u);

  // --max-context lowers the advertised context.
  ASSERT_TRUE(c.StartRouter({"--prefill-workers", c.prefill()[0]->address(), "--decode-workers",
                             c.decode()[0]->address(), "--max-context", "64"})
                  .ok())
      << c.Logs();
  grpc::ClientContext ctx2;
  ctx2.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  st = c.stub().GetModelInfo(&ctx2, v1::GetModelInfoRequest(), &info);
  ASSERT_TRUE(st.ok()) << Str(st);
  EXPECT_EQ(info.max_context_tokens(), 64u);
  EXPECT_EQ(info.max_new_tokens_limit(), 32768u);
}

// Workers found through a DNS name (--workers-dns localhost:PORT, roles from GetInfo).
TEST(RouterGenerate, WorkersFromDns) {
  ScratchDir dir;
  auto both = Worker::Start("both", {}, dir.path(), "both0");
  ASSERT_TRUE(both.ok()) << both.status();
  const std::string address = (*both)->address();
  const std::string port = address.substr(address.rfind(':') + 1);
  // localhost may also resolve to ::1, where nothing listens: only one worker comes up.
  auto router = Router::Start({"--workers-dns", "localhost:" + port}, dir.path(), "router",
                              /*workers_up=*/1);
  ASSERT_TRUE(router.ok()) << router.status();
  const v1::GenerateRequest req = IdsRequest(PromptIds(30, 8), Seeded(0.8f, 0.9f, 7), 50);
  const StreamResult r = Generate((*router)->stub(), req);
  ASSERT_TRUE(r.status.ok()) << r.Describe() << "\n" << (*router)->Logs();
  auto ref = ReferenceIds(req, dir.path());
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(r.ids, *ref);
  ASSERT_EQ(r.usage.workers_size(), 1);
  EXPECT_EQ(r.usage.workers(0), address);
}

// Logprobs come with every token when asked for, with top alternatives most likely first.
TEST(RouterGenerate, Logprobs) {
  Cluster c;
  {
    const absl::Status started = c.Start(1, 1, 0);
    ASSERT_TRUE(started.ok()) << started << "\n" << c.Logs();
  }
  v1::GenerateRequest req = IdsRequest(PromptIds(12, 9), Greedy(), 20);
  req.set_return_logprobs(true);
  req.set_top_logprobs(5);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
  auto reader = c.stub().Generate(&ctx, req);
  v1::GenerateResponse msg;
  size_t tokens = 0;
  while (reader->Read(&msg)) {
    ASSERT_EQ(msg.logprobs_size(), msg.token_ids_size()) << msg.ShortDebugString();
    for (int i = 0; i < msg.token_ids_size(); ++i) {
      const v1::PositionLogprobs& lp = msg.logprobs(i);
      EXPECT_EQ(lp.token().token_id(), msg.token_ids(i));
      EXPECT_LE(lp.token().logprob(), 0.0f);
      ASSERT_EQ(lp.top_size(), 5);
      for (int k = 1; k < lp.top_size(); ++k) {
        EXPECT_GE(lp.top(k - 1).logprob(), lp.top(k).logprob());
      }
      // Greedy: the chosen token is the most likely one.
      EXPECT_EQ(lp.top(0).token_id(), msg.token_ids(i));
      ++tokens;
    }
  }
  grpc::Status st = reader->Finish();
  ASSERT_TRUE(st.ok()) << Str(st);
  EXPECT_EQ(tokens, 20u);
}

}  // namespace
}  // namespace sambay::testing
