// Admission and validation at the router: the bounded queue (--max-concurrent, --max-queue)
// rejects the overflow of a burst with RESOURCE_EXHAUSTED at once while the admitted requests
// complete; every kind of invalid request gets INVALID_ARGUMENT naming the field, reaches no
// worker, and the router keeps serving.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/router/router_harness.h"
#include "tests/worker/http_get.h"

namespace sambay::testing {
namespace {

namespace v1 = sambay::v1;

// A burst of 3 x (C + Q) long streams against --max-concurrent C --max-queue Q: C run, Q wait,
// the other 2 x (C + Q) are rejected within a second; every admitted stream completes.
TEST(RouterAdmission, QueueFullRejectsTheOverflowAtOnce) {
  constexpr int kConcurrent = 2, kQueue = 4, kBurst = 3 * (kConcurrent + kQueue);
  Cluster c;
  ASSERT_STARTED(c.Start(
      1, 1, 0,
      {"--max-concurrent", absl::StrCat(kConcurrent), "--max-queue", absl::StrCat(kQueue)}));
  // Long enough that no admitted stream ends before the whole burst has arrived.
  std::vector<std::unique_ptr<Stream>> streams;
  for (int i = 0; i < kBurst; ++i) {
    streams.push_back(std::make_unique<Stream>(
        c.stub(), IdsRequest(PromptIds(8 + i, 300 + i), Greedy(), 1200), absl::Seconds(60)));
  }
  // While the first ones run: C running and Q waiting, as the gauges say.
  const double running = c.router().WaitMetricSum("sambay_router_running_requests", {},
                                                  [](double v) { return v == kConcurrent; });
  const double waiting = c.router().WaitMetricSum("sambay_router_waiting_requests", {},
                                                  [](double v) { return v == kQueue; });
  int rejected = 0, completed = 0;
  for (auto& s : streams) {
    const StreamResult& r = s->Wait();
    if (r.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++rejected;
      EXPECT_LT(r.ended - r.started, absl::Seconds(1)) << r.Describe();
      EXPECT_TRUE(r.ids.empty()) << r.Describe();
    } else {
      ASSERT_TRUE(r.status.ok()) << r.Describe() << "\n" << c.Logs();
      EXPECT_EQ(r.finish, v1::FINISH_REASON_LENGTH) << r.Describe();
      EXPECT_EQ(r.ids.size(), 1200u) << r.Describe();
      ++completed;
    }
  }
  EXPECT_EQ(running, kConcurrent);
  EXPECT_EQ(waiting, kQueue);
  EXPECT_EQ(rejected, kBurst - kConcurrent - kQueue);
  EXPECT_EQ(completed, kConcurrent + kQueue);
  EXPECT_EQ(c.router().MetricSum("sambay_router_rejections_total", {{"reason", "queue_full"}}),
            rejected);
  EXPECT_EQ(c.router().WaitMetricSum("sambay_router_running_requests", {},
                                     [](double v) { return v == 0; }),
            0);
  EXPECT_EQ(c.router().MetricSum("sambay_router_waiting_requests"), 0);
  // The queue drains completely: the router serves again.
  const StreamResult r = Generate(c.stub(), IdsRequest({1, 2, 3}, Greedy(), 8));
  EXPECT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_TRUE(c.WaitWorkersIdle().ok()) << c.WaitWorkersIdle();
}

// A queued request whose client gives up leaves the queue (and is not served later).
TEST(RouterAdmission, CancelWhileQueued) {
  Cluster c;
  ASSERT_STARTED(c.Start(1, 1, 0, {"--max-concurrent", "1", "--max-queue", "2"}));
  Stream running(c.stub(), IdsRequest(PromptIds(8, 1), Greedy(), 4000), absl::Seconds(60));
  ASSERT_TRUE(WaitFor([&] { return running.tokens() > 0; }, absl::Seconds(10)));
  Stream queued(c.stub(), IdsRequest(PromptIds(8, 2), Greedy(), 100), absl::Milliseconds(300));
  EXPECT_EQ(c.router().WaitMetricSum("sambay_router_waiting_requests", {},
                                     [](double v) { return v == 1; }),
            1);
  const StreamResult& q = queued.Wait();
  EXPECT_EQ(q.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << q.Describe();
  EXPECT_TRUE(q.ids.empty());
  EXPECT_EQ(c.router().WaitMetricSum("sambay_router_waiting_requests", {},
                                     [](double v) { return v == 0; }),
            0);
  EXPECT_FALSE(running.done()) << "the running stream ended before the queued one timed out";
  running.Cancel();
  const StreamResult& r = running.Wait();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED) << r.Describe();
  EXPECT_TRUE(c.WaitWorkersIdle().ok()) << c.WaitWorkersIdle();
  EXPECT_EQ(c.router().WaitMetricSum("sambay_router_running_requests", {},
                                     [](double v) { return v == 0; }),
            0);
  // The queue slot is free again: a new request is served.
  const StreamResult again = Generate(c.stub(), IdsRequest({1, 2, 3}, Greedy(), 8));
  EXPECT_TRUE(again.status.ok()) << again.Describe();
}

struct BadCase {
  std::string name;
  v1::GenerateRequest request;
  std::string field;  // the error message must start with this
};

std::vector<BadCase> BadCases() {
  // The router runs with --max-context 64 --max-new-tokens-limit 32 --max-request-bytes 4096.
  const v1::GenerateRequest ok = IdsRequest({3, 14, 15}, Greedy(), 8);
  std::vector<BadCase> cases;
  auto add = [&](const std::string& name, const std::string& field,
                 const std::function<void(v1::GenerateRequest&)>& edit) {
    v1::GenerateRequest r = ok;
    edit(r);
    cases.push_back({name, r, field});
  };
  add("empty text", "text", [](auto& r) { r.set_text(""); });
  add("empty token_ids", "token_ids", [](auto& r) { r.mutable_token_ids()->clear_ids(); });
  add("no prompt", "prompt", [](auto& r) { r.clear_prompt(); });
  add("id out of vocabulary", "token_ids.ids[1]",
      [](auto& r) { r.mutable_token_ids()->set_ids(1, kTinyVocab); });
  add("prompt fills the context", "prompt", [](auto& r) {
    r.mutable_token_ids()->clear_ids();
    for (uint32_t id : PromptIds(64, 3)) r.mutable_token_ids()->add_ids(id);
    r.mutable_stopping()->set_max_new_tokens(0);
  });
  add("text prompt over the context", "prompt", [](auto& r) { r.set_text(std::string(100, 'a')); });
  add("NaN temperature", "sampling.temperature",
      [](auto& r) { r.mutable_sampling()->set_temperature(std::nanf("")); });
  add("negative temperature", "sampling.temperature",
      [](auto& r) { r.mutable_sampling()->set_temperature(-0.5f); });
  add("infinite temperature", "sampling.temperature",
      [](auto& r) { r.mutable_sampling()->set_temperature(INFINITY); });
  add("top_p 0", "sampling.top_p", [](auto& r) { r.mutable_sampling()->set_top_p(0.0f); });
  add("top_p 1.5", "sampling.top_p", [](auto& r) { r.mutable_sampling()->set_top_p(1.5f); });
  add("top_k -1", "sampling.top_k", [](auto& r) { r.mutable_sampling()->set_top_k(-1); });
  add("min_p 1.5", "sampling.min_p", [](auto& r) { r.mutable_sampling()->set_min_p(1.5f); });
  add("repetition_penalty 0", "sampling.repetition_penalty",
      [](auto& r) { r.mutable_sampling()->set_repetition_penalty(0.0f); });
  add("presence_penalty inf", "sampling.presence_penalty",
      [](auto& r) { r.mutable_sampling()->set_presence_penalty(INFINITY); });
  add("frequency_penalty NaN", "sampling.frequency_penalty",
      [](auto& r) { r.mutable_sampling()->set_frequency_penalty(std::nanf("")); });
  add("max_new_tokens over the limit", "stopping.max_new_tokens",
      [](auto& r) { r.mutable_stopping()->set_max_new_tokens(33); });
  add("prompt + max_new_tokens over the context", "stopping.max_new_tokens", [](auto& r) {
    r.mutable_token_ids()->clear_ids();
    for (uint32_t id : PromptIds(40, 4)) r.mutable_token_ids()->add_ids(id);
    r.mutable_stopping()->set_max_new_tokens(30);
  });
  add("stop id out of vocabulary", "stopping.stop_token_ids[0]",
      [](auto& r) { r.mutable_stopping()->add_stop_token_ids(1000); });
  add("17 stop strings", "stopping.stop_strings", [](auto& r) {
    for (int i = 0; i < 17; ++i) r.mutable_stopping()->add_stop_strings(absl::StrCat("s", i));
  });
  add("empty stop string", "stopping.stop_strings[1]", [](auto& r) {
    r.mutable_stopping()->add_stop_strings("fine");
    r.mutable_stopping()->add_stop_strings("");
  });
  add("257-byte stop string", "stopping.stop_strings[0]",
      [](auto& r) { r.mutable_stopping()->add_stop_strings(std::string(257, 'x')); });
  add("top_logprobs 21", "top_logprobs", [](auto& r) { r.set_top_logprobs(21); });
  add("request over --max-request-bytes (handler)", "request",
      [](auto& r) { r.set_text(std::string(5000, 'a')); });
  add("chat with a bad role", "chat.messages[1].role", [](auto& r) {
    auto* m = r.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content("hi");
    m = r.mutable_chat()->add_messages();
    m->set_role("robot");
    m->set_content("beep");
  });
  add("empty chat", "chat.messages", [](auto& r) { r.mutable_chat(); });
  add("request_id with spaces", "request_id", [](auto& r) { r.set_request_id("my request"); });
  add("request_id of 129 bytes", "request_id",
      [](auto& r) { r.set_request_id(std::string(129, 'r')); });
  return cases;
}

TEST(RouterValidation, InvalidRequestsNameTheField) {
  Cluster c;
  ASSERT_STARTED(c.Start(
      1, 1, 0,
      {"--max-context", "64", "--max-new-tokens-limit", "32", "--max-request-bytes", "4096"}));
  const std::vector<BadCase> cases = BadCases();
  for (const BadCase& bc : cases) {
    const StreamResult r = Generate(c.stub(), bc.request, absl::Seconds(10));
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << bc.name << ": " << r.Describe();
    EXPECT_TRUE(absl::StartsWith(r.status.error_message(), bc.field))
        << bc.name << ": the message should start with \"" << bc.field
        << "\": " << r.status.error_message();
    EXPECT_TRUE(r.ids.empty()) << bc.name;
    EXPECT_LT(r.ended - r.started, absl::Seconds(1)) << bc.name;
  }
  EXPECT_EQ(c.router().MetricSum("sambay_router_rejections_total", {{"reason", "invalid"}}),
            cases.size());
  // Nothing reached a worker.
  for (Worker* w : c.LiveWorkers()) {
    auto text = w->Metrics();
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(::sambay::testing::MetricSum(*text, "sambay_worker_tokens_total"), 0) << w->name();
  }
  // The router still serves a valid request (at the limits: 32 new tokens, 64 in all).
  v1::GenerateRequest good = IdsRequest(PromptIds(32, 5), Seeded(0.8f, 0.9f, 7), 32);
  const StreamResult r = Generate(c.stub(), good, absl::Seconds(20));
  ASSERT_TRUE(r.status.ok()) << r.Describe() << "\n" << c.Logs();
  auto ref = ReferenceIds(good, c.dir());
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(r.ids, *ref);
  // max_new_tokens 0 takes the default, capped by the context: 63 prompt tokens leave 1.
  v1::GenerateRequest fill = IdsRequest(PromptIds(63, 6), Greedy(), 0);
  const StreamResult f = Generate(c.stub(), fill, absl::Seconds(20));
  ASSERT_TRUE(f.status.ok()) << f.Describe();
  EXPECT_EQ(f.ids.size(), 1u) << f.Describe();
  EXPECT_EQ(f.finish, v1::FINISH_REASON_LENGTH);
  // Abort without an id.
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::AbortResponse ar;
  const grpc::Status st = c.stub().Abort(&ctx, v1::AbortRequest(), &ar);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Str(st);
  EXPECT_TRUE(absl::StartsWith(st.error_message(), "request_id")) << Str(st);
}

// A request far over --max-request-bytes (10000 bytes of text with a 4096-byte limit) is an
// invalid request like any other: INVALID_ARGUMENT naming it, not an overload status that
// clients would retry.
TEST(RouterValidation, OversizedRequestIsInvalidArgument) {
  Cluster c;
  ASSERT_STARTED(c.Start(1, 1, 0, {"--max-request-bytes", "4096"}));
  v1::GenerateRequest req = TextRequest(std::string(10000, 'a'), Greedy(), 8);
  const StreamResult r = Generate(c.stub(), req, absl::Seconds(10));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << r.Describe();
  EXPECT_TRUE(absl::StartsWith(r.status.error_message(), "request")) << r.Describe();
  // Still serving.
  const StreamResult ok = Generate(c.stub(), IdsRequest({1, 2, 3}, Greedy(), 8));
  EXPECT_TRUE(ok.status.ok()) << ok.Describe();
}

}  // namespace
}  // namespace sambay::testing
