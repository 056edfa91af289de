// HTTPS on HttpServer (router/http_server.h, router/http_tls.h) in this process, with a trivial
// handler and short timeouts. Certificates are made at run time by the `openssl` CLI (EC P-256):
// two CAs, a server certificate from each (SAN IP:127.0.0.1), a client certificate from each.
// Clients: `curl` (what users run), raw TCP (plaintext, stalled handshakes) and an in-process
// Boost.Asio TLS client that sends exact bytes (the limits of http_server_hostile_test.cc over
// TLS).
#include "router/http_tls.h"

#include <sys/stat.h>

#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <filesystem>
#include <optional>

#include "tests/router/http_raw.h"

namespace sambay::testing {
namespace {

namespace beast = boost::beast;
namespace net = boost::asio;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;

// ---- Certificates ----------------------------------------------------------------------------

// `ca` and `other_ca`; server (from ca), server2 (from other_ca), client (from ca),
// other_client (from other_ca): NAME.pem and NAME.key in the directory.
constexpr char kGenerate[] = R"(set -e
cd "$1"
printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' \
  > server.ext
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > client.ext
ca() {
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
    -out "$1.pem" -days 2 -subj "/CN=$1" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign
}
leaf() {  # name, ca, kind, serial
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
    -out "$1.csr" -subj "/CN=$1"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -set_serial "$4" -days 2 \
    -extfile "$3.ext" -out "$1.pem"
}
ca ca
ca other_ca
leaf server ca server 1
leaf server2 other_ca server 2
leaf client ca client 3
leaf other_client other_ca client 4
)";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

// Replaces `to` with a copy of `from` the way a secret mount or cert-manager does: a new file
// renamed over the old one.
void ReplaceFile(const std::string& from, const std::string& to) {
  WriteAll(to + ".tmp", ReadAll(from));
  ASSERT_EQ(std::rename((to + ".tmp").c_str(), to.c_str()), 0) << to;
}

// ---- curl ------------------------------------------------------------------------------------

struct CurlResult {
  int exit_code = -1;
  int http_code = 0;
  std::string body, error;
};

// `curl ARGS https://127.0.0.1:PORT PATH` (5 s at most, no proxy).
CurlResult Curl(const std::string& dir, int port, const std::string& path,
                const std::string& args) {
  static std::atomic<int> n{0};
  const std::string out = absl::StrCat(dir, "/curl", ++n);
  const std::string cmd =
      absl::StrCat("curl -sS --noproxy '*' --max-time 5 -o ", out, ".body -w '%{http_code}' ", args,
                   " 'https://127.0.0.1:", port, path, "' 2>", out, ".err");
  CurlResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[64] = {};
  const size_t got = fread(buf, 1, sizeof(buf) - 1, p);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  (void)absl::SimpleAtoi(absl::string_view(buf, got), &r.http_code);
  r.body = ReadAll(out + ".body");
  r.error = ReadAll(out + ".err");
  return r;
}

// ---- An in-process TLS client that sends exact bytes -----------------------------------------

class TlsConn {
 public:
  // Connects to 127.0.0.1:port and shakes hands, trusting `ca`, presenting cert/key when set.
  // rcvbuf > 0 sets SO_RCVBUF first (a client that takes little).
  TlsConn(int port, const std::string& ca, const std::string& cert = "",
          const std::string& key = "", int rcvbuf = 0)
      : ctx_(ssl::context::tls_client) {
    beast::error_code ec;
    ctx_.load_verify_file(ca, ec);
    if (!cert.empty()) {
      ctx_.use_certificate_chain_file(cert, ec);
      ctx_.use_private_key_file(key, ssl::context::pem, ec);
    }
    ctx_.set_verify_mode(ssl::verify_peer);
    stream_.emplace(ioc_, ctx_);
    tcp::socket& s = stream_->next_layer();
    s.open(tcp::v4(), ec);
    if (rcvbuf > 0) s.set_option(net::socket_base::receive_buffer_size(rcvbuf), ec);
    s.connect({net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)}, ec);
    if (ec) return;
    Run([&](auto done) { stream_->async_handshake(ssl::stream_base::client, done); },
        absl::Seconds(5), &ec);
    ok_ = !ec;
  }

