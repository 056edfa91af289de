// Failures around the router, with real processes: a decode worker killed with SIGKILL in the
// middle of 8 streams (they migrate to another decode worker and still give exactly the tokens
// of a no-fault run; with no other decode worker they end UNAVAILABLE promptly), 50 streams
// cancelled by their clients, Abort by request id, readiness following the workers, a worker of
// another model refused, and SIGTERM drain of the router.
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/router/router_harness.h"
#include "tests/worker/http_get.h"

namespace sambay::testing {
namespace {

namespace v1 = sambay::v1;
using grpc::health::v1::HealthCheckResponse;

// 8 long requests (ignore_eos), half greedy and half seeded, prompts of different lengths.
std::vector<v1::GenerateRequest> EightLongRequests(uint32_t max_new_tokens) {
  std::vector<v1::GenerateRequest> r;
  for (int i = 0; i < 8; ++i) {
    const Sampling s = i % 2 == 0 ? Greedy() : Seeded(0.8f, 0.9f, 7 + i);
    r.push_back(IdsRequest(PromptIds(5 + 23 * i, 700 + i), s, max_new_tokens));
    r.back().set_request_id(absl::StrCat("long-", i));
  }
  return r;
}

std::vector<std::unique_ptr<Stream>> StartAll(v1::Generation::Stub& stub,
                                              const std::vector<v1::GenerateRequest>& requests,
                                              absl::Duration timeout) {
  std::vector<std::unique_ptr<Stream>> out;
  for (const auto& q : requests) out.push_back(std::make_unique<Stream>(stub, q, timeout));
  return out;
}

// Waits until every stream received at least `n` tokens; false (and which not) otherwise.
bool AllHaveTokens(const std::vector<std::unique_ptr<Stream>>& streams, size_t n,
                   absl::Duration timeout, std::string* why) {
  const bool ok = WaitFor(
      [&] {
        return std::all_of(streams.begin(), streams.end(),
                           [&](const auto& s) { return s->tokens() >= n || s->done(); });
      },
      timeout);
  why->clear();
  for (size_t i = 0; i < streams.size(); ++i) {
    if (streams[i]->done()) absl::StrAppend(why, "stream ", i, " already ended; ");
    if (streams[i]->tokens() < n)
      absl::StrAppend(why, "stream ", i, " has ", streams[i]->tokens(), " tokens; ");
  }
  return ok && why->empty();
}

// Runs 8 long streams, SIGKILLs the worker among `candidates` that decodes the most of them
// once every stream has 400 tokens (late enough that the re-prefill of prompt + generated
// tokens is long: over the workers' 512-token prefill chunk for the longer prompts), and checks
// that every stream still completes with exactly the tokens of a no-fault run (sambay-run).
// `split`: prefill and decode run on different workers, so usage.workers is
// [prefill, decode, prefill, decode, ...] and the killed worker is the second entry.
void KillDecodeWorkerMidStream(Cluster& c, std::vector<std::unique_ptr<Worker>>& candidates,
                               bool split) {
  const std::vector<v1::GenerateRequest> requests = EightLongRequests(1200);
  const std::vector<Reference> refs = References(requests, c.dir());
  auto streams = StartAll(c.stub(), requests, absl::Seconds(60));
  std::string why;
  ASSERT_TRUE(AllHaveTokens(streams, 400, absl::Seconds(30), &why)) << why << "\n" << c.Logs();
  uint32_t most = 0;
  auto busiest = BusiestWorker(candidates, &most);
  ASSERT_TRUE(busiest.ok()) << busiest.status();
  Worker* victim = *busiest;
  ASSERT_GT(most, 0u);
  const std::string victim_address = victim->address();
  victim->process().Kill();
  std::vector<size_t> at_kill;
  for (auto& s : streams) at_kill.push_back(s->tokens());

  uint32_t migrations = 0;
  for (size_t i = 0; i < streams.size(); ++i) {
    const StreamResult& r = streams[i]->Wait();
    ASSERT_TRUE(refs[i].status.ok()) << refs[i].status;
    ASSERT_TRUE(r.status.ok()) << "stream " << i << ": " << r.Describe() << "\n" << c.Logs();
    EXPECT_TRUE(r.protocol_error.empty()) << r.Describe();
    EXPECT_EQ(r.finish, v1::FINISH_REASON_LENGTH) << r.Describe();
    EXPECT_EQ(r.ids, refs[i].ids) << "stream " << i << " (" << requests[i].ShortDebugString()
                                  << "; about " << at_kill[i]
                                  << " tokens received at the kill) differs from the no-fault run: "
                                  << r.Describe();
    EXPECT_EQ(r.usage.completion_tokens(), r.ids.size()) << r.Describe();
    const auto& ws = r.usage.workers();
    ASSERT_GE(ws.size(), 1);
    EXPECT_NE(ws[ws.size() - 1], victim_address)
        << "stream " << i << " ended on the killed worker: " << r.Describe();
    const bool touched = std::count(ws.begin(), ws.end(), victim_address) > 0;
    if (!touched) {
      EXPECT_EQ(r.usage.migrations(), 0u) << r.Describe();
    }
    EXPECT_LE(r.usage.migrations(), 1u) << r.Describe();
    if (split) {
      const bool decoded_on_victim = ws.size() >= 2 && ws[1] == victim_address;
      if (decoded_on_victim) {
        EXPECT_EQ(r.usage.migrations(), 1u) << r.Describe();
        // prefill, the killed decode worker, then the re-prefill and another decode worker.
        EXPECT_EQ(ws.size(), 4) << r.Describe();
      } else {
        EXPECT_EQ(r.usage.migrations(), 0u) << r.Describe();
      }
    }
    migrations += r.usage.migrations();
  }
  // Exactly the sequences the killed worker was decoding moved.
  EXPECT_EQ(migrations, most);
  EXPECT_EQ(c.router().MetricSum("sambay_router_migrations_total"), migrations);
  EXPECT_EQ(c.router().MetricSum("sambay_router_requests_total", {{"finish_reason", "length"}}), 8);
  EXPECT_TRUE(c.WaitWorkersIdle().ok()) << c.WaitWorkersIdle();
  EXPECT_EQ(c.router().WaitMetricSum("sambay_router_running_requests", {},
                                     [](double v) { return v == 0; }),
            0);
  // The dead worker is out.
  EXPECT_EQ(c.router().WaitMetricSum("sambay_router_worker_up", {{"worker", victim_address}},
                                     [](double v) { return v == 0; }),
            0);
  ::testing::Test::RecordProperty(
      "min_tokens_at_kill", static_cast<int>(*std::min_element(at_kill.begin(), at_kill.end())));
}

// (a) With a second decode worker: every stream completes with the no-fault tokens; the
// streams of the killed worker migrated.
TEST(RouterFaults, DecodeWorkerKilledStreamsMigrateExactly) {
  Cluster c;
  ASSERT_STARTED(c.Start(1, 2, 0));
  KillDecodeWorkerMidStream(c, c.decode(), /*split=*/true);
}

// The same with two role-both workers (in-place decoding moves to the other worker).
TEST(RouterFaults, RoleBothWorkerKilledStreamsMigrateExactly) {
  Cluster c;
  ASSERT_STARTED(c.Start(0, 0, 2));
  KillDecodeWorkerMidStream(c, c.both(), /*split=*/false);
}

// (b) With no other decode worker: every stream ends UNAVAILABLE within 5 s of the kill.
TEST(RouterFaults, OnlyDecodeWorkerKilledStreamsEndUnavailable) {
  Cluster c;
  ASSERT_STARTED(c.Start(1, 1, 0));
  const std::vector<v1::GenerateRequest> requests = EightLongRequests(3500);
  auto streams = StartAll(c.stub(), requests, absl::Seconds(60));
  std::string why;
  ASSERT_TRUE(AllHaveTokens(streams, 16, absl::Seconds(20), &why)) << why << "\n" << c.Logs();
  c.decode()[0]->process().Kill();
  const absl::Time killed = absl::Now();
  for (size_t i = 0; i < streams.size(); ++i) {
    const StreamResult& r = streams[i]->Wait();
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << "stream " << i << ": " << r.Describe();
    EXPECT_LT(r.ended - killed, absl::Seconds(5)) << "stream " << i << ": " << r.Describe();
    EXPECT_FALSE(r.got_final) << r.Describe();
    EXPECT_LT(r.ids.size(), 3500u);
  }
  EXPECT_EQ(c.router().WaitMetricSum("sambay_router_running_requests", {},
                                     [](double v) { return v == 0; }),
            0);
  EXPECT_EQ(c.router().MetricSum("sambay_router_requests_total", {{"finish_reason", "error"}}), 8);
  // The prefill worker holds nothing.
  EXPECT_TRUE(c.WaitWorkersIdle().ok()) << c.WaitWorkersIdle();
  // New requests fail fast too.
  const StreamResult r = Generate(c.stub(), IdsRequest({1, 2, 3}, Greedy(), 8), absl::Seconds(10));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.Describe();
  EXPECT_LT(r.ended - r.started, absl::Seconds(2)) << r.Describe();
}

// 50 streams cancelled by their clients after their first tokens: every worker and the router
// are idle again within a few seconds.
TEST(RouterFaults, FiftyCancelledStreamsFreeEverything) {
  Cluster c;
  ASSERT_STARTED(c.Start(1, 1, 0));
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 50; ++i) {
    requests.push_back(
        IdsRequest(PromptIds(4 + i, 900 + i), i % 2 ? Seeded(0.9f, 0.9f, i) : Greedy(), 3500));
  }
  auto streams = StartAll(c.stub(), requests, absl::Seconds(60));
  std::string why;
  ASSERT_TRUE(AllHaveTokens(streams, 2, absl::Seconds(30), &why)) << why << "\n" << c.Logs();
  for (auto& s : streams) s->Cancel();
  for (auto& s : streams) {
    const StreamResult& r = s->Wait();
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED) << r.Describe();
  }
  const absl::Status idle = c.WaitWorkersIdle(absl::Seconds(5));
  EXPECT_TRUE(idle.ok()) << idle;
  EXPECT_EQ(c.router().WaitMetricSum("sambay_router_running_requests", {},
                                     [](double v) { return v == 0; }),
            0);
  EXPECT_EQ(c.router().MetricSum("sambay_router_waiting_requests"), 0);
  // And serve again.
  const StreamResult r = Generate(c.stub(), IdsRequest({1, 2, 3}, Greedy(), 8));
  EXPECT_TRUE(r.status.ok()) << r.Describe();
}

