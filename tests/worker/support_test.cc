// The test support library itself: child processes, the port-file handshake, the metrics
// reader. Uses /bin/sh as the child, so it needs no sambay binary.
#include <signal.h>
#include <sys/wait.h>

#include "gtest/gtest.h"
#include "tests/worker/http_get.h"
#include "tests/worker/process.h"
#include "tests/worker/worker_harness.h"
#include "worker/metrics.h"

namespace sambay::testing {
namespace {

TEST(ProcessTest, ReportsExitCodeAndOutput) {
  ScratchDir dir;
  ProcessOptions o;
  o.binary = "/bin/sh";
  o.args = {"-c", "echo out; echo err >&2; exit 3"};
  o.stdout_path = dir.path() + "/out";
  o.stderr_path = dir.path() + "/err";
  auto p = Process::Start(o);
  ASSERT_TRUE(p.ok()) << p.status();
  std::optional<int> st = (*p)->WaitExit(absl::Seconds(10));
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st));
  EXPECT_EQ(WEXITSTATUS(*st), 3);
  EXPECT_EQ((*p)->ReadStdout(), "out\n");
  EXPECT_EQ((*p)->ReadStderr(), "err\n");
  EXPECT_FALSE((*p)->Running());
  EXPECT_EQ(DescribeWaitStatus(*st), "exited with code 3");
}

TEST(ProcessTest, SignalAndEnvironment) {
  ScratchDir dir;
  ProcessOptions o;
  o.binary = "/bin/sh";
  o.args = {"-c", "echo $SAMBAY_TEST_VAR; exec sleep 30"};
  o.stdout_path = dir.path() + "/out";
  o.env = {"SAMBAY_TEST_VAR=hello"};
  auto p = Process::Start(o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE((*p)->Running());
  EXPECT_FALSE((*p)->WaitExit(absl::Milliseconds(50)).has_value());
  // The shell has run its echo before it is signalled (a loaded machine may not have started it).
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while ((*p)->ReadStdout().empty() && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(10));
  ASSERT_TRUE((*p)->Signal(SIGTERM));
  std::optional<int> st = (*p)->WaitExit(absl::Seconds(10));
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFSIGNALED(*st));
  EXPECT_EQ(WTERMSIG(*st), SIGTERM);
  EXPECT_EQ((*p)->ReadStdout(), "hello\n");
  EXPECT_FALSE((*p)->Signal(SIGTERM));  // already reaped
}

TEST(ProcessTest, MissingBinaryFails) {
  ProcessOptions o;
  o.binary = "/nonexistent/binary";
  EXPECT_FALSE(Process::Start(o).ok());
}

TEST(ServerProcessTest, WaitsForThePortFile) {
  ScratchDir dir;
  // "$1" is --port-file, "$2" the path: write it atomically after a short delay, then stay up.
  const std::string script =
      "sleep 0.2; printf '{\"grpc_port\":1234,\"metrics_port\":5678,\"pid\":%d}' $$ > \"$2.tmp\""
      " && mv \"$2.tmp\" \"$2\"; exec sleep 30";
  auto s = ServerProcess::Start("/bin/sh", {"-c", script, "sh"}, dir.path(), "fake");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->grpc_port(), 1234);
  EXPECT_EQ((*s)->metrics_port(), 5678);
  EXPECT_EQ((*s)->address(), "127.0.0.1:1234");
  EXPECT_TRUE((*s)->process().Running());
}

