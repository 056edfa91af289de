// The router's metrics port under hostile HTTP: every method,
// malformed and oversized requests, and idle connections get an HTTP error or are dropped; the
// router keeps running and keeps serving /metrics promptly.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/router/router_harness.h"
#include "tests/worker/http_get.h"

namespace sambay::testing {
namespace {

void ExpectRouterAlive(Cluster& c, const std::string& after) {
  ASSERT_TRUE(c.router().process().Running())
      << after << " on the metrics port killed the router: "
      << DescribeWaitStatus(c.router().process().WaitExit(absl::ZeroDuration()).value_or(0)) << "\n"
      << c.Logs();
}

TEST(RouterMetricsHttpTest, EveryMethodAndMalformedRequestGetsAnHttpError) {
  Cluster c;
  ASSERT_TRUE(c.Start(0, 0, 1).ok()) << c.Logs();
  const int port = c.router().metrics_port();
  for (const char* method : {"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"}) {
    for (const char* path : {"/metrics", "/"}) {
      const std::string what = absl::StrCat(method, " ", path);
      SCOPED_TRACE(what);
      auto r =
          HttpExchange("127.0.0.1", port,
                       absl::StrCat(method, " ", path, " HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}"));
      EXPECT_TRUE(r.ok()) << r.status();
      if (r.ok()) {
        EXPECT_EQ(r->status, 405);
        EXPECT_NE(r->headers.find("Allow: GET, HEAD"), std::string::npos) << r->headers;
      }
      ExpectRouterAlive(c, what);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  auto head = HttpExchange("127.0.0.1", port, "HEAD /metrics HTTP/1.0\r\n\r\n");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->body, "");
  auto nope = HttpGet("127.0.0.1", port, "/nope");
  ASSERT_TRUE(nope.ok()) << nope.status();
  EXPECT_EQ(nope->status, 404);
  for (const std::string& bad :
       {std::string("BREW /metrics HTTP/1.0\r\n\r\n"), std::string("\x16\x03\x01\x02\x00\x01", 6),
        std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        absl::StrCat("GET /metrics HTTP/1.0\r\nX: ", std::string(32 << 10, 'x'), "\r\n\r\n"),
        absl::StrCat("PUT /metrics HTTP/1.0\r\nContent-Length: 100000\r\n\r\n",
                     std::string(100000, 'y'))}) {
    SCOPED_TRACE(bad.substr(0, 24));
    auto r = HttpExchange("127.0.0.1", port, bad);
    if (r.ok()) {  // else: the server closed without an answer
      EXPECT_GE(r->status, 400);
    }
    ExpectRouterAlive(c, bad.substr(0, 24));
    if (::testing::Test::HasFatalFailure()) return;
  }
  EXPECT_EQ(c.router().MetricSum("sambay_router_worker_up"), 1);
}

TEST(RouterMetricsHttpTest, IdleConnectionsDoNotBlockScrapes) {
  Cluster c;
  ASSERT_TRUE(c.Start(0, 0, 1).ok()) << c.Logs();
  std::vector<int> idle;
  for (int i = 0; i < 50; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(c.router().metrics_port()));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    idle.push_back(fd);
  }
  const absl::Time start = absl::Now();
  auto text = ScrapeMetrics(c.router().metrics_port(), absl::Seconds(3));
  EXPECT_TRUE(text.ok()) << text.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  for (int fd : idle) close(fd);
  ExpectRouterAlive(c, "50 idle connections");
}

}  // namespace
}  // namespace sambay::testing