  bool ok() const { return ok_; }
  bool Send(const std::string& data) {
    beast::error_code ec;
    Run([&](auto done) { net::async_write(*stream_, net::buffer(data), done); }, absl::Seconds(5),
        &ec);
    return !ec;
  }
  // Reads until `done(received)` holds, the server closes, or `timeout`; whether it closed.
  bool ReadUntil(const std::function<bool(const std::string&)>& done, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!closed_ && !(done && done(in_))) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) break;
      char buf[65536];
      beast::error_code ec;
      const size_t n =
          Run([&](auto cb) { stream_->async_read_some(net::buffer(buf), cb); }, left, &ec);
      in_.append(buf, n);
      if (ec == net::error::operation_aborted) break;  // the timeout
      if (ec) {  // close_notify (eof), or a close without it (truncated), or a reset
        closed_ = true;
        close_error_ = ec;
      }
    }
    return closed_;
  }
  bool WaitClosed(absl::Duration timeout) { return ReadUntil(nullptr, timeout); }
  const std::string& received() const { return in_; }
  // The server closed after close_notify.
  bool closed_cleanly() const { return closed_ && close_error_ == net::error::eof; }
  // Leaves without close_notify.
  void Drop() {
    beast::error_code ec;
    stream_->next_layer().close(ec);
  }

 private:
  // Starts `op(handler)` and runs it for `timeout` at most (then cancels it); the bytes it moved.
  template <class Op>
  size_t Run(Op op, absl::Duration timeout, beast::error_code* ec) {
    bool finished = false;
    size_t moved = 0;
    op([&](beast::error_code e, auto... n) {
      finished = true;
      *ec = e;
      ((moved = n), ...);
    });
    ioc_.restart();
    ioc_.run_for(absl::ToChronoNanoseconds(timeout));
    if (!finished) {
      beast::error_code ignored;
      stream_->next_layer().cancel(ignored);
      ioc_.restart();
      ioc_.run();
    }
    return moved;
  }

  net::io_context ioc_;
  ssl::context ctx_;
  std::optional<ssl::stream<tcp::socket>> stream_;
  bool ok_ = false, closed_ = false;
  beast::error_code close_error_;
  std::string in_;
};

// ---- The server ------------------------------------------------------------------------------

// An HttpServer with a trivial handler. Routes:
//   /ok                      200 "ok"
//   /stream?chunks=N&size=S  N chunks of S bytes, then the end
//   /hold                    no response: the exchange is parked (held())
class TestServer {
 public:
  explicit TestServer(const HttpServerOptions& options)
      : server_(options, [this](std::shared_ptr<HttpExchange> ex) { Handle(std::move(ex)); }) {
    auto port = server_.Start();
    status_ = port.status();
    port_ = port.ok() ? *port : -1;
  }
  ~TestServer() {
    MutexLock lock(&mu_);
    held_.clear();
  }
  int port() const { return port_; }
  const absl::Status& status() const { return status_; }
  HttpServer& server() { return server_; }
  size_t held() {
    MutexLock lock(&mu_);
    return held_.size();
  }
  // Drops the parked exchanges (each keeps its connection until then).
  void Release() {
    MutexLock lock(&mu_);
    held_.clear();
  }

  std::atomic<int> handled{0}, gone{0}, send_failed{0};

