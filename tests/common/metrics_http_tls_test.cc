// MetricsHttpServer (common/metrics_http.h) with TLS and a bearer token, on real loopback sockets:
// curl and openssl scrape over HTTPS; plaintext, stalled and trickling handshakes only lose their
// own connection; the token is required, compared exactly and reloaded; a replaced certificate is
// presented to new connections; bad options fail Start naming the flag. The certificates are made
// at run time with the openssl command-line tool (self-signed, each its own CA), in a temporary
// directory removed afterwards.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/metrics_http.h"
#include "gtest/gtest.h"

namespace sambay {
namespace {

struct CommandResult {
  int code = -1;    // exit status; -1 when killed
  std::string out;  // stdout and stderr
};

// Runs `command` with sh, killed after 10 s so a hung tool fails the test instead of hanging it.
CommandResult Shell(const std::string& command) {
  CommandResult r;
  FILE* p = popen(absl::StrCat("timeout 10 sh -c '", command, "' 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0) r.out.append(chunk, n);
  const int status = pclose(p);
  if (WIFEXITED(status)) r.code = WEXITSTATUS(status);
  return r;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::trunc) << content;
}

// Replaces `path` atomically, as a deployment (or cert-manager) does: a temporary file, renamed.
void ReplaceFile(const std::string& path, const std::string& content) {
  WriteFile(path + ".tmp", content);
  std::filesystem::rename(path + ".tmp", path);
}

// A loopback client socket that sends raw bytes and reads until the server closes.
class RawConn {
 public:
  explicit RawConn(int port) : fd_(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  }
  ~RawConn() { close(fd_); }
  RawConn(const RawConn&) = delete;
  RawConn& operator=(const RawConn&) = delete;

  bool connected() const { return connected_; }
  bool Send(const std::string& bytes) {
    return send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  // Reads until the peer closes (returns true) or `timeout` passes (false); keeps what came.
  bool ReadUntilClosed(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (ms <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(ms)) <= 0) continue;
      char chunk[16384];
      const ssize_t n = recv(fd_, chunk, sizeof(chunk), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return true;
      received_.append(chunk, static_cast<size_t>(n));
    }
  }
  const std::string& received() const { return received_; }

 private:
  int fd_;
  bool connected_ = false;
  std::string received_;
};

// One plaintext request on a fresh connection (with Connection: close); the whole response.
std::string Exchange(int port, const std::string& request_head) {
  RawConn c(port);
  EXPECT_TRUE(c.connected());
  c.Send(absl::StrCat(request_head, "Host: x\r\nConnection: close\r\n\r\n"));
  EXPECT_TRUE(c.ReadUntilClosed(absl::Seconds(5)));
  return c.received();
}

int StatusOf(const std::string& response) {
  int code = 0;
  if (!absl::StartsWith(response, "HTTP/1.") || response.size() < 12) return 0;
  return absl::SimpleAtoi(response.substr(9, 3), &code) ? code : 0;
}

std::string HeaderOf(const std::string& response, const std::string& name) {
  const std::string lower = absl::AsciiStrToLower(response);
  const std::string key = absl::StrCat("\r\n", absl::AsciiStrToLower(name), ":");
  const size_t at = lower.find(key);
  if (at == std::string::npos) return "";
  const size_t eol = response.find("\r\n", at + key.size());
  return std::string(
      absl::StripAsciiWhitespace(response.substr(at + key.size(), eol - at - key.size())));
}

std::string Get(int port, const std::string& authorization) {
  return Exchange(port, absl::StrCat("GET /metrics HTTP/1.1\r\n",
                                     authorization.empty() ? "" : "Authorization: ", authorization,
                                     authorization.empty() ? "" : "\r\n"));
}

class MetricsHttpTlsTest : public ::testing::Test {
 protected:
  // Certificates a, b (self-signed for 127.0.0.1 and localhost) and an encrypted key, made once.
  static void SetUpTestSuite() {
    char dir_template[] = "/tmp/sambay-metrics-tls-XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    for (const char* name : {"a", "b"}) {
      CommandResult r = Shell(absl::StrCat(
          "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=",
          name, " -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout ", dir_, "/", name,
          ".key -out ", dir_, "/", name, ".crt"));
      ASSERT_EQ(r.code, 0) << r.out;
    }
    CommandResult r = Shell(absl::StrCat(
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -aes256 -pass pass:pw "
        "-out ",
        dir_, "/encrypted.key"));
    ASSERT_EQ(r.code, 0) << r.out;
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }

  static std::string Path(const std::string& name) { return absl::StrCat(dir_, "/", name); }

  void SetUp() override {
    registry_ = std::make_shared<prometheus::Registry>();
    prometheus::BuildCounter()
        .Name("test_scrapes_total")
        .Help("A counter for the test.")
        .Register(*registry_)
        .Add({{"kind", "probe"}})
        .Increment(7);
    // Each test serves its own copies, which it may replace.
    work_ = Path(::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directory(work_);
    for (const char* f : {"a.crt", "a.key"}) {
      std::filesystem::copy_file(Path(f), work_ + "/" + f);
    }
  }
  void TearDown() override {
    server_.reset();
    std::filesystem::remove_all(work_);
  }

  MetricsHttpOptions TlsOptions() const {
    MetricsHttpOptions o;
    o.tls_cert_file = work_ + "/a.crt";
    o.tls_key_file = work_ + "/a.key";
    return o;
  }

  void StartServer(const MetricsHttpOptions& options) {
    server_ = std::make_unique<MetricsHttpServer>(registry_, options);
    absl::StatusOr<int> port = server_->Start("127.0.0.1", 0);
    ASSERT_TRUE(port.ok()) << port.status();
    port_ = *port;
  }

  // curl https://127.0.0.1:port/metrics trusting `ca`; the HTTP status, 0 when none came (a
  // failed handshake or verification). *body gets the body.
  int Curl(const std::string& ca, const std::string& token = "", std::string* body = nullptr) {
    const std::string out = work_ + "/body";
    std::filesystem::remove(out);
    CommandResult r = Shell(
        absl::StrCat("curl -sS --max-time 5 -o ", out, " -w \"\\n%{http_code}\" --cacert ", ca,
                     token.empty() ? "" : absl::StrCat(" -H \"Authorization: Bearer ", token, "\""),
                     " https://127.0.0.1:", port_, "/metrics"));
    if (body != nullptr) *body = ReadFile(out);
    const size_t nl = r.out.rfind('\n');
    int code = 0;
    if (nl == std::string::npos || !absl::SimpleAtoi(r.out.substr(nl + 1), &code)) return 0;
    return code;
  }

  // A good scrape over HTTPS, within `within` (curl's own start-up and handshake included: the
  // default leaves room for a loaded sanitizer machine).
  void ExpectServing(absl::Duration within = absl::Seconds(10)) {
    const absl::Time start = absl::Now();
    std::string body;
    EXPECT_EQ(Curl(Path("a.crt"), "", &body), 200);
    EXPECT_TRUE(absl::StrContains(body, "test_scrapes_total{kind=\"probe\"} 7")) << body;
    EXPECT_LT(absl::Now() - start, within);
  }

  // Polls `ok` every 50 ms for up to `timeout`; whether it became true.
  template <typename Ok>
  static bool Eventually(Ok ok, absl::Duration timeout = absl::Seconds(4)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (ok()) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return ok();
  }

  static std::string dir_;
  std::string work_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<MetricsHttpServer> server_;
  int port_ = 0;
};

std::string MetricsHttpTlsTest::dir_;

TEST_F(MetricsHttpTlsTest, ScrapesOverHttps) {
  StartServer(TlsOptions());
  ExpectServing();
  // The server's certificate is what is checked: another CA does not verify it.
  EXPECT_EQ(Curl(Path("b.crt")), 0);
  // openssl s_client sees certificate a, and TLS 1.1 is refused.
  CommandResult r = Shell(absl::StrCat("openssl s_client -connect 127.0.0.1:", port_, " -CAfile ",
                                       Path("a.crt"), " </dev/null"));
  EXPECT_TRUE(absl::StrContains(r.out, "CN = a")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "Verify return code: 0 (ok)")) << r.out;
  r = Shell(absl::StrCat("openssl s_client -connect 127.0.0.1:", port_,
                         " -tls1_1 -cipher DEFAULT@SECLEVEL=0 </dev/null"));
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "alert protocol version")) << r.out;  // the server's answer
  ExpectServing();
}

