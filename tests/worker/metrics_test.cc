// The worker's metrics endpoint, scraped like Prometheus would: the documented series exist
// with base-unit names, and every other request (another path or method, a load balancer's
// probe, malformed or oversized requests, idle connections) gets an HTTP error or is dropped
// instead of taking the worker down or blocking scrapes (docs/design.md "Errors, not crashes"
// and "Metrics in base units").
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/worker/http_get.h"
#include "tests/worker/worker_harness.h"

namespace sambay::testing {
namespace {

// Fails the test when the worker has exited (with how it died and its log).
void ExpectAlive(Worker& worker, const std::string& after) {
  ASSERT_TRUE(worker.process().Running())
      << after << " on the metrics port killed the worker: "
      << DescribeWaitStatus(worker.process().WaitExit(absl::ZeroDuration()).value_or(0)) << "\n"
      << worker.Logs();
}

TEST(MetricsEndpointTest, UnknownPathsAre404) {
  ScratchDir dir;
  auto w = Worker::Start("decode", {}, dir.path(), "metrics");
  ASSERT_TRUE(w.ok()) << w.status();
  Worker& worker = **w;
  for (const char* path : {"/", "/nope", "/metrics/extra", "/favicon.ico"}) {
    SCOPED_TRACE(path);
    auto r = HttpGet("127.0.0.1", worker.metrics_port(), path, absl::Seconds(5));
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) {
      EXPECT_EQ(r->status, 404);
    }
    ExpectAlive(worker, absl::StrCat("GET ", path));
    if (::testing::Test::HasFatalFailure()) return;
  }
  auto live = worker.Health("");
  ASSERT_TRUE(live.ok()) << live.status();
  auto text = worker.Metrics();
  EXPECT_TRUE(text.ok()) << text.status();
}

// any non-GET request used to segfault the worker inside civetweb's
// error-response path. Every method, and malformed or oversized requests, get an HTTP error.
TEST(MetricsEndpointTest, EveryMethodAndMalformedRequestGetsAnHttpError) {
  ScratchDir dir;
  auto w = Worker::Start("decode", {}, dir.path(), "methods");
  ASSERT_TRUE(w.ok()) << w.status();
  Worker& worker = **w;
  const int port = worker.metrics_port();
  for (const char* method : {"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"}) {
    for (const char* path : {"/metrics", "/", "/nope"}) {
      const std::string what = absl::StrCat(method, " ", path);
      SCOPED_TRACE(what);
      auto r = HttpExchange(
          "127.0.0.1", port,
          absl::StrCat(method, " ", path, " HTTP/1.0\r\nContent-Length: 4\r\n\r\nbody"));
      EXPECT_TRUE(r.ok()) << r.status();
      if (r.ok()) {
        EXPECT_EQ(r->status, 405);
        EXPECT_NE(r->headers.find("Allow: GET, HEAD"), std::string::npos) << r->headers;
      }
      ExpectAlive(worker, what);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  auto head = HttpExchange("127.0.0.1", port, "HEAD /metrics HTTP/1.0\r\n\r\n");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->body, "");
  ExpectAlive(worker, "HEAD /metrics");
  if (::testing::Test::HasFatalFailure()) return;
  for (const std::string& bad :
       {std::string("BREW /metrics HTTP/1.0\r\n\r\n"), std::string("GARBAGE\r\n\r\n"),
        std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        absl::StrCat("GET /metrics HTTP/1.0\r\nX: ", std::string(32 << 10, 'x'), "\r\n\r\n"),
        absl::StrCat("POST /metrics HTTP/1.0\r\nContent-Length: 100000\r\n\r\n",
                     std::string(100000, 'y'))}) {
    SCOPED_TRACE(bad.substr(0, 24));
    auto r = HttpExchange("127.0.0.1", port, bad);
    if (r.ok()) {  // else: the server closed without an answer
      EXPECT_GE(r->status, 400);
    }
    ExpectAlive(worker, bad.substr(0, 24));
    if (::testing::Test::HasFatalFailure()) return;
  }
  auto text = worker.Metrics();
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(MetricSum(*text, "sambay_worker_info", {{"role", "decode"}}), 1);
}

// two idle TCP connections used to hold both of civetweb's threads, so
// scrapes waited about 30 s.
TEST(MetricsEndpointTest, IdleConnectionsDoNotBlockScrapes) {
  ScratchDir dir;
  auto w = Worker::Start("decode", {}, dir.path(), "idle");
  ASSERT_TRUE(w.ok()) << w.status();
  Worker& worker = **w;
  std::vector<int> idle;
  for (int i = 0; i < 50; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(worker.metrics_port()));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    idle.push_back(fd);
  }
  const absl::Time start = absl::Now();
  auto text = ScrapeMetrics(worker.metrics_port(), absl::Seconds(3));
  EXPECT_TRUE(text.ok()) << text.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  for (int fd : idle) close(fd);
  ExpectAlive(worker, "50 idle connections");
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