 private:
  void Handle(std::shared_ptr<HttpExchange> ex) {
    ++handled;
    const std::string& t = ex->target();
    if (t == "/ok") return ex->Respond(200, "text/plain", "ok");
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

  absl::Status status_;
  int port_ = -1;
  Mutex mu_;
  std::vector<std::shared_ptr<HttpExchange>> held_ ABSL_GUARDED_BY(mu_);
  HttpServer server_;  // last: stopped before the members its handler uses go
};

// ---- The tests -------------------------------------------------------------------------------

class HttpTls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::system("command -v openssl >/dev/null 2>&1 && command -v curl >/dev/null 2>&1")) {
      skip_ = "needs the openssl and curl commands";
      return;
    }
    char tmpl[] = "/tmp/sambay-http-tls-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    WriteAll(dir_ + "/gen.sh", kGenerate);
    const std::string cmd =
        absl::StrCat("sh ", dir_, "/gen.sh ", dir_, " >", dir_, "/gen.log 2>&1");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << ReadAll(dir_ + "/gen.log");
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << skip_;
  }

  static std::string Pem(const std::string& name) { return absl::StrCat(dir_, "/", name, ".pem"); }
  static std::string Key(const std::string& name) { return absl::StrCat(dir_, "/", name, ".key"); }
  // curl trusting `ca`.
  static CurlResult Get(int port, const std::string& path, const std::string& ca = "ca",
                        const std::string& args = "") {
    return Curl(dir_, port, path, absl::StrCat("--cacert ", Pem(ca), " ", args));
  }
  static HttpServerOptions Options() {
    HttpServerOptions o;
    o.host = "127.0.0.1";
    o.threads = 2;
    o.header_timeout = absl::Milliseconds(500);
    o.body_timeout = absl::Milliseconds(500);
    o.write_timeout = absl::Milliseconds(500);
    o.tls_cert_file = Pem("server");
    o.tls_key_file = Key("server");
    return o;
  }
  static void ExpectOk(int port) {
    const CurlResult r = Get(port, "/ok");
    EXPECT_EQ(r.exit_code, 0) << r.error;
    EXPECT_EQ(r.http_code, 200) << r.error;
    EXPECT_EQ(r.body, "ok");
  }

  static std::string dir_, skip_;
};
std::string HttpTls::dir_, HttpTls::skip_;

TEST_F(HttpTls, CurlGets200OverHttps) {
  TestServer s(Options());
  ASSERT_GT(s.port(), 0) << s.status();
  ExpectOk(s.port());
  // TLS 1.2 is enough.
  const CurlResult v12 = Get(s.port(), "/ok", "ca", "--tlsv1.2 --tls-max 1.2");
  EXPECT_EQ(v12.http_code, 200) << v12.error;
  // The certificate is checked: a client that trusts another CA refuses the server.
  const CurlResult other = Get(s.port(), "/ok", "other_ca");
  EXPECT_NE(other.exit_code, 0);
  EXPECT_NE(other.http_code, 200);
  EXPECT_EQ(s.handled.load(), 2);
}

