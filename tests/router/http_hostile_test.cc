// Hostile clients against the router's HTTP listener (router/http_server.h), over raw sockets:
//  * HttpHostileRouter: a real cluster (one worker, a router with --http-port) gets a table of
//    malformed, oversized, smuggling-shaped and deeply nested requests, each with its expected
//    status (and whether the connection closes), then clients that never read a stream, that
//    leave mid-stream, 1,000 connections opened and closed, and a router out of descriptors.
//    After each, the router is alive and answers.
//  * HttpHostileServer: an HttpServer in this process with a trivial handler and short timeouts:
//    slow-loris headers and bodies, idle keep-alive, the connection limit, a stream nobody reads,
//    a pipelining flood, stale exchange handles, a throwing handler, HTTP/1.0 streams, HEAD, and
//    Stop with calls in flight.
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/mutex.h"
#include "gtest/gtest.h"
#include "router/http_server.h"
#include "tests/router/router_harness.h"

namespace sambay::testing {
namespace {

// ---- A raw TCP client ------------------------------------------------------------------------

class RawConn {
 public:
  // Connects to 127.0.0.1:port; rcvbuf > 0 sets SO_RCVBUF first (a client that takes little).
  explicit RawConn(int port, int rcvbuf = 0) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return;
    if (rcvbuf > 0) setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) Close();
  }
  ~RawConn() { Close(); }
  RawConn(const RawConn&) = delete;
  RawConn& operator=(const RawConn&) = delete;

  bool ok() const { return fd_ >= 0; }
  // Sends all of `data`; false when the peer closed or reset.
  bool Send(const std::string& data) {
    size_t off = 0;
    while (off < data.size()) {
      const ssize_t n = send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }
  void ShutdownWrite() { shutdown(fd_, SHUT_WR); }
  // Reads until `done(received)` holds, the peer closes (EOF or reset), or `timeout`.
  // Returns whether the peer closed.
  bool ReadUntil(const std::function<bool(const std::string&)>& done, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!closed_ && !(done && done(in_))) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) break;
      pollfd p{fd_, POLLIN, 0};
      const int r = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      char buf[65536];
      const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n > 0) {
        in_.append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        closed_ = true;
      }
    }
    return closed_;
  }
  // Reads (and keeps) what arrives until the peer closes (true) or `timeout` (false).
  bool WaitClosed(absl::Duration timeout) { return ReadUntil(nullptr, timeout); }
  const std::string& received() const { return in_; }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  std::string in_;
  bool closed_ = false;
};

// ---- Responses -------------------------------------------------------------------------------

struct Resp {
  int status = 0;
  std::string head;                            // status line and header fields
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;                            // de-chunked
};

// The chunked body at in[p...]: appends it to *body; the offset past it, or npos if incomplete.
size_t Dechunk(const std::string& in, size_t p, std::string* body) {
  while (true) {
    const size_t eol = in.find("\r\n", p);
    if (eol == std::string::npos) return std::string::npos;
    const size_t size = std::strtoul(in.substr(p, eol - p).c_str(), nullptr, 16);
    p = eol + 2;
    if (size == 0) return in.compare(p, 2, "\r\n") == 0 ? p + 2 : std::string::npos;
    if (p + size + 2 > in.size()) return std::string::npos;
    body->append(in, p, size);
    p += size + 2;
  }
}

// The complete responses at the start of `in` (interim 1xx ones skipped). head[i]: the i-th
// answers a HEAD request (no body). A body without a length ends with the connection: complete
// only when `closed`. Bytes that are not a response give one with status -1.
std::vector<Resp> Parse(const std::string& in, bool closed, const std::vector<bool>& head = {}) {
  std::vector<Resp> out;
  size_t pos = 0;
  while (pos < in.size()) {
    const size_t end = in.find("\r\n\r\n", pos);
    if (end == std::string::npos) break;
    Resp r;
    r.head = in.substr(pos, end - pos);
    if (!absl::StartsWith(r.head, "HTTP/1.") || r.head.size() < 12 ||
        !absl::SimpleAtoi(r.head.substr(9, 3), &r.status)) {
      r.status = -1;
      out.push_back(std::move(r));
      break;
    }
    for (absl::string_view line : absl::StrSplit(r.head, "\r\n")) {
      const size_t colon = line.find(':');
      if (colon == absl::string_view::npos) continue;
      r.headers[absl::AsciiStrToLower(line.substr(0, colon))] =
          std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
    size_t p = end + 4;
    if (r.status / 100 == 1) {
      pos = p;
      continue;
    }
    const bool no_body = (out.size() < head.size() && head[out.size()]) || r.status == 204;
    size_t length = 0;
    if (no_body) {
    } else if (absl::StrContains(r.headers["transfer-encoding"], "chunked")) {
      p = Dechunk(in, p, &r.body);
      if (p == std::string::npos) break;
    } else if (absl::SimpleAtoi(r.headers["content-length"], &length)) {
      if (p + length > in.size()) break;
      r.body = in.substr(p, length);
      p += length;
    } else {
      if (!closed) break;
      r.body = in.substr(p);
      p = in.size();
    }
    out.push_back(std::move(r));
    pos = p;
  }
  return out;
}

std::string Describe(const std::string& raw) {
  return absl::CHexEscape(raw.substr(0, 600)) + (raw.size() > 600 ? "..." : "");
}

// A request with a body (Content-Length), HTTP/1.1.
std::string PostRequest(const std::string& path, const std::string& body,
                        const std::string& extra_headers = "") {
  return absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
                      extra_headers, "Content-Length: ", body.size(), "\r\n\r\n", body);
}