// Abort(request_id) ends the stream OK with FINISH_REASON_ABORT and frees the workers; on both
// the disaggregated and the in-place path.
TEST(RouterFaults, AbortByRequestId) {
  for (const bool in_place : {false, true}) {
    SCOPED_TRACE(in_place ? "in place (role both)" : "prefill + decode");
    Cluster c;
    ASSERT_STARTED(in_place ? c.Start(0, 0, 1) : c.Start(1, 1, 0));
    v1::GenerateRequest req = IdsRequest(PromptIds(10, 11), Seeded(0.8f, 0.9f, 7), 4000);
    req.set_request_id("abort-me-1");
    Stream s(c.stub(), req, absl::Seconds(60));
    Stream other(c.stub(), IdsRequest(PromptIds(12, 12), Greedy(), 300), absl::Seconds(60));
    ASSERT_TRUE(WaitFor([&] { return s.tokens() >= 5 || s.done(); }, absl::Seconds(10)));
    ASSERT_FALSE(s.done()) << s.Wait().Describe();
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::AbortRequest ar;
    ar.set_request_id("abort-me-1");
    v1::AbortResponse resp;
    grpc::Status st = c.stub().Abort(&ctx, ar, &resp);
    ASSERT_TRUE(st.ok()) << Str(st);
    EXPECT_TRUE(resp.aborted());
    const StreamResult& r = s.Wait();
    EXPECT_TRUE(r.status.ok()) << r.Describe() << "\n" << c.Logs();
    EXPECT_EQ(r.finish, v1::FINISH_REASON_ABORT) << r.Describe();
    EXPECT_TRUE(r.protocol_error.empty()) << r.Describe();
    EXPECT_LT(r.ids.size(), 4000u);
    EXPECT_EQ(r.usage.completion_tokens(), r.ids.size()) << r.Describe();
    EXPECT_EQ(r.request_id, "abort-me-1");
    // The other stream is untouched.
    const StreamResult& o = other.Wait();
    EXPECT_TRUE(o.status.ok()) << o.Describe();
    EXPECT_EQ(o.ids.size(), 300u);
    // Aborting again (finished) or an unknown id: aborted = false.
    for (const char* id : {"abort-me-1", "never-existed"}) {
      grpc::ClientContext ctx2;
      ctx2.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      ar.set_request_id(id);
      st = c.stub().Abort(&ctx2, ar, &resp);
      ASSERT_TRUE(st.ok()) << Str(st);
      EXPECT_FALSE(resp.aborted()) << id;
    }
    EXPECT_TRUE(c.WaitWorkersIdle().ok()) << c.WaitWorkersIdle();
    EXPECT_EQ(c.router().MetricSum("sambay_router_requests_total", {{"finish_reason", "abort"}}),
              1);
  }
}

