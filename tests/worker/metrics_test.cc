// The worker's metrics endpoint, scraped like Prometheus would: the documented series exist
// with base-unit names, and requests for other paths (a scrape misconfigured to "/", a load
// balancer probe) get an HTTP error instead of taking the worker down (DESIGN §4.3, §4.5).
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/worker/http_get.h"
#include "tests/worker/worker_harness.h"

namespace sambay::testing {
namespace {

TEST(MetricsEndpointTest, UnknownPathsDoNotCrashTheWorker) {
  ScratchDir dir;
  auto w = Worker::Start("decode", {}, dir.path(), "metrics");
  ASSERT_TRUE(w.ok()) << w.status();
  Worker& worker = **w;
  for (const char* path : {"/", "/nope", "/metrics/extra", "/favicon.ico"}) {
    SCOPED_TRACE(path);
    auto r = HttpGet("127.0.0.1", worker.metrics_port(), path, absl::Seconds(5));
    EXPECT_TRUE(r.ok()) << r.status();
    // Debian's civetweb crashes sending a 404, so the worker serves the metrics on every path.
    if (r.ok()) {
      EXPECT_EQ(r->status, 200);
      EXPECT_NE(r->body.find("sambay_worker_info"), std::string::npos);
    }
    ASSERT_TRUE(worker.process().Running())
        << "GET " << path << " on the metrics port killed the worker: "
        << DescribeWaitStatus(worker.process().WaitExit(absl::ZeroDuration()).value_or(0)) << "\n"
        << worker.Logs();
  }
  auto live = worker.Health("");
  ASSERT_TRUE(live.ok()) << live.status();
  auto text = worker.Metrics();
  EXPECT_TRUE(text.ok()) << text.status();
}

TEST(MetricsEndpointTest, DocumentedSeriesArePresent) {
  ScratchDir dir;
  auto w = Worker::Start("both", {"--max-running", "5", "--state-memory-mib", "3"}, dir.path(),
                         "series");
  ASSERT_TRUE(w.ok()) << w.status();
  Worker& worker = **w;
  auto text = worker.Metrics();
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(MetricValue(*text, "sambay_worker_slots_limit"), 5);
  EXPECT_EQ(MetricValue(*text, "sambay_worker_state_memory_total_bytes"), 3 << 20);
  for (const char* gauge : {"sambay_worker_running_sequences", "sambay_worker_waiting_sequences",
                            "sambay_worker_slots_used", "sambay_worker_state_memory_used_bytes"}) {
    EXPECT_EQ(MetricValue(*text, gauge), 0) << gauge;
  }
  for (const char* phase : {"prefill", "decode"}) {
    EXPECT_TRUE(MetricValue(*text, "sambay_worker_tokens_total", {{"phase", phase}}).has_value())
        << phase;
  }
  for (const char* dir : {"sent", "received"}) {
    EXPECT_TRUE(MetricValue(*text, "sambay_worker_state_transfer_bytes_total", {{"direction", dir}})
                    .has_value())
        << dir;
  }
  for (const char* reason : {"slots", "memory", "draining", "role"}) {
    EXPECT_EQ(MetricValue(*text, "sambay_worker_rejections_total", {{"reason", reason}}), 0)
        << reason;
  }
  for (const char* reason :
       {"data_loss", "wrong_model", "invalid_state", "lease_expired", "peer_gone"}) {
    EXPECT_EQ(MetricValue(*text, "sambay_worker_failures_total", {{"reason", reason}}), 0)
        << reason;
  }
  EXPECT_EQ(MetricSum(*text, "sambay_worker_info", {{"role", "both"}}), 1);

  // A generation moves the token counters by what it ran.
  GenerateSpec spec;
  spec.prompt = PromptIds(9, 1);
  spec.max_new_tokens = 6;
  GenerateResult r = LocalGenerate(worker, spec);
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  auto prefill = WaitMetric(worker, "sambay_worker_tokens_total", {{"phase", "prefill"}},
                            [](double v) { return v >= 9; });
  EXPECT_TRUE(prefill.ok()) << prefill.status();
  if (prefill.ok()) {
    EXPECT_EQ(*prefill, 9);
  }
  // Decode steps consume every sampled token but the last: 5.
  auto decode = WaitMetric(worker, "sambay_worker_tokens_total", {{"phase", "decode"}},
                           [](double v) { return v >= 5; });
  EXPECT_TRUE(decode.ok()) << decode.status();
  if (decode.ok()) {
    EXPECT_EQ(*decode, 5);
  }
  ExpectIdle(worker);
}

}  // namespace
}  // namespace sambay::testing