TEST_F(HttpTls, ContextsSpeakTls12OrLaterWithoutRenegotiation) {
  // (Debian's system OpenSSL configuration refuses older versions too, so a handshake could not
  // tell whether the server sets the floor itself.)
  auto contexts = HttpTlsContexts::Create(Options());
  ASSERT_TRUE(contexts.ok()) << contexts.status();
  SSL_CTX* ctx = (*contexts)->Current()->native_handle();
  EXPECT_EQ(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
  EXPECT_NE(SSL_CTX_get_options(ctx) & SSL_OP_NO_RENEGOTIATION, 0u);
  EXPECT_EQ(SSL_CTX_get_verify_mode(ctx), SSL_VERIFY_NONE);
  HttpServerOptions o = Options();
  o.tls_client_ca_file = Pem("ca");
  auto mutual = HttpTlsContexts::Create(o);
  ASSERT_TRUE(mutual.ok()) << mutual.status();
  EXPECT_EQ(SSL_CTX_get_verify_mode((*mutual)->Current()->native_handle()),
            SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
}

TEST_F(HttpTls, PlaintextHttpOnTheTlsPortFailsAndTheServerServesOn) {
  HttpServerOptions o = Options();
  o.header_timeout = absl::Seconds(5);
  TestServer s(o);
  ASSERT_GT(s.port(), 0) << s.status();
  RawConn conn(s.port());
  ASSERT_TRUE(conn.Send("GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"));
  // The handshake fails on the first bytes: the close comes well before the header timeout.
  const absl::Time start = absl::Now();
  EXPECT_TRUE(conn.WaitClosed(absl::Seconds(2)));
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(2500));
  EXPECT_FALSE(absl::StrContains(conn.received(), "HTTP/1.")) << Describe(conn.received());
  EXPECT_EQ(s.handled.load(), 0);
  ExpectOk(s.port());
  EXPECT_TRUE(WaitFor([&] { return s.server().connections() == 0; }, absl::Seconds(2)));
}

TEST_F(HttpTls, StalledHandshakeIsDroppedAndDoesNotBlockOthers) {
  HttpServerOptions o = Options();
  o.threads = 1;  // one thread: a handshake that waited on a client would stop everything
  o.header_timeout = absl::Seconds(1);
  TestServer s(o);
  ASSERT_GT(s.port(), 0) << s.status();
  const absl::Time start = absl::Now();
  RawConn silent(s.port());
  RawConn half(s.port());
  // The start of a ClientHello that announces 512 bytes, then nothing.
  ASSERT_TRUE(half.Send(std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11)));
  ASSERT_TRUE(WaitFor([&] { return s.server().connections() == 2; }, absl::Seconds(2)));
  ExpectOk(s.port());  // while both stall
  EXPECT_FALSE(silent.ReadUntil(nullptr, absl::Milliseconds(1))) << "the good request waited";
  EXPECT_FALSE(half.ReadUntil(nullptr, absl::Milliseconds(1))) << "the good request waited";
  EXPECT_TRUE(silent.WaitClosed(absl::Seconds(3)));
  EXPECT_TRUE(half.WaitClosed(absl::Seconds(3)));
  const absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, absl::Milliseconds(950));
  EXPECT_LT(took, absl::Milliseconds(2500));
  EXPECT_TRUE(WaitFor([&] { return s.server().connections() == 0; }, absl::Seconds(2)));
}

TEST_F(HttpTls, ClientCertificateSignedByTheClientCaIsRequired) {
  HttpServerOptions o = Options();
  o.tls_client_ca_file = Pem("ca");
  TestServer s(o);
  ASSERT_GT(s.port(), 0) << s.status();
  const CurlResult none = Get(s.port(), "/ok");
  EXPECT_NE(none.exit_code, 0);
  EXPECT_NE(none.http_code, 200) << none.body;
  const CurlResult other =
      Get(s.port(), "/ok", "ca",
          absl::StrCat("--cert ", Pem("other_client"), " --key ", Key("other_client")));
  EXPECT_NE(other.exit_code, 0);
  EXPECT_NE(other.http_code, 200) << other.body;
  EXPECT_EQ(s.handled.load(), 0);
  const CurlResult right =
      Get(s.port(), "/ok", "ca", absl::StrCat("--cert ", Pem("client"), " --key ", Key("client")));
  EXPECT_EQ(right.exit_code, 0) << right.error;
  EXPECT_EQ(right.http_code, 200) << right.error;
  EXPECT_EQ(right.body, "ok");
  // The in-process client (the suite's other tests use it) is let in the same way.
  TlsConn conn(s.port(), Pem("ca"), Pem("client"), Key("client"));
  ASSERT_TRUE(conn.ok());
  ASSERT_TRUE(conn.Send("GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"));
  conn.ReadUntil([](const std::string& in) { return Parse(in, false).size() == 1; },
                 absl::Seconds(5));
  ASSERT_EQ(Parse(conn.received(), false).size(), 1u) << Describe(conn.received());
}