// Readiness: SERVING with a prefill and a decode worker; NOT_SERVING when the only decode worker
// is gone (after the health interval); SERVING again when a decode worker is back at the listed
// address (restarted on the same port), which then serves requests.
TEST(RouterFaults, ReadinessFollowsTheDecodeWorker) {
  Cluster c;
  ASSERT_STARTED(c.Start(1, 1, 0,
                         {"--health-interval-seconds", "0.2", "--probe-timeout-seconds", "0.5",
                          "--fail-threshold", "2", "--max-backoff-seconds", "0.5"}));
  Router& router = c.router();
  auto live = router.Health("");
  ASSERT_TRUE(live.ok()) << live.status();
  EXPECT_EQ(*live, HealthCheckResponse::SERVING);
  const absl::Status ready = router.WaitReadiness(HealthCheckResponse::SERVING, absl::Seconds(5));
  EXPECT_TRUE(ready.ok()) << "readiness right after start-up with every worker up: " << ready;

  const std::string decode_address = c.decode()[0]->address();
  const std::string port = decode_address.substr(decode_address.rfind(':') + 1);
  c.decode()[0]->process().Kill();
  const absl::Status down =
      router.WaitReadiness(HealthCheckResponse::NOT_SERVING, absl::Seconds(5));
  EXPECT_TRUE(down.ok()) << "after the decode worker was killed: " << down;
  EXPECT_EQ(router.WaitMetricSum("sambay_router_worker_up", {{"worker", decode_address}},
                                 [](double v) { return v == 0; }),
            0);
  const StreamResult failed = Generate(c.stub(), IdsRequest({1, 2, 3}, Greedy(), 8));
  EXPECT_EQ(failed.status.error_code(), grpc::StatusCode::UNAVAILABLE) << failed.Describe();

  // A new decode worker at the same address.
  absl::StatusOr<std::unique_ptr<Worker>> back;
  for (int attempt = 0; attempt < 20; ++attempt) {
    back =
        Worker::Start("decode", {"--port", port}, c.dir(), absl::StrCat("decode0-again", attempt));
    if (back.ok()) break;
    absl::SleepFor(absl::Milliseconds(250));
  }
  ASSERT_TRUE(back.ok()) << back.status();
  const absl::Status up = router.WaitReadiness(HealthCheckResponse::SERVING, absl::Seconds(10));
  EXPECT_TRUE(up.ok()) << "after a decode worker came back: " << up << "\n" << c.Logs();
  EXPECT_EQ(router.WaitMetricSum("sambay_router_worker_up", {{"worker", decode_address}},
                                 [](double v) { return v == 1; }),
            1);
  const v1::GenerateRequest req = IdsRequest(PromptIds(20, 2), Seeded(0.8f, 0.9f, 7), 40);
  const StreamResult r = Generate(c.stub(), req);
  ASSERT_TRUE(r.status.ok()) << r.Describe() << "\n" << c.Logs();
  auto ref = ReferenceIds(req, c.dir());
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(r.ids, *ref);
  ASSERT_EQ(r.usage.workers_size(), 2);
  EXPECT_EQ(r.usage.workers(1), decode_address);
  EXPECT_TRUE(WaitIdle(**back).ok());

  // Gone again (this time readiness was SERVING before): NOT_SERVING.
  (*back)->process().Kill();
  const absl::Status down_again =
      router.WaitReadiness(HealthCheckResponse::NOT_SERVING, absl::Seconds(5));
  EXPECT_TRUE(down_again.ok()) << "after the second decode worker was killed: " << down_again
                               << "\n"
                               << c.Logs();
  // Liveness is unaffected.
  live = router.Health("");
  ASSERT_TRUE(live.ok()) << live.status() << "\n" << c.Logs();
  EXPECT_EQ(*live, HealthCheckResponse::SERVING);
}

