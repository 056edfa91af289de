// Chaos with real processes: a decode worker stopped (SIGSTOP) under 16 streams, a prefill
// worker stopped, and the router killed with streams in flight. Streams either complete with
// exactly the tokens of a no-fault run or end promptly with a clear status; no slot is lost on
// any worker, and a worker that resumes (SIGCONT) is taken back.
#include <signal.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/tsan.h"
#include "gtest/gtest.h"
#include "tests/router/router_harness.h"

namespace sambay::testing {
namespace {

namespace v1 = sambay::v1;

std::vector<v1::GenerateRequest> Requests(int n, uint32_t max_new_tokens) {
  std::vector<v1::GenerateRequest> r;
  for (int i = 0; i < n; ++i) {
    // Seeds without a near-tie: a re-prefilled state differs from the decoded one by rounding
    // (about 1e-6), which flips a sample only when the random draw lands that close to a
    // boundary of the top-p distribution (seed 42, the 810th token of stream 11, did).
    const Sampling s = i % 2 == 0 ? Greedy() : Seeded(0.8f, 0.9f, 101 + i);
    r.push_back(IdsRequest(PromptIds(5 + 11 * i, 900 + i), s, max_new_tokens));
    r.back().set_request_id(absl::StrCat("chaos-", i));
  }
  return r;
}

std::vector<std::unique_ptr<Stream>> StartAll(v1::Generation::Stub& stub,
                                              const std::vector<v1::GenerateRequest>& requests) {
  std::vector<std::unique_ptr<Stream>> out;
  for (const auto& q : requests) {
    out.push_back(std::make_unique<Stream>(stub, q, absl::Seconds(90)));
  }
  return out;
}

double WorkerUp(Router& r, const std::string& address) {
  return r.MetricSum("sambay_router_worker_up", {{"worker", address}});
}

// Every stream completes with the no-fault tokens.
void ExpectExact(Cluster& c, std::vector<std::unique_ptr<Stream>>& streams,
                 const std::vector<Reference>& refs) {
  for (size_t i = 0; i < streams.size(); ++i) {
    const StreamResult& r = streams[i]->Wait();
    ASSERT_TRUE(refs[i].status.ok()) << refs[i].status;
    ASSERT_TRUE(r.status.ok()) << "stream " << i << ": " << r.Describe() << "\n" << c.Logs();
    EXPECT_TRUE(r.protocol_error.empty()) << r.Describe();
    size_t first = 0;
    while (first < r.ids.size() && first < refs[i].ids.size() &&
           r.ids[first] == refs[i].ids[first]) {
      ++first;
    }
    EXPECT_EQ(r.ids, refs[i].ids) << "stream " << i << " differs from the no-fault run from token "
                                  << first << ": " << r.Describe();
  }
}

// 16 streams on 2 decode workers; the one decoding the most is stopped. Its streams must move on
// within --stall-timeout-seconds (2 here) plus the probe interval, token-identical; new requests
// avoid it; after SIGCONT the router takes it back and it frees every slot.
TEST(RouterChaos, DecodeWorkerStoppedUnder16Streams) {
  Cluster c;
  ASSERT_STARTED(c.Start(1, 2, 0, {"--stall-timeout-seconds", "2"}));
  const std::vector<v1::GenerateRequest> requests = Requests(16, 900);
  const std::vector<Reference> refs = References(requests, c.dir());
  auto streams = StartAll(c.stub(), requests);
  ASSERT_TRUE(WaitFor(
      [&] {
        return std::all_of(streams.begin(), streams.end(),
                           [](const auto& s) { return s->tokens() >= 100 || s->done(); });
      },
      absl::Seconds(30)))
      << c.Logs();
  uint32_t most = 0;
  auto busiest = BusiestWorker(c.decode(), &most);
  ASSERT_TRUE(busiest.ok()) << busiest.status();
  Worker* victim = *busiest;
  ASSERT_GT(most, 0u);
  const std::string victim_address = victim->address();
  ASSERT_TRUE(victim->process().Signal(SIGSTOP));
  const absl::Time stopped = absl::Now();
  std::vector<size_t> at_stop;
  for (auto& s : streams) at_stop.push_back(s->tokens());
  // Every stream that was not finished makes progress again.
  ASSERT_TRUE(WaitFor(
      [&] {
        for (size_t i = 0; i < streams.size(); ++i) {
          if (!streams[i]->done() && streams[i]->tokens() <= at_stop[i] + 5) return false;
        }
        return true;
      },
      absl::Seconds(15)))
      << c.Logs();
  const double resumed_after = absl::ToDoubleSeconds(absl::Now() - stopped);
  // 2 s of stall timeout + 1 s of probing + re-prefilling 16 streams; ThreadSanitizer's
  // instrumented servers re-prefill several times slower (a CI run saw 5.9 s).
#ifdef SAMBAY_TSAN_ENABLED
  constexpr double kResumeBound = 10.0;
#else
  constexpr double kResumeBound = 5.0;
#endif
  EXPECT_LT(resumed_after, kResumeBound)
      << "streams of the stopped worker took " << resumed_after << " s to move";
  RecordProperty("resumed_after_ms", static_cast<int>(resumed_after * 1000));
  EXPECT_EQ(WorkerUp(c.router(), victim_address), 0) << c.router().Logs();
  // A new request does not go to the stopped worker.
  const StreamResult fresh =
      Generate(c.stub(), IdsRequest(PromptIds(9, 5), Greedy(), 8), absl::Seconds(20));
  ASSERT_TRUE(fresh.status.ok()) << fresh.Describe() << "\n" << c.Logs();
  for (const auto& w : fresh.usage.workers()) EXPECT_NE(w, victim_address);
  ExpectExact(c, streams, refs);
  EXPECT_EQ(c.router().MetricSum("sambay_router_migrations_total"), most);

  ASSERT_TRUE(victim->process().Signal(SIGCONT));
  EXPECT_EQ(c.router().WaitMetricSum(
                "sambay_router_worker_up", {{"worker", victim_address}},
                [](double v) { return v == 1; }, absl::Seconds(10)),
            1)
      << c.router().Logs();
  EXPECT_TRUE(c.WaitWorkersIdle(absl::Seconds(10)).ok()) << c.Logs();
  EXPECT_EQ(c.router().WaitMetricSum("sambay_router_running_requests", {},
                                     [](double v) { return v == 0; }),
            0);
}

// 2 prefill workers, one stopped just before 8 requests arrive: the requests placed on it move
// to the other once the probes take it out, and all complete exactly; SIGCONT brings it back.
TEST(RouterChaos, PrefillWorkerStopped) {
  Cluster c;
  // Round robin: half of the requests go to the stopped worker before the probes take it out.
  ASSERT_STARTED(c.Start(2, 1, 0, {"--placement", "round-robin"}));
  const std::vector<v1::GenerateRequest> requests = Requests(8, 64);
  const std::vector<Reference> refs = References(requests, c.dir());
  Worker& victim = *c.prefill()[0];
  ASSERT_TRUE(victim.process().Signal(SIGSTOP));
  const absl::Time stopped = absl::Now();
  auto streams = StartAll(c.stub(), requests);
  ExpectExact(c, streams, refs);
  const double done_after = absl::ToDoubleSeconds(absl::Now() - stopped);
  RecordProperty("all_done_after_ms", static_cast<int>(done_after * 1000));
  // Taken out by the probes (1 s interval, 1 s timeout), then the attempts move on.
  EXPECT_LT(done_after, 5.0);
  EXPECT_EQ(WorkerUp(c.router(), victim.address()), 0);
  ASSERT_TRUE(victim.process().Signal(SIGCONT));
  EXPECT_EQ(c.router().WaitMetricSum(
                "sambay_router_worker_up", {{"worker", victim.address()}},
                [](double v) { return v == 1; }, absl::Seconds(10)),
            1)
      << c.router().Logs();
  EXPECT_TRUE(c.WaitWorkersIdle(absl::Seconds(10)).ok()) << c.Logs();
}

// A prefill slower than the decode worker's lease (1 s): the prefill worker is stopped for 3 s
// while the reservation waits. The router renews the lease (every 0.3 s), so the reservation
// survives and the request completes exactly, on its first placement. (--fail-threshold 100
// keeps the stopped worker in the registry: this is about the lease, not the probes.)
TEST(RouterChaos, PrefillSlowerThanTheLease) {
  Cluster c;
  ASSERT_STARTED(c.Start(1, 1, 0, {"--lease-renew-seconds", "0.3", "--fail-threshold", "100"},
                         {"--lease-timeout", "1"}));
  const std::vector<v1::GenerateRequest> requests = Requests(2, 48);
  const std::vector<Reference> refs = References(requests, c.dir());
  Worker& prefill = *c.prefill()[0];
  ASSERT_TRUE(prefill.process().Signal(SIGSTOP));
  auto streams = StartAll(c.stub(), requests);
  absl::SleepFor(absl::Seconds(3));
  ASSERT_TRUE(prefill.process().Signal(SIGCONT));
  ExpectExact(c, streams, refs);
  for (auto& s : streams) {
    const StreamResult& r = s->Wait();
    EXPECT_EQ(r.usage.workers_size(), 2) << "placed more than once: " << r.Describe();
    EXPECT_GE(absl::ToDoubleSeconds(r.first_token_at - r.started), 2.5) << r.Describe();
  }
  auto expired =
      c.decode()[0]->Metric("sambay_worker_failures_total", {{"reason", "lease_expired"}});
  ASSERT_TRUE(expired.ok()) << expired.status();
  EXPECT_EQ(*expired, 0) << c.Logs();
}

// The router is killed (SIGKILL) with 8 streams in flight: every client gets UNAVAILABLE within
// 2 s, every worker frees its slots, and a new router serves.
TEST(RouterChaos, RouterKilledWithStreamsInFlight) {
  Cluster c;
  ASSERT_STARTED(c.Start(1, 1, 0));
  auto streams = StartAll(c.stub(), Requests(8, 2000));
  ASSERT_TRUE(WaitFor(
      [&] {
        return std::all_of(streams.begin(), streams.end(),
                           [](const auto& s) { return s->tokens() >= 20; });
      },
      absl::Seconds(30)))
      << c.Logs();
  c.router().process().Kill();
  const absl::Time killed = absl::Now();
  for (auto& s : streams) {
    const StreamResult& r = s->Wait();
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.Describe();
    EXPECT_LT(absl::ToDoubleSeconds(r.ended - killed), 2.0) << r.Describe();
  }
  EXPECT_TRUE(c.WaitWorkersIdle(absl::Seconds(10)).ok()) << c.Logs();
  ASSERT_STARTED(c.StartRouter({"--prefill-workers", c.prefill()[0]->address(), "--decode-workers",
                                c.decode()[0]->address()}));
  const StreamResult r =
      Generate(c.stub(), IdsRequest(PromptIds(7, 3), Greedy(), 16), absl::Seconds(20));
  EXPECT_TRUE(r.status.ok()) << r.Describe() << "\n" << c.Logs();
}

}  // namespace
}  // namespace sambay::testing
