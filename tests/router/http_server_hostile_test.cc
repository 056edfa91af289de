// Hostile clients against HttpServer (router/http_server.h) in this process, with a trivial
// handler and short timeouts: slow-loris headers and bodies, idle keep-alive, the connection
// limit, a stream nobody reads, a pipelining flood, stale exchange handles, a throwing handler,
// HTTP/1.0 streams, HEAD, and Stop with calls in flight.
#include "tests/router/http_raw.h"

namespace sambay::testing {
namespace {

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
