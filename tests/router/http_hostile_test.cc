// Hostile clients against the router's HTTP listener (router/http_server.h), over raw sockets:
// a real cluster (one worker, a router with --http-port) gets a table of malformed, oversized,
// smuggling-shaped and deeply nested requests, each with its expected status (and whether the
// connection closes), then clients that never read a stream, that leave mid-stream, 1,000
// connections opened and closed, and a router out of descriptors. After each, the router is
// alive and answers. (The listener alone, in process: http_server_hostile_test.cc.)
#include "tests/router/http_raw.h"

namespace sambay::testing {
namespace {

// ---- The router ------------------------------------------------------------------------------

constexpr int64_t kMaxBody = 1 << 20;  // the router's --max-request-bytes here

class HttpHostileRouter : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new Cluster();
    auto port = FreePort();
    if (!port.ok()) {
      *started_ = port.status();
      return;
    }
    port_ = *port;
    *started_ = cluster_->Start(
        0, 0, 1,
        {"--http-port", absl::StrCat(port_), "--write-timeout-seconds", "1",
         "--max-pending-output-bytes", "65536", "--max-request-bytes", absl::StrCat(kMaxBody)});
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(started_->ok()) << *started_ << "\n" << cluster_->Logs(); }

  Cluster& c() { return *cluster_; }
  pid_t pid() { return c().router().process().pid(); }

  // One request on a fresh connection, read until `n` responses came or the peer closed.
  std::vector<Resp> Roundtrip(const std::string& request, size_t n = 1,
                              absl::Duration timeout = absl::Seconds(10)) {
    RawConn conn(port_);
    EXPECT_TRUE(conn.ok());
    conn.Send(request);
    const bool closed = conn.ReadUntil(
        [n](const std::string& in) { return Parse(in, false).size() >= n; }, timeout);
    return Parse(conn.received(), closed);
  }

  // The router runs, answers /health, and completes a small request.
  void ExpectServing(const std::string& after) {
    ASSERT_TRUE(c().router().process().Running()) << "the router died after " << after << "\n"
                                                  << c().Logs();
    const std::vector<Resp> health = Roundtrip(kHealth);
    ASSERT_EQ(health.size(), 1u) << after;
    EXPECT_EQ(health[0].status, 200) << after;
    const std::vector<Resp> done = Roundtrip(
        PostRequest("/v1/completions", R"({"model":"tiny","prompt":"hello","max_tokens":4})"));
    ASSERT_EQ(done.size(), 1u) << after;
    EXPECT_EQ(done[0].status, 200) << after << ": " << done[0].body;
    EXPECT_TRUE(absl::StrContains(done[0].body, "text_completion")) << done[0].body;
  }

  static Cluster* cluster_;
  static int port_;
  static absl::Status* started_;
};

Cluster* HttpHostileRouter::cluster_ = nullptr;
int HttpHostileRouter::port_ = 0;
absl::Status* HttpHostileRouter::started_ = new absl::Status(absl::UnknownError("not started"));

struct Case {
  Case(std::string name, std::string request, std::vector<int> statuses, bool closes,
       std::string body_has = "", std::string head_has = "", bool head_first = false,
       bool shutdown = false)
      : name(std::move(name)),
        request(std::move(request)),
        statuses(std::move(statuses)),
        closes(closes),
        body_has(std::move(body_has)),
        head_has(std::move(head_has)),
        head_first(head_first),
        shutdown(shutdown) {}
  std::string name;
  std::string request;
  std::vector<int> statuses;  // of the responses, in order
  bool closes;                // the server closes the connection after them
  std::string body_has;       // in the first response's body
  std::string head_has;       // in the first response's header
  bool head_first;            // the first request is a HEAD
  bool shutdown;              // the client half-closes after sending
};