TEST_F(HttpTls, ChangedFilesAreServedToNewConnectionsAfterTheReloadInterval) {
  const std::string sub = dir_ + "/reload";
  ASSERT_EQ(mkdir(sub.c_str(), 0700), 0);
  ReplaceFile(Pem("server"), sub + "/cert.pem");
  ReplaceFile(Key("server"), sub + "/key.pem");
  HttpServerOptions o = Options();
  o.tls_cert_file = sub + "/cert.pem";
  o.tls_key_file = sub + "/key.pem";
  o.tls_reload = absl::Milliseconds(200);
  o.header_timeout = absl::Seconds(10);  // `before` waits idle across the change
  TestServer s(o);
  ASSERT_GT(s.port(), 0) << s.status();
  ExpectOk(s.port());
  EXPECT_NE(Get(s.port(), "/ok", "other_ca").http_code, 200);
  // A connection open across the change keeps its certificate.
  TlsConn before(s.port(), Pem("ca"));
  ASSERT_TRUE(before.ok());
  // The key first: it does not match the certificate, so the old pair stays (with a warning).
  ReplaceFile(Key("server2"), o.tls_key_file);
  absl::SleepFor(absl::Milliseconds(300));
  ExpectOk(s.port());
  // Then the certificate: new connections get the new pair.
  ReplaceFile(Pem("server2"), o.tls_cert_file);
  absl::SleepFor(absl::Milliseconds(300));
  const CurlResult fresh = Get(s.port(), "/ok", "other_ca");
  EXPECT_EQ(fresh.http_code, 200) << fresh.error;
  const CurlResult old = Get(s.port(), "/ok", "ca");
  EXPECT_NE(old.http_code, 200) << "the old certificate is still served";
  ASSERT_TRUE(before.Send("GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"));
  before.ReadUntil([](const std::string& in) { return Parse(in, false).size() == 1; },
                   absl::Seconds(5));
  const std::vector<Resp> r = Parse(before.received(), false);
  ASSERT_EQ(r.size(), 1u) << Describe(before.received());
  EXPECT_EQ(r[0].status, 200);
}

TEST_F(HttpTls, BadOptionsFailStartNamingTheFlag) {
  WriteAll(dir_ + "/garbage.pem", "not a PEM file\n");
  struct Case {
    std::string cert, key, ca, flag;
  };
  const std::vector<Case> cases = {
      {dir_ + "/missing.pem", Key("server"), "", "--tls-cert: "},
      {Pem("server"), dir_ + "/missing.key", "", "--tls-key: "},
      {dir_ + "/garbage.pem", Key("server"), "", "--tls-cert: "},
      {Pem("server"), dir_ + "/garbage.pem", "", "--tls-key: "},
      {Pem("server"), Key("client"), "", "--tls-key: "},  // a key of another certificate
      {Pem("server"), "", "", "--tls-key: "},
      {"", Key("server"), "", "--tls-cert: "},
      {Pem("server"), Key("server"), dir_ + "/garbage.pem", "--tls-client-ca: "},
      {Pem("server"), Key("server"), dir_ + "/missing.pem", "--tls-client-ca: "},
      {"", "", Pem("ca"), "--tls-client-ca: "},
  };
  for (const Case& c : cases) {
    HttpServerOptions o = Options();
    o.tls_cert_file = c.cert;
    o.tls_key_file = c.key;
    o.tls_client_ca_file = c.ca;
    HttpServer server(o, [](std::shared_ptr<HttpExchange> ex) { ex->Respond(200, "", ""); });
    const absl::StatusOr<int> port = server.Start();
    ASSERT_FALSE(port.ok()) << c.cert << " " << c.key << " " << c.ca;
    EXPECT_EQ(port.status().code(), absl::StatusCode::kInvalidArgument) << port.status();
    EXPECT_TRUE(absl::StartsWith(port.status().message(), c.flag)) << port.status();
  }
  HttpServer good(Options(), [](std::shared_ptr<HttpExchange> ex) { ex->Respond(200, "", ""); });
  EXPECT_TRUE(good.Start().ok());
}