const std::string kHealth = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

// ---- /proc -----------------------------------------------------------------------------------

int CountFds(pid_t pid) {
  DIR* d = opendir(absl::StrCat("/proc/", pid, "/fd").c_str());
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

int64_t RssKb(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(f, line)) {
    int64_t kb = 0;
    if (absl::StartsWith(line, "VmRSS:") &&
        absl::SimpleAtoi(absl::StripSuffix(absl::StripAsciiWhitespace(line.substr(6)), " kB"),
                         &kb)) {
      return kb;
    }
  }
  return -1;
}

// User + system CPU seconds of a process.
double CpuSeconds(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t paren = s.rfind(')');
  if (paren == std::string::npos) return -1;
  std::vector<std::string> fields = absl::StrSplit(s.substr(paren + 2), ' ');
  if (fields.size() < 13) return -1;
  return (std::atof(fields[11].c_str()) + std::atof(fields[12].c_str())) /
         static_cast<double>(sysconf(_SC_CLK_TCK));
}

// The kernel's largest TCP send buffer (tcp_wmem's max), or -1.
int64_t TcpWmemMax() {
  std::ifstream f("/proc/sys/net/ipv4/tcp_wmem");
  int64_t lo = 0, def = 0, hi = -1;
  f >> lo >> def >> hi;
  return hi;
}

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
  deep_objects += "1" + std::string(50000, '}');
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