// A worker serving another model (same shapes, other weights) is refused: worker_up 0, and no
// request ever reaches it.
TEST(RouterFaults, WorkerOfAnotherModelIsRefused) {
  ScratchDir dir;
  const std::string other_model = dir.path() + "/other-model";
  auto made = RunToCompletion(
      BinDir() + "/sambay-mkmodel",
      {"--out", other_model, "--preset", "tiny", "--seed", "2", "--dtype", "f32"}, dir.path());
  ASSERT_TRUE(made.ok()) << made.status();
  auto prefill = Worker::Start("prefill", {}, dir.path(), "prefill0");
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  auto decode = Worker::Start("decode", {}, dir.path(), "decode0");
  ASSERT_TRUE(decode.ok()) << decode.status();
  auto other = Worker::Start("decode", {"--model", other_model}, dir.path(), "decode-other");
  ASSERT_TRUE(other.ok()) << other.status();
  auto good_info = (*decode)->GetInfo();
  auto other_info = (*other)->GetInfo();
  ASSERT_TRUE(good_info.ok() && other_info.ok());
  ASSERT_NE(good_info->fingerprint(), other_info->fingerprint());
  const std::string bad = (*other)->address();

  // The cluster's model is pinned with --fingerprint (otherwise the first worker probed sets it).
  auto router = Router::Start({"--prefill-workers", (*prefill)->address(), "--decode-workers",
                               absl::StrCat((*decode)->address(), ",", bad), "--fingerprint",
                               good_info->fingerprint(), "--health-interval-seconds", "0.2"},
                              dir.path(), "router", /*workers_up=*/2);
  ASSERT_TRUE(router.ok()) << router.status();
  Router& r = **router;
  auto logs = [&] { return absl::StrCat(r.Logs(), "\n--- other:\n", (*other)->Logs()); };
  EXPECT_TRUE(
      WaitFor([&] { return absl::StrContains(r.Logs(), "worker refused"); }, absl::Seconds(5)))
      << logs();
  // worker_up of the refused worker: exported, and 0.
  auto text = r.Metrics();
  ASSERT_TRUE(text.ok());
  bool found = false;
  for (const MetricSample& m : ParseMetrics(*text)) {
    if (m.name != "sambay_router_worker_up") continue;
    auto it = m.labels.find("worker");
    if (it == m.labels.end() || it->second != bad) continue;
    found = true;
    EXPECT_EQ(m.value, 0) << "worker_up of the refused worker";
  }
  EXPECT_TRUE(found) << "no sambay_router_worker_up series for the refused worker " << bad
                     << "; exposition:\n"
                     << *text;

  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 12; ++i) {
    requests.push_back(IdsRequest(PromptIds(6 + i, 50 + i), Greedy(), 24));
  }
  for (const StreamResult& res : GenerateAll(r.stub(), requests)) {
    ASSERT_TRUE(res.status.ok()) << res.Describe() << "\n" << logs();
    for (const auto& w : res.usage.workers()) EXPECT_NE(w, bad) << res.Describe();
  }
  auto other_metrics = (*other)->Metrics();
  ASSERT_TRUE(other_metrics.ok());
  EXPECT_EQ(::sambay::testing::MetricSum(*other_metrics, "sambay_worker_tokens_total"), 0);
  EXPECT_EQ(::sambay::testing::MetricSum(*other_metrics, "sambay_worker_sequences_finished_total"),
            0);
  EXPECT_EQ(::sambay::testing::MetricSum(*other_metrics, "sambay_worker_rejections_total"), 0);
}