TEST_F(HttpTls, StreamedResponseOverTls) {
  TestServer s(Options());
  ASSERT_GT(s.port(), 0) << s.status();
  const CurlResult chunked = Get(s.port(), "/stream?chunks=5&size=1000");
  EXPECT_EQ(chunked.exit_code, 0) << chunked.error;
  EXPECT_EQ(chunked.http_code, 200);
  EXPECT_TRUE(chunked.body == std::string(5000, 'x')) << chunked.body.size();
  // HTTP/1.0: unframed, ended by the close; close_notify tells the client that it is complete.
  const CurlResult r10 = Get(s.port(), "/stream?chunks=3&size=7", "ca", "--http1.0");
  EXPECT_EQ(r10.exit_code, 0) << r10.error;
  EXPECT_EQ(r10.body, std::string(21, 'x')) << r10.error;
  TlsConn conn(s.port(), Pem("ca"));
  ASSERT_TRUE(conn.ok());
  ASSERT_TRUE(conn.Send("GET /stream?chunks=3&size=7 HTTP/1.0\r\n\r\n"));
  ASSERT_TRUE(conn.WaitClosed(absl::Seconds(5)));
  EXPECT_TRUE(conn.closed_cleanly()) << "no close_notify";
  const std::vector<Resp> r = Parse(conn.received(), true);
  ASSERT_EQ(r.size(), 1u) << Describe(conn.received());
  EXPECT_EQ(r[0].body, std::string(21, 'x'));
  EXPECT_EQ(s.send_failed.load(), 0);
}

// ---- The limits of http_server_hostile_test.cc, over TLS ----------------------------------

TEST_F(HttpTls, SlowHeaderOverTlsIsCutOffAtTheHeaderTimeout) {
  TestServer s(Options());
  ASSERT_GT(s.port(), 0) << s.status();
  TlsConn conn(s.port(), Pem("ca"));
  ASSERT_TRUE(conn.ok());
  const absl::Time start = absl::Now();
  conn.Send("GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: ");
  bool closed = false;
  for (int i = 0; i < 40 && !closed; ++i) {
    closed = conn.ReadUntil(nullptr, absl::Milliseconds(100));
    if (!closed) conn.Send("a");
  }
  const absl::Duration took = absl::Now() - start;
  EXPECT_TRUE(closed);
  EXPECT_GE(took, absl::Milliseconds(400));
  EXPECT_LT(took, absl::Milliseconds(2000));
  EXPECT_EQ(s.handled.load(), 0);
}

TEST_F(HttpTls, HeaderLimitKeepAliveAndHeadHoldOverTls) {
  HttpServerOptions o = Options();
  o.max_header_bytes = 1024;
  TestServer s(o);
  ASSERT_GT(s.port(), 0) << s.status();
  {
    // Two pipelined requests in one write, the second a HEAD, then one more on the same
    // connection after their answers.
    TlsConn conn(s.port(), Pem("ca"));
    ASSERT_TRUE(conn.ok());
    ASSERT_TRUE(
        conn.Send("GET /ok HTTP/1.1\r\nHost: x\r\n\r\nHEAD /ok HTTP/1.1\r\nHost: x\r\n\r\n"));
    conn.ReadUntil(
        [](const std::string& in) {
          return Parse(in, false, {false, true}).size() == 2;
        },
        absl::Seconds(5));
    ASSERT_TRUE(conn.Send("GET /stream?chunks=2&size=3 HTTP/1.1\r\nHost: x\r\n\r\n"));
    conn.ReadUntil(
        [](const std::string& in) {
          return Parse(in, false, {false, true}).size() == 3;
        },
        absl::Seconds(5));
    const std::vector<Resp> r = Parse(conn.received(), false, {false, true});
    ASSERT_EQ(r.size(), 3u) << Describe(conn.received());
    EXPECT_EQ(r[0].body, "ok");
    EXPECT_TRUE(absl::StrContains(r[1].head, "Content-Length: 2")) << r[1].head;
    EXPECT_EQ(r[1].body, "");
    EXPECT_EQ(r[2].body, "xxxxxx");
  }
  TlsConn big(s.port(), Pem("ca"));
  ASSERT_TRUE(big.ok());
  big.Send(
      absl::StrCat("GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: ", std::string(2000, 'b'), "\r\n\r\n"));
  EXPECT_TRUE(big.WaitClosed(absl::Seconds(5)));
  const std::vector<Resp> r = Parse(big.received(), true);
  ASSERT_EQ(r.size(), 1u) << Describe(big.received());
  EXPECT_EQ(r[0].status, 431);
}