std::vector<Case> MalformedCases() {
  const std::string deep(100000, '[');
  const std::string undeep(100000, ']');
  std::string deep_objects;
  for (int i = 0; i < 50000; ++i) deep_objects += "{\"a\":";
  deep_objects += "1";
  deep_objects.append(50000, '}');  // (not "1" + std::string: GCC 12's -Wrestrict misfires)
  std::string tiny_headers, many_headers, chunked_over;
  for (int i = 0; i < 3000; ++i) tiny_headers += "a:b\r\n";
  for (int i = 0; i < 10000; ++i) many_headers += absl::StrCat("x-h", i, ": v\r\n");
  for (int64_t sent = 0; sent <= kMaxBody; sent += 65536) {
    chunked_over += absl::StrCat("10000\r\n", std::string(65536, 'a'), "\r\n");
  }
  const std::string cl = "POST /v1/completions HTTP/1.1\r\nHost: x\r\n";
  return {
      {"binary garbage",
       std::string("\x00\x01\x02\xff\xfe\x80garbage\r\n\r\n", 17),
       {400},
       true,
       "malformed HTTP request"},
      {"TLS client hello",
       std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11) + std::string(64, '\x00') +
           "\r\n\r\n",
       {400},
       true},
      {"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {400}, true},
      {"HTTP/1.0 without Host", "GET /health HTTP/1.0\r\n\r\n", {200}, true},
      {"HTTP/1.1 without Host", "GET /health HTTP/1.1\r\n\r\n", {400}, true, "Host"},
      {"two Host headers", "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", {400}, true},
      {"20 KiB header line",
       absl::StrCat("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ", std::string(20 << 10, 'a'),
                    "\r\n\r\n"),
       {431},
       true,
       "header is larger"},
      {"10,000 headers",
       absl::StrCat("GET /health HTTP/1.1\r\nHost: x\r\n", many_headers, "\r\n"),
       {431},
       true},
      {"3,000 tiny headers within the limit",
       absl::StrCat("GET /health HTTP/1.1\r\nHost: x\r\n", tiny_headers, "\r\n"),
       {200},
       false},
      {"20 KiB URL",
       absl::StrCat("GET /", std::string(20 << 10, 'u'), " HTTP/1.1\r\nHost: x\r\n\r\n"),
       {431},
       true},
      {"Content-Length over the limit, no body sent",
       absl::StrCat(cl, "Content-Length: ", kMaxBody + 1, "\r\n\r\n"),
       {413},
       true,
       "larger than the limit"},
      {"Content-Length over the limit with 100-continue",
       absl::StrCat(cl, "Expect: 100-continue\r\nContent-Length: 1000000000\r\n\r\n"),
       {413},
       true},
      {"chunked body over the limit",
       absl::StrCat(cl, "Transfer-Encoding: chunked\r\n\r\n", chunked_over),
       {413},
       true,
       "larger than the limit"},
      {"body shorter than Content-Length, then EOF",
       absl::StrCat(cl, "Content-Length: 100\r\n\r\n{\"model\":\"tiny\"}"),
       {400},
       true,
       "partial message",
       "",
       false,
       true},
      {"negative Content-Length",
       absl::StrCat(cl, "Content-Length: -1\r\n\r\n"),
       {400},
       true,
       "Content-Length"},
      {"overflowing Content-Length",
       absl::StrCat(cl, "Content-Length: 99999999999999999999999999\r\n\r\n"),
       {400},
       true},
      {"two different Content-Lengths",
       absl::StrCat(cl, "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x"),
       {400},
       true},
      {"Content-Length and chunked",
       absl::StrCat(cl, "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
       {400},
       true},
      {"Transfer-Encoding without chunked (smuggling)",
       absl::StrCat(cl, "Transfer-Encoding: gzip\r\n\r\n", kHealth),
       {400},
       true,
       "Transfer-Encoding"},
      {"bad chunk size", absl::StrCat(cl, "Transfer-Encoding: chunked\r\n\r\nzz\r\n"), {400}, true},
      {"bare LF line ends", "GET /health HTTP/1.1\nHost: x\n\n", {400}, true},
      {"NUL in a header value",
       absl::StrCat("GET /health HTTP/1.1\r\nHost: x\r\nX: a", std::string(1, '\0'), "b\r\n\r\n"),
       {400},
       true},
      {"space in the target", "GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n", {400}, true},
      {"invalid JSON", PostRequest("/v1/completions", "{\"model\":"), {400}, false, "invalid JSON"},
      {"JSON not an object",
       PostRequest("/v1/completions", "[1,2]"),
       {400},
       false,
       "expected a JSON object"},
      {"invalid UTF-8 in a string",
       PostRequest("/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"a\xff\xfe\"}"),
       {400},
       false,
       "UTF-8"},
      {"100k unclosed '['", PostRequest("/v1/completions", deep), {400}, false, "invalid JSON"},
      {"100k nested arrays",
       PostRequest("/v1/completions", deep + undeep),
       {400},
       false,
       "expected a JSON object"},
      {"100k nested arrays in a field",
       PostRequest("/v1/completions",
                   absl::StrCat(R"({"model":"tiny","prompt":"x","stop":)", deep, undeep, "}")),
       {400},
       false,
       "stop"},
      {"50k nested objects",
       PostRequest("/v1/chat/completions", deep_objects),
       {400},
       false,
       "error"},
      {"DELETE a completion route",
       "DELETE /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n",
       {405},
       false,
       "not allowed",
       "Allow: POST"},
      {"GET a completion route",
       "GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n",
       {405},
       false,
       "",
       "Allow: POST"},
      {"POST /health", PostRequest("/health", "{}"), {405}, false, "", "Allow: GET"},
      {"unknown method", "BREW /health HTTP/1.1\r\nHost: x\r\n\r\n", {405}, false},
      {"unknown path", "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", {404}, false, "no route"},
      {"HEAD /health, then GET",
       absl::StrCat("HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n", kHealth),
       {200, 200},
       false,
       "",
       "Content-Length: 3",
       true},
      {"pipelined GETs",
       absl::StrCat(kHealth, "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"),
       {200, 200},
       false},
      {"pipelined completion and GET",
       absl::StrCat(
           PostRequest("/v1/completions", R"({"model":"tiny","prompt":"hi","max_tokens":3})"),
           "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"),
       {200, 200},
       false,
       "text_completion"},
  };
}

// Runs one case on its own connection; on a connection that stays open, a further request
// must be answered (the server did not lose its place in the byte stream).
void RunCase(int port, const Case& k) {
  SCOPED_TRACE(k.name);
  RawConn conn(port);
  ASSERT_TRUE(conn.ok());
  conn.Send(k.request);  // may fail part-way: the server answers early and closes
  if (k.shutdown) conn.ShutdownWrite();
  std::vector<bool> head = {k.head_first};
  const size_t n = k.statuses.size();
  bool closed = conn.ReadUntil(
      [&](const std::string& in) { return Parse(in, false, head).size() >= n; }, absl::Seconds(10));
  if (k.closes && !closed) closed = conn.WaitClosed(absl::Seconds(3));
  const std::vector<Resp> got = Parse(conn.received(), closed, head);
  ASSERT_EQ(got.size(), n) << Describe(conn.received());
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(got[i].status, k.statuses[i]) << i;
  if (n > 0) {
    EXPECT_TRUE(absl::StrContains(got[0].body, k.body_has)) << got[0].body;
    EXPECT_TRUE(absl::StrContains(got[0].head, k.head_has)) << got[0].head;
    if (got[0].status >= 400) {  // an OpenAI error body
      EXPECT_TRUE(absl::StrContains(got[0].body, "{\"error\":{")) << got[0].body;
    }
  }
  if (k.head_first) {
    EXPECT_EQ(got[0].body, "");
    EXPECT_EQ(got[1].body, "{}\n");
  }
  EXPECT_FALSE(absl::StrContains(conn.received(), "100 Continue")) << Describe(conn.received());
  if (k.closes) {
    EXPECT_TRUE(closed) << "the connection stayed open";
    return;
  }
  EXPECT_FALSE(closed) << "the connection closed";
  ASSERT_TRUE(conn.Send(kHealth));
  head.assign(n + 1, false);
  head[0] = k.head_first;
  conn.ReadUntil([&](const std::string& in) { return Parse(in, false, head).size() > n; },
                 absl::Seconds(5));
  const std::vector<Resp> after = Parse(conn.received(), false, head);
  ASSERT_EQ(after.size(), n + 1) << "no answer to a request after it: "
                                 << Describe(conn.received());
  EXPECT_EQ(after[n].status, 200);
}

TEST_F(HttpHostileRouter, MalformedRequestsGetTheirStatusAndTheRouterServesOn) {
  for (const Case& k : MalformedCases()) {
    RunCase(port_, k);
    ASSERT_TRUE(c().router().process().Running()) << "the router died after: " << k.name << "\n"
                                                  << c().Logs();
  }
  ExpectServing("the malformed requests");
}

// A streamed chat completion with large chunks (20 top logprobs per token).
std::string BigStreamRequest(int max_tokens) {
  return PostRequest(
      "/v1/chat/completions",
      absl::StrCat(R"({"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":)",
                   max_tokens,
                   R"(,"stream":true,"ignore_eos":true,"logprobs":true,"top_logprobs":20})"));
}

// The listener bounds each connection's kernel send buffer (HttpServerOptions::
// send_buffer_bytes, 256 KiB): the stream stalls after well under 1 MB, whatever tcp_wmem allows
// (with the kernel's autotuning, up to 4 MiB here, a stream of ~4.5 MB was cut or not by chance).
TEST_F(HttpHostileRouter, StreamNobodyReadsIsCutOffWhileOthersAreServed) {
  const double cut_before =
      c().router().MetricSum("sambay_router_request_failures_total", {{"reason", "slow_client"}});
  RawConn reader(port_, 4096);
  ASSERT_TRUE(reader.Send(BigStreamRequest(3900)));  // about 4.5 MB of events
  // Another client is served while that stream is stuck.
  ExpectServing("a stuck stream began");
  // Cut off by the flow (its write waited more than --write-timeout-seconds 1, or its output
  // piled up past --max-pending-output-bytes) long before the stream could end.
  EXPECT_EQ(c().router().WaitMetricSum(
                "sambay_router_request_failures_total", {{"reason", "slow_client"}},
                [&](double v) { return v > cut_before; }, absl::Seconds(10)),
            cut_before + 1)
      << c().Logs();
  EXPECT_TRUE(reader.WaitClosed(absl::Seconds(10))) << "the connection stayed open";
  EXPECT_FALSE(absl::StrContains(reader.received(), "data: [DONE]"));
  EXPECT_EQ(c().router().WaitMetricSum("sambay_router_running_requests", {},
                                       [](double v) { return v == 0; }),
            0);
  EXPECT_TRUE(c().WaitWorkersIdle(absl::Seconds(10)).ok()) << c().Logs();
  ExpectServing("a stream nobody read");
}

TEST_F(HttpHostileRouter, ClientThatLeavesMidStreamFreesTheWorker) {
  const double cancelled_before =
      c().router().MetricSum("sambay_router_request_failures_total", {{"reason", "cancelled"}});
  {
    RawConn conn(port_);
    ASSERT_TRUE(conn.Send(BigStreamRequest(3000)));
    conn.ReadUntil([](const std::string& in) { return absl::StrContains(in, "data: {"); },
                   absl::Seconds(10));
    ASSERT_TRUE(absl::StrContains(conn.received(), "data: {")) << Describe(conn.received());
  }  // closed mid-stream
  EXPECT_EQ(c().router().WaitMetricSum("sambay_router_running_requests", {},
                                       [](double v) { return v == 0; }),
            0);
  EXPECT_TRUE(c().WaitWorkersIdle(absl::Seconds(10)).ok()) << c().Logs();
  EXPECT_GT(
      c().router().WaitMetricSum("sambay_router_request_failures_total", {{"reason", "cancelled"}},
                                 [&](double v) { return v > cancelled_before; }),
      cancelled_before);
  ExpectServing("a client left mid-stream");
}

// Opens `n` connections in batches of 100; each closes at once, after a partial request, or
// after a whole request it does not read the answer to.
void ChurnConnections(int port, int n) {
  for (int done = 0; done < n; done += 100) {
    std::vector<std::unique_ptr<RawConn>> batch;
    for (int i = done; i < done + 100 && i < n; ++i) {
      auto conn = std::make_unique<RawConn>(port);
      if (i % 3 == 1) conn->Send("GET /health HTTP/1.1\r\nHo");
      if (i % 3 == 2) conn->Send(kHealth);
      batch.push_back(std::move(conn));
    }
  }
}

TEST_F(HttpHostileRouter, ThousandConnectionsLeakNoDescriptorsOrMemory) {
  ChurnConnections(port_, 100);  // warm up (allocator pools, buffers)
  ASSERT_TRUE(WaitFor([&] { return CountFds(pid()) > 0; }, absl::Seconds(1)));
  int fds_before = CountFds(pid());
  WaitFor(
      [&] {
        const int now = CountFds(pid());
        const bool settled = now == fds_before;
        fds_before = now;
        return settled;
      },
      absl::Seconds(2));
  const int64_t rss_before = RssKb(pid());
  ChurnConnections(port_, 1000);
  int fds_after = -1;
  EXPECT_TRUE(WaitFor(
      [&] {
        fds_after = CountFds(pid());
        return fds_after <= fds_before + 4;  // slack for the router's own (gRPC) descriptors
      },
      absl::Seconds(10)))
      << "descriptors: " << fds_before << " before, " << fds_after << " after";
  const int64_t rss_after = RssKb(pid());
  EXPECT_LT(rss_after - rss_before, 16 << 10)
      << "RSS grew from " << rss_before << " kB to " << rss_after << " kB";
  ExpectServing("1,000 connections");
}

TEST_F(HttpHostileRouter, OutOfDescriptorsTheAcceptLoopBacksOff) {
  const int open = CountFds(pid());
  ASSERT_GT(open, 0);
  rlimit old{};
  ASSERT_EQ(prlimit(pid(), RLIMIT_NOFILE, nullptr, &old), 0) << errno;
  rlimit low = old;
  low.rlim_cur = static_cast<rlim_t>(open + 3);
  ASSERT_EQ(prlimit(pid(), RLIMIT_NOFILE, &low, nullptr), 0) << errno;
  std::vector<std::unique_ptr<RawConn>> waiting;
  for (int i = 0; i < 10; ++i) waiting.push_back(std::make_unique<RawConn>(port_));
  // Some connections wait in the backlog: accepting them fails (EMFILE). Retrying at once
  // would spin a thread; the server waits between tries.
  const double cpu_before = CpuSeconds(pid());
  absl::SleepFor(absl::Seconds(1));  // the window the CPU time is measured over
  const double cpu = CpuSeconds(pid()) - cpu_before;
  ASSERT_EQ(prlimit(pid(), RLIMIT_NOFILE, &old, nullptr), 0) << errno;
  EXPECT_LT(cpu, 0.3) << "the router used " << cpu << " s of CPU in 1 s while out of descriptors";
  // Once descriptors are free again, the waiting connections are served.
  RawConn& last = *waiting.back();
  ASSERT_TRUE(last.Send(kHealth));
  last.ReadUntil([](const std::string& in) { return Parse(in, false).size() == 1; },
                 absl::Seconds(5));
  const std::vector<Resp> got = Parse(last.received(), false);
  ASSERT_EQ(got.size(), 1u) << Describe(last.received());
  EXPECT_EQ(got[0].status, 200);
  waiting.clear();
  ExpectServing("running out of descriptors");
}

}  // namespace
}  // namespace sambay::testing