TEST_F(MetricsHttpTlsTest, PlaintextOnTheTlsPortIsClosed) {
  StartServer(TlsOptions());
  for (int i = 0; i < 3; ++i) {
    RawConn c(port_);
    ASSERT_TRUE(c.connected());
    c.Send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_TRUE(c.ReadUntilClosed(absl::Seconds(3))) << "the plaintext connection stayed open";
    EXPECT_FALSE(absl::StrContains(c.received(), "HTTP/1.")) << c.received();
    EXPECT_FALSE(absl::StrContains(c.received(), "test_scrapes_total")) << c.received();
  }
  ExpectServing();
}

TEST_F(MetricsHttpTlsTest, StalledHandshakesDoNotBlockAScrapeAndTimeOut) {
  // A loop that waited on a stalled handshake would serve nothing for `timeout` (5 s); the scrape
  // must come well before that.
  MetricsHttpOptions o = TlsOptions();
  o.timeout = absl::Seconds(5);
  StartServer(o);
  std::vector<std::unique_ptr<RawConn>> stalled;
  for (int i = 0; i < 6; ++i) {
    stalled.push_back(std::make_unique<RawConn>(port_));
    ASSERT_TRUE(stalled.back()->connected());
  }
  // A TLS record header announcing a 512-byte ClientHello that never comes.
  stalled.back()->Send(std::string("\x16\x03\x01\x02\x00", 5));
  const absl::Time start = absl::Now();
  ExpectServing(absl::Seconds(4));
  // The handshake timeout holds: each stalled connection is closed after `timeout`.
  for (auto& c : stalled) EXPECT_TRUE(c->ReadUntilClosed(absl::Seconds(9)));
  EXPECT_LT(absl::Now() - start, absl::Seconds(9));
  ExpectServing();
}