TEST_F(HttpTls, ConnectionBeyondTheLimitGets503OverTls) {
  HttpServerOptions o = Options();
  o.max_connections = 2;
  o.header_timeout = absl::Seconds(10);  // the idle ones stay
  TestServer s(o);
  ASSERT_GT(s.port(), 0) << s.status();
  TlsConn a(s.port(), Pem("ca")), b(s.port(), Pem("ca"));
  ASSERT_TRUE(a.ok() && b.ok());
  TlsConn extra(s.port(), Pem("ca"));
  ASSERT_TRUE(extra.ok());
  EXPECT_TRUE(extra.WaitClosed(absl::Seconds(5)));
  const std::vector<Resp> r = Parse(extra.received(), true);
  ASSERT_EQ(r.size(), 1u) << Describe(extra.received());
  EXPECT_EQ(r[0].status, 503);
  EXPECT_EQ(s.handled.load(), 0);
}

TEST_F(HttpTls, ClientGoneAndWriteTimeoutAndFloodOverTls) {
  TestServer s(Options());
  ASSERT_GT(s.port(), 0) << s.status();
  {
    // A client that leaves while its response is being made.
    TlsConn conn(s.port(), Pem("ca"));
    ASSERT_TRUE(conn.ok());
    ASSERT_TRUE(conn.Send("GET /hold HTTP/1.1\r\nHost: x\r\n\r\n"));
    ASSERT_TRUE(WaitFor([&] { return s.held() == 1; }, absl::Seconds(5)));
    conn.Drop();
    EXPECT_TRUE(WaitFor([&] { return s.gone.load() == 1; }, absl::Seconds(5)));
  }
  {
    // A client that floods the connection whose response it waits for.
    TlsConn conn(s.port(), Pem("ca"));
    ASSERT_TRUE(conn.ok());
    ASSERT_TRUE(conn.Send("GET /hold HTTP/1.1\r\nHost: x\r\n\r\n"));
    ASSERT_TRUE(WaitFor([&] { return s.held() == 2; }, absl::Seconds(5)));
    conn.Send(std::string(1 << 20, 'z'));
    EXPECT_TRUE(WaitFor([&] { return s.gone.load() == 2; }, absl::Seconds(5)))
        << "the flood was buffered";
  }
  {
    // A client that does not read a stream (up to 64 GiB: it ends only by the cut).
    TlsConn reader(s.port(), Pem("ca"), "", "", 4096);
    ASSERT_TRUE(reader.ok());
    ASSERT_TRUE(reader.Send("GET /stream?chunks=1000000&size=65536 HTTP/1.1\r\nHost: x\r\n\r\n"));
    ExpectOk(s.port());  // others are served meanwhile
    EXPECT_TRUE(WaitFor([&] { return s.send_failed.load() == 1; }, absl::Seconds(10)))
        << "the stalled write was not cut off";
    EXPECT_TRUE(WaitFor([&] { return s.gone.load() == 3; }, absl::Seconds(2)));
  }
  s.Release();
  EXPECT_TRUE(WaitFor([&] { return s.server().connections() == 0; }, absl::Seconds(5)));
  ExpectOk(s.port());
}

}  // namespace
}  // namespace sambay::testing