TEST_F(HttpHostileRouter, StreamNobodyReadsIsCutOffWhileOthersAreServed) {
  if (TcpWmemMax() > (4 << 20)) {
    GTEST_SKIP() << "tcp_wmem allows send buffers over 4 MiB: the whole stream would fit";
  }
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

// ---- The server in process -------------------------------------------------------------------

// An HttpServer with a trivial handler. Routes:
//   /ok                      200 "ok"
//   /stream?chunks=N&size=S  N chunks of S bytes, then the end
//   /hold                    no response: the exchange is parked (held())
//   /first, /second          /second uses the exchange of /first (ended) before answering
//   /throw                   the handler throws
class TestServer {
 public:
  explicit TestServer(HttpServerOptions options)
      : server_(options, [this](std::shared_ptr<HttpExchange> ex) { Handle(std::move(ex)); }) {
    auto port = server_.Start();
    port_ = port.ok() ? *port : -1;
  }
  // The parked exchanges go first: they keep their connections open, and Stop would wait.
  ~TestServer() {
    MutexLock lock(&mu_);
    held_.clear();
    first_.reset();
  }
  int port() const { return port_; }
  HttpServer& server() { return server_; }
  size_t held() {
    MutexLock lock(&mu_);
    return held_.size();
  }
  std::shared_ptr<HttpExchange> Held(size_t i) {
    MutexLock lock(&mu_);
    return held_.at(i);
  }

  std::atomic<int> handled{0}, gone{0}, send_failed{0}, stale_done{0};
  std::atomic<int> stale_gone{0};

 private:
  void Handle(std::shared_ptr<HttpExchange> ex) {
    ++handled;
    const std::string& t = ex->target();
    if (t == "/ok") return ex->Respond(200, "text/plain", "ok");
    if (t == "/throw") throw std::runtime_error("boom");
    if (t == "/first") {
      MutexLock lock(&mu_);
      first_ = ex;
      return ex->Respond(200, "text/plain", "first");
    }
    if (t == "/second") return Second(ex);
    ex->OnClientGone([this] { ++gone; });
    int chunks = 0, size = 0;
    if (std::sscanf(t.c_str(), "/stream?chunks=%d&size=%d", &chunks, &size) == 2) {
      return Stream(ex, chunks, size);
    }
    MutexLock lock(&mu_);
    held_.push_back(ex);
  }
  void Stream(std::shared_ptr<HttpExchange> ex, int left, int size) {
    if (left == 0) return ex->End("", nullptr);
    ex->Send("text/plain", std::string(static_cast<size_t>(size), 'x'),
             [this, ex, left, size](bool ok) {
               if (!ok) {
                 ++send_failed;
                 return;
               }
               Stream(ex, left - 1, size);
             });
  }
  // The stale handle of /first may not touch this request.
  void Second(const std::shared_ptr<HttpExchange>& ex) {
    std::shared_ptr<HttpExchange> first;
    {
      MutexLock lock(&mu_);
      first = first_;
    }
    first->OnClientGone([this] { ++stale_gone; });
    first->Abort();
    first->Respond(500, "text/plain", "stale", {}, [this](bool ok) { stale_done += ok ? 100 : 1; });
    first->Send("text/plain", "stale", [this](bool ok) { stale_done += ok ? 100 : 1; });
    ex->Respond(200, "text/plain", "second");
  }

  int port_ = -1;
  Mutex mu_;
  std::vector<std::shared_ptr<HttpExchange>> held_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<HttpExchange> first_ ABSL_GUARDED_BY(mu_);
  HttpServer server_;  // last: stopped before the members its handler uses go
};

HttpServerOptions Fast() {
  HttpServerOptions o;
  o.host = "127.0.0.1";
  o.threads = 2;
  o.header_timeout = absl::Milliseconds(300);
  o.body_timeout = absl::Milliseconds(300);
  o.write_timeout = absl::Milliseconds(300);
  return o;
}

// Sends a request on a fresh connection and reads `n` responses.
std::vector<Resp> Ask(int port, const std::string& request, size_t n = 1) {
  RawConn conn(port);
  conn.Send(request);
  const bool closed = conn.ReadUntil(
      [n](const std::string& in) { return Parse(in, false).size() >= n; }, absl::Seconds(5));
  return Parse(conn.received(), closed);
}

void ExpectOk(int port) {
  const std::vector<Resp> r = Ask(port, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].status, 200);
  EXPECT_EQ(r[0].body, "ok");
}

// Sends `prefix`, then `trickle` one byte every `gap`, until the server closes; the time from
// the first byte to the close (InfiniteDuration if it never closed).
absl::Duration TrickleUntilClosed(RawConn& conn, const std::string& prefix,
                                  const std::string& trickle, absl::Duration gap) {
  const absl::Time start = absl::Now();
  conn.Send(prefix);
  for (char ch : trickle) {
    // The pause between bytes is the attack; the read notices the close at once.
    if (conn.ReadUntil(nullptr, gap)) return absl::Now() - start;
    conn.Send(std::string(1, ch));
  }
  return conn.WaitClosed(absl::Seconds(2)) ? absl::Now() - start : absl::InfiniteDuration();
}

TEST(HttpHostileServer, SlowLorisHeaderIsCutOffAtTheHeaderTimeout) {
  TestServer s(Fast());
  ASSERT_GT(s.port(), 0);
  RawConn conn(s.port());
  // Each byte comes well within the timeout; the header as a whole does not.
  const absl::Duration took =
      TrickleUntilClosed(conn, "GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: ", std::string(40, 'a'),
                         absl::Milliseconds(100));
  EXPECT_GE(took, absl::Milliseconds(250));
  EXPECT_LT(took, absl::Milliseconds(1500));
  EXPECT_EQ(s.handled.load(), 0);
  ExpectOk(s.port());
}

TEST(HttpHostileServer, SlowBodyIsCutOffAtTheBodyTimeout) {
  TestServer s(Fast());
  ASSERT_GT(s.port(), 0);
  RawConn conn(s.port());
  const absl::Duration took =
      TrickleUntilClosed(conn, "POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
                         std::string(100, 'b'), absl::Milliseconds(50));
  EXPECT_GE(took, absl::Milliseconds(250));
  EXPECT_LT(took, absl::Milliseconds(1500));
  EXPECT_EQ(s.handled.load(), 0);
  ExpectOk(s.port());
}