TEST(ServerProcessTest, FailsFastWhenTheServerExits) {
  ScratchDir dir;
  const absl::Time start = absl::Now();
  auto s = ServerProcess::Start("/bin/sh", {"-c", "echo 'bad flag' >&2; exit 2", "sh"}, dir.path(),
                                "broken", absl::Seconds(30));
  ASSERT_FALSE(s.ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_NE(s.status().message().find("exited with code 2"), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find("bad flag"), std::string::npos) << s.status();
}

TEST(PortFileTest, Parses) {
  auto p = ParsePortFile(R"({"grpc_port":50051,"metrics_port":9100,"pid":42})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->grpc_port, 50051);
  EXPECT_EQ(p->metrics_port, 9100);
  EXPECT_EQ(p->pid, 42);
  EXPECT_FALSE(ParsePortFile(R"({"grpc_port":50051})").ok());
  EXPECT_FALSE(ParsePortFile("{").ok());
  EXPECT_FALSE(ParsePortFile(R"({"grpc_port":0,"metrics_port":1,"pid":1})").ok());
}

TEST(MetricsTextTest, ReadsSamplesByNameAndLabels) {
  const std::string text =
      "# HELP sambay_worker_failures_total Sequences that failed.\n"
      "# TYPE sambay_worker_failures_total counter\n"
      "sambay_worker_failures_total{reason=\"data_loss\"} 2\n"
      "sambay_worker_failures_total{reason=\"wrong_model\"} 1\n"
      "sambay_worker_running_sequences 0\n"
      "sambay_worker_info{fingerprint=\"ab\",role=\"decode\",version=\"0.1\"} 1\n"
      "sambay_worker_prefill_seconds_bucket{le=\"+Inf\"} 7\n"
      "x_escaped{a=\"q\\\"uote\"} 1.5e3 1700000000000\n";
  EXPECT_EQ(MetricValue(text, "sambay_worker_failures_total", {{"reason", "data_loss"}}), 2);
  EXPECT_EQ(SeriesValue(text, "sambay_worker_failures_total{reason=\"wrong_model\"}"), 1);
  EXPECT_EQ(SeriesValue(text, "sambay_worker_running_sequences"), 0);
  EXPECT_EQ(
      SeriesValue(text, "sambay_worker_info{version=\"0.1\",role=\"decode\",fingerprint=\"ab\"}"),
      1);
  EXPECT_EQ(SeriesValue(text, "sambay_worker_prefill_seconds_bucket{le=\"+Inf\"}"), 7);
  EXPECT_EQ(SeriesValue(text, "x_escaped{a=\"q\\\"uote\"}"), 1500);
  // Exact label sets only.
  EXPECT_FALSE(SeriesValue(text, "sambay_worker_failures_total").has_value());
  EXPECT_FALSE(SeriesValue(text, "sambay_worker_info{role=\"decode\"}").has_value());
  EXPECT_FALSE(SeriesValue(text, "sambay_worker_running").has_value());
  EXPECT_EQ(MetricSum(text, "sambay_worker_failures_total"), 3);
  EXPECT_EQ(MetricSum(text, "sambay_worker_info", {{"role", "decode"}}), 1);
  EXPECT_EQ(MetricSum(text, "sambay_worker_info", {{"role", "prefill"}}), 0);
}

TEST(HttpGetTest, ScrapesTheMetricsEndpoint) {
  WorkerMetrics metrics("fp", "decode", "test");
  auto port = metrics.Serve("127.0.0.1", 0);
  ASSERT_TRUE(port.ok()) << port.status();
  metrics.running.Set(3);
  metrics.Failure("data_loss");
  metrics.Reject(RejectReason::kSlots);
  auto text = ScrapeMetrics(*port);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(MetricValue(*text, "sambay_worker_running_sequences"), 3);
  EXPECT_EQ(MetricValue(*text, "sambay_worker_failures_total", {{"reason", "data_loss"}}), 1);
  EXPECT_EQ(MetricValue(*text, "sambay_worker_rejections_total", {{"reason", "slots"}}), 1);
  auto other = HttpGet("127.0.0.1", *port, "/other");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(other->status, 404);
  auto post = HttpExchange("127.0.0.1", *port, "POST /metrics HTTP/1.0\r\n\r\n");
  ASSERT_TRUE(post.ok()) << post.status();
  EXPECT_EQ(post->status, 405);
  EXPECT_TRUE(ScrapeMetrics(*port).ok());
}

TEST(HttpGetTest, RefusedConnectionIsAnError) {
  // Port 1 on loopback: nothing listens there in a test environment.
  auto r = HttpGet("127.0.0.1", 1, "/metrics", absl::Seconds(2));
  EXPECT_FALSE(r.ok());
}

}  // namespace
}  // namespace sambay::testing