TEST_F(MetricsHttpTlsTest, TricklingHandshakeIsCutAtMaxConnectionAge) {
  MetricsHttpOptions o = TlsOptions();
  o.timeout = absl::Seconds(10);
  o.max_connection_age = absl::Seconds(1);
  StartServer(o);
  RawConn slow(port_);
  ASSERT_TRUE(slow.connected());
  const absl::Time start = absl::Now();
  bool dropped = !slow.Send(std::string("\x16\x03\x01\x02\x00", 5));
  // One byte of the ClientHello every 100 ms: progress, so the idle timeout never fires.
  for (int i = 0; i < 80 && !dropped; ++i) {
    dropped = !slow.Send("A") || slow.ReadUntilClosed(absl::Milliseconds(100));
  }
  EXPECT_TRUE(dropped) << "the trickling handshake was still open after 8 s";
  EXPECT_LT(absl::Now() - start, absl::Seconds(6));
  ExpectServing();
}

TEST_F(MetricsHttpTlsTest, HandshakesCountTowardsMaxConnections) {
  MetricsHttpOptions o = TlsOptions();
  o.max_connections = 2;
  o.timeout = absl::Seconds(1);
  StartServer(o);
  RawConn a(port_), b(port_);
  absl::SleepFor(absl::Milliseconds(300));
  // The third waits in the accept queue until a stalled handshake times out.
  const absl::Time start = absl::Now();
  ExpectServing(absl::Seconds(9));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(400));
}