TEST(HttpHostileServer, IdleKeepAliveConnectionIsClosed) {
  TestServer s(Fast());
  ASSERT_GT(s.port(), 0);
  RawConn conn(s.port());
  ASSERT_TRUE(conn.Send("GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"));
  conn.ReadUntil([](const std::string& in) { return Parse(in, false).size() == 1; },
                 absl::Seconds(5));
  const absl::Time answered = absl::Now();
  ASSERT_EQ(Parse(conn.received(), false).size(), 1u);
  EXPECT_TRUE(conn.WaitClosed(absl::Seconds(3)));
  EXPECT_LT(absl::Now() - answered, absl::Milliseconds(1500));
  EXPECT_TRUE(WaitFor([&] { return s.server().connections() == 0; }, absl::Seconds(5)));
}

TEST(HttpHostileServer, ConnectionBeyondTheLimitGets503) {
  HttpServerOptions o = Fast();
  o.max_connections = 4;
  o.header_timeout = absl::Seconds(10);  // the idle ones stay
  TestServer s(o);
  ASSERT_GT(s.port(), 0);
  std::vector<std::unique_ptr<RawConn>> idle;
  for (int i = 0; i < 4; ++i) idle.push_back(std::make_unique<RawConn>(s.port()));
  ASSERT_TRUE(WaitFor([&] { return s.server().connections() == 4; }, absl::Seconds(5)));
  RawConn extra(s.port());
  extra.Send("GET /ok HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_TRUE(extra.WaitClosed(absl::Seconds(5)));
  const std::vector<Resp> r = Parse(extra.received(), true);
  ASSERT_EQ(r.size(), 1u) << Describe(extra.received());
  EXPECT_EQ(r[0].status, 503);
  EXPECT_TRUE(absl::StrContains(r[0].body, "too many open HTTP connections")) << r[0].body;
  EXPECT_EQ(s.handled.load(), 0);
  idle.pop_back();
  ASSERT_TRUE(WaitFor([&] { return s.server().connections() == 3; }, absl::Seconds(5)));
  ExpectOk(s.port());
}

TEST(HttpHostileServer, StreamNobodyReadsIsCutOffAtTheWriteTimeout) {
  TestServer s(Fast());
  ASSERT_GT(s.port(), 0);
  RawConn reader(s.port(), 4096);
  // Up to 64 GiB: it ends only by the cut.
  ASSERT_TRUE(reader.Send("GET /stream?chunks=1000000&size=65536 HTTP/1.1\r\nHost: x\r\n\r\n"));
  // Others are served meanwhile.
  ExpectOk(s.port());
  EXPECT_TRUE(WaitFor([&] { return s.send_failed.load() == 1; }, absl::Seconds(10)))
      << "the stalled write was not cut off";
  EXPECT_TRUE(WaitFor([&] { return s.gone.load() == 1; }, absl::Seconds(2)));
  EXPECT_TRUE(reader.WaitClosed(absl::Seconds(30)));
  EXPECT_TRUE(WaitFor([&] { return s.server().connections() == 0; }, absl::Seconds(5)));
  ExpectOk(s.port());
}

TEST(HttpHostileServer, PipelinedFloodWhileWaitingClosesTheConnection) {
  TestServer s(Fast());
  ASSERT_GT(s.port(), 0);
  RawConn conn(s.port());
  ASSERT_TRUE(conn.Send("GET /hold HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(WaitFor([&] { return s.held() == 1; }, absl::Seconds(5)));
  // Its response is being made; the client sends 1 MiB more that the server would have to keep.
  conn.Send(std::string(1 << 20, 'z'));
  EXPECT_TRUE(WaitFor([&] { return s.gone.load() == 1; }, absl::Seconds(5)))
      << "the flood was buffered";
  std::atomic<int> result{-1};
  s.Held(0)->Respond(200, "text/plain", "late", {}, [&](bool ok) { result = ok; });
  EXPECT_TRUE(WaitFor([&] { return result.load() == 0; }, absl::Seconds(5)));
  ExpectOk(s.port());
}

TEST(HttpHostileServer, EndedExchangeCannotTouchTheNextRequest) {
  TestServer s(Fast());
  ASSERT_GT(s.port(), 0);
  RawConn conn(s.port());
  ASSERT_TRUE(conn.Send("GET /first HTTP/1.1\r\nHost: x\r\n\r\n"));
  conn.ReadUntil([](const std::string& in) { return Parse(in, false).size() == 1; },
                 absl::Seconds(5));
  ASSERT_TRUE(conn.Send("GET /second HTTP/1.1\r\nHost: x\r\n\r\n"));
  const bool closed = conn.ReadUntil(
      [](const std::string& in) { return Parse(in, false).size() == 2; }, absl::Seconds(5));
  const std::vector<Resp> r = Parse(conn.received(), closed);
  ASSERT_EQ(r.size(), 2u) << Describe(conn.received());
  EXPECT_EQ(r[0].body, "first");
  EXPECT_EQ(r[1].status, 200);
  EXPECT_EQ(r[1].body, "second");
  EXPECT_FALSE(closed);
  // Both stale calls report failure; the stale gone callback never runs.
  EXPECT_TRUE(WaitFor([&] { return s.stale_done.load() == 2; }, absl::Seconds(5)))
      << s.stale_done.load();
  EXPECT_EQ(s.stale_gone.load(), 0);
}

TEST(HttpHostileServer, HandlerThatThrowsGets500AndTheServerServesOn) {
  TestServer s(Fast());
  ASSERT_GT(s.port(), 0);
  const std::vector<Resp> r =
      Ask(s.port(), "GET /throw HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\n\r\n", 2);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].status, 500);
  EXPECT_TRUE(absl::StrContains(r[0].body, "internal error")) << r[0].body;
  EXPECT_EQ(r[1].status, 200);
  ExpectOk(s.port());
}

TEST(HttpHostileServer, StreamToHttp10IsUnframedAndEndsWithTheClose) {
  TestServer s(Fast());
  ASSERT_GT(s.port(), 0);
  RawConn conn(s.port());
  ASSERT_TRUE(conn.Send("GET /stream?chunks=3&size=5 HTTP/1.0\r\n\r\n"));
  ASSERT_TRUE(conn.WaitClosed(absl::Seconds(5)));
  const std::vector<Resp> r = Parse(conn.received(), true);
  ASSERT_EQ(r.size(), 1u) << Describe(conn.received());
  EXPECT_EQ(r[0].status, 200);
  EXPECT_FALSE(absl::StrContains(r[0].head, "chunked")) << r[0].head;
  EXPECT_EQ(r[0].body, std::string(15, 'x'));
}

TEST(HttpHostileServer, HeadGetsHeadersWithoutABody) {
  TestServer s(Fast());
  ASSERT_GT(s.port(), 0);
  RawConn conn(s.port());
  ASSERT_TRUE(
      conn.Send("HEAD /ok HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\nConnection: "
                "close\r\n\r\n"));
  ASSERT_TRUE(conn.WaitClosed(absl::Seconds(5)));
  const std::vector<Resp> r = Parse(conn.received(), true, {true});
  ASSERT_EQ(r.size(), 2u) << Describe(conn.received());
  EXPECT_TRUE(absl::StrContains(r[0].head, "Content-Length: 2")) << r[0].head;
  EXPECT_EQ(r[0].body, "");
  EXPECT_EQ(r[1].body, "ok") << Describe(conn.received());
}

TEST(HttpHostileServer, StopCompletesEveryCallInFlight) {
  auto s = std::make_unique<TestServer>(Fast());
  ASSERT_GT(s->port(), 0);
  RawConn conn(s->port());
  ASSERT_TRUE(conn.Send("GET /hold HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(WaitFor([&] { return s->held() == 1; }, absl::Seconds(5)));
  std::shared_ptr<HttpExchange> ex = s->Held(0);
  std::atomic<bool> stopped{false};
  std::atomic<int64_t> sends{0}, dones{0};
  // Calls made while Stop closes the connection and then stops the threads: each one's done
  // must run (one call at a time on an open connection, so they start once it is closed).
  std::thread sender([&] {
    WaitFor([&] { return s->gone.load() == 1; }, absl::Seconds(5));
    while (!stopped.load()) {
      if (sends.load() - dones.load() < 1000) {  // a bounded number in flight
        ++sends;
        ex->Send("text/plain", "x", [&](bool) { ++dones; });
      }
      std::this_thread::yield();
    }
  });
  s->server().Stop();
  stopped.store(true);
  sender.join();
  EXPECT_EQ(dones.load(), sends.load()) << "calls whose done never ran";
  std::atomic<int> after{-1};
  ex->Send("text/plain", "x", [&](bool ok) { after = ok; });
  EXPECT_EQ(after.load(), 0);  // at once, after Stop
  ex.reset();
  s.reset();
}

}  // namespace
}  // namespace sambay::testing