// SIGTERM: readiness NOT_SERVING, new requests UNAVAILABLE, the running streams complete with
// their full output, then the router exits 0.
TEST(RouterFaults, SigtermDrainsTheRouter) {
  Cluster c;
  ASSERT_STARTED(c.Start(1, 1, 0));
  std::vector<v1::GenerateRequest> requests = EightLongRequests(1500);
  requests.resize(4);
  const std::vector<Reference> refs = References(requests, c.dir());
  auto streams = StartAll(c.stub(), requests, absl::Seconds(60));
  std::string why;
  ASSERT_TRUE(AllHaveTokens(streams, 8, absl::Seconds(20), &why)) << why << "\n" << c.Logs();
  Router& router = c.router();
  ASSERT_TRUE(router.process().Signal(SIGTERM));
  // New requests are refused as soon as the router has the signal.
  StreamResult refused;
  const bool got_refused = WaitFor(
      [&] {
        refused = Generate(c.stub(), IdsRequest({1, 2, 3}, Greedy(), 8), absl::Seconds(5));
        return refused.status.error_code() == grpc::StatusCode::UNAVAILABLE;
      },
      absl::Seconds(3));
  EXPECT_TRUE(got_refused) << refused.Describe();
  size_t still_running = 0;
  for (auto& s : streams) still_running += s->done() ? 0 : 1;
  EXPECT_GT(still_running, 0u) << "the streams ended before the drain could be observed";
  auto health = router.Health("sambay.v1.Generation");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, HealthCheckResponse::NOT_SERVING);
  EXPECT_GE(router.MetricSum("sambay_router_rejections_total", {{"reason", "draining"}}), 1);
  for (size_t i = 0; i < streams.size(); ++i) {
    const StreamResult& r = streams[i]->Wait();
    ASSERT_TRUE(r.status.ok()) << "stream " << i << ": " << r.Describe() << "\n" << c.Logs();
    EXPECT_EQ(r.finish, v1::FINISH_REASON_LENGTH);
    ASSERT_TRUE(refs[i].status.ok());
    EXPECT_EQ(r.ids, refs[i].ids) << "stream " << i;
  }
  const std::optional<int> exit_status = router.process().WaitExit(absl::Seconds(10));
  ASSERT_TRUE(exit_status.has_value()) << "the router did not exit after its streams ended";
  EXPECT_TRUE(WIFEXITED(*exit_status) && WEXITSTATUS(*exit_status) == 0)
      << DescribeWaitStatus(*exit_status) << "\n"
      << router.Logs();
  EXPECT_TRUE(c.WaitWorkersIdle().ok()) << c.WaitWorkersIdle();
}

}  // namespace
}  // namespace sambay::testing