TEST_F(MetricsHttpTlsTest, BearerTokenIsRequiredAndExact) {
  MetricsHttpOptions o;
  o.bearer_token_file = work_ + "/token";
  WriteFile(o.bearer_token_file, "  s3cret-Token.42\n\n");  // surrounding whitespace is trimmed
  StartServer(o);
  for (const std::string auth :
       {"", "Bearer wrong", "Bearer S3CRET-TOKEN.42", "Bearer s3cret-token.42",
        "Bearer s3cret-Token.4", "Bearer s3cret-Token.42x", "Bearer", "Bearer ",
        "Basic czNjcmV0LVRva2VuLjQy", "s3cret-Token.42", "Bearers3cret-Token.42"}) {
    SCOPED_TRACE(auth);
    const std::string r = Get(port_, auth);
    EXPECT_EQ(StatusOf(r), 401) << r;
    EXPECT_EQ(HeaderOf(r, "WWW-Authenticate"), "Bearer realm=\"metrics\"") << r;
    EXPECT_FALSE(absl::StrContains(r, "s3cret")) << r;
    EXPECT_FALSE(absl::StrContains(r, "test_scrapes_total")) << r;
  }
  std::string r = Get(port_, "Bearer s3cret-Token.42");
  EXPECT_EQ(StatusOf(r), 200) << r;
  EXPECT_TRUE(absl::StrContains(r, "test_scrapes_total{kind=\"probe\"} 7")) << r;
  EXPECT_EQ(StatusOf(Get(port_, "bearer  s3cret-Token.42 ")), 200);  // the scheme in any case
  // Two Authorization headers, even with one right: 401.
  r = Exchange(port_,
               "GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret-Token.42\r\n"
               "Authorization: Bearer wrong\r\n");
  EXPECT_EQ(StatusOf(r), 401) << r;
  // The token is checked before the method and the path, so they reveal nothing.
  EXPECT_EQ(StatusOf(Exchange(port_, "GET /nope HTTP/1.1\r\n")), 401);
  EXPECT_EQ(StatusOf(Exchange(port_, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n")), 401);
  EXPECT_EQ(StatusOf(Exchange(port_,
                              "GET /nope HTTP/1.1\r\nAuthorization: Bearer "
                              "s3cret-Token.42\r\n")),
            404);
}

TEST_F(MetricsHttpTlsTest, TokenFileIsReloaded) {
  MetricsHttpOptions o;
  o.bearer_token_file = work_ + "/token";
  o.reload_interval = absl::Milliseconds(200);
  WriteFile(o.bearer_token_file, "old-token\n");
  StartServer(o);
  EXPECT_EQ(StatusOf(Get(port_, "Bearer old-token")), 200);
  ReplaceFile(o.bearer_token_file, "new-token\n");
  EXPECT_TRUE(Eventually([&] { return StatusOf(Get(port_, "Bearer new-token")) == 200; }));
  EXPECT_EQ(StatusOf(Get(port_, "Bearer old-token")), 401);
  // Rewritten in place, same length: the mtime tells.
  WriteFile(o.bearer_token_file, "xyz-token\n");
  EXPECT_TRUE(Eventually([&] { return StatusOf(Get(port_, "Bearer xyz-token")) == 200; }));
  EXPECT_EQ(StatusOf(Get(port_, "Bearer new-token")), 401);
  // An empty file does not load: the last good token stays.
  ReplaceFile(o.bearer_token_file, " \n");
  absl::SleepFor(absl::Milliseconds(600));
  EXPECT_EQ(StatusOf(Get(port_, "Bearer xyz-token")), 200);
  EXPECT_EQ(StatusOf(Get(port_, "")), 401);
}

TEST_F(MetricsHttpTlsTest, CertificateFilesAreReloaded) {
  MetricsHttpOptions o = TlsOptions();
  o.reload_interval = absl::Milliseconds(200);
  StartServer(o);
  ExpectServing();
  // Certificate first, key a moment later: in between they do not match, which must not break
  // anything; once both are in, new connections present b.
  ReplaceFile(o.tls_cert_file, ReadFile(Path("b.crt")));
  absl::SleepFor(absl::Milliseconds(300));
  ExpectServing();
  ReplaceFile(o.tls_key_file, ReadFile(Path("b.key")));
  EXPECT_TRUE(Eventually([&] { return Curl(Path("b.crt")) == 200; }));
  EXPECT_EQ(Curl(Path("a.crt")), 0);
  CommandResult r = Shell(absl::StrCat("openssl s_client -connect 127.0.0.1:", port_, " -CAfile ",
                                       Path("b.crt"), " </dev/null"));
  EXPECT_TRUE(absl::StrContains(r.out, "CN = b")) << r.out;
  // A broken certificate file is not loaded: b stays.
  ReplaceFile(o.tls_cert_file, "-----BEGIN CERTIFICATE-----\nnot base64\n");
  absl::SleepFor(absl::Milliseconds(600));
  EXPECT_EQ(Curl(Path("b.crt")), 200);
}

TEST_F(MetricsHttpTlsTest, TlsAndTokenTogether) {
  MetricsHttpOptions o = TlsOptions();
  o.bearer_token_file = work_ + "/token";
  WriteFile(o.bearer_token_file, "tok-123");
  StartServer(o);
  EXPECT_EQ(Curl(Path("a.crt")), 401);
  EXPECT_EQ(Curl(Path("a.crt"), "tok-124"), 401);
  std::string body;
  EXPECT_EQ(Curl(Path("a.crt"), "tok-123", &body), 200);
  EXPECT_TRUE(absl::StrContains(body, "test_scrapes_total")) << body;
}

TEST_F(MetricsHttpTlsTest, ServeMetricsPassesTheOptions) {
  MetricsHttpOptions o;
  o.bearer_token_file = work_ + "/token";
  WriteFile(o.bearer_token_file, "tok");
  std::unique_ptr<MetricsHttpServer> server;
  absl::StatusOr<int> port = ServeMetrics(registry_, "127.0.0.1", 0, &server, o);
  ASSERT_TRUE(port.ok()) << port.status();
  EXPECT_EQ(StatusOf(Get(*port, "")), 401);
  EXPECT_EQ(StatusOf(Get(*port, "Bearer tok")), 200);
}

TEST_F(MetricsHttpTlsTest, BadOptionsAreInvalidArgumentNamingTheFlag) {
  WriteFile(work_ + "/garbage", "hello\n");
  WriteFile(work_ + "/empty", "");
  WriteFile(work_ + "/blank", " \n\t\n");
  WriteFile(work_ + "/spaced", "two words\n");
  struct Case {
    std::string cert, key, token, flag;
  };
  const std::string a_crt = work_ + "/a.crt", a_key = work_ + "/a.key";
  const std::vector<Case> cases = {
      {a_crt, "", "", "--metrics-tls-key: "},
      {"", a_key, "", "--metrics-tls-cert: "},
      {work_ + "/missing.crt", a_key, "", "--metrics-tls-cert: "},
      {work_, a_key, "", "--metrics-tls-cert: "},  // a directory
      {work_ + "/garbage", a_key, "", "--metrics-tls-cert: "},
      {a_key, a_key, "", "--metrics-tls-cert: "},  // PEM, but a key
      {a_crt, work_ + "/missing.key", "", "--metrics-tls-key: "},
      {a_crt, work_ + "/garbage", "", "--metrics-tls-key: "},
      {a_crt, a_crt, "", "--metrics-tls-key: "},          // PEM, but a certificate
      {a_crt, Path("b.key"), "", "--metrics-tls-key: "},  // another certificate's key
      {a_crt, Path("encrypted.key"), "", "--metrics-tls-key: "},
      {"", "", work_ + "/missing", "--metrics-bearer-token-file: "},
      {"", "", work_ + "/empty", "--metrics-bearer-token-file: "},
      {"", "", work_ + "/blank", "--metrics-bearer-token-file: "},
      {"", "", work_ + "/spaced", "--metrics-bearer-token-file: "},
      {a_crt, a_key, work_ + "/blank", "--metrics-bearer-token-file: "},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat(c.cert, " ", c.key, " ", c.token));
    MetricsHttpOptions o;
    o.tls_cert_file = c.cert;
    o.tls_key_file = c.key;
    o.bearer_token_file = c.token;
    MetricsHttpServer server(registry_, o);
    absl::StatusOr<int> port = server.Start("127.0.0.1", 0);
    ASSERT_FALSE(port.ok());
    EXPECT_EQ(port.status().code(), absl::StatusCode::kInvalidArgument) << port.status();
    EXPECT_TRUE(absl::StartsWith(port.status().message(), c.flag)) << port.status();
    EXPECT_FALSE(absl::StrContains(port.status().message(), "two words")) << port.status();
  }
  MetricsHttpOptions o = TlsOptions();
  o.reload_interval = absl::ZeroDuration();
  MetricsHttpServer server(registry_, o);
  EXPECT_EQ(server.Start("127.0.0.1", 0).status().code(), absl::StatusCode::kInvalidArgument);
  // The same files are fine.
  MetricsHttpServer good(registry_, TlsOptions());
  EXPECT_TRUE(good.Start("127.0.0.1", 0).ok());
}

}  // namespace
}  // namespace sambay
