#include "common/metrics_http.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace sambay {
namespace {

constexpr const char* kCertFlag = "--metrics-tls-cert";
constexpr const char* kKeyFlag = "--metrics-tls-key";
constexpr const char* kTokenFlag = "--metrics-bearer-token-file";
constexpr size_t kMaxFileBytes = 1 << 20;  // a certificate chain, a key or a token file
constexpr size_t kMaxTokenBytes = 4096;

struct SslCtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;
using TokenDigest = std::array<unsigned char, SHA256_DIGEST_LENGTH>;

// What identifies one version of a file: equal stamps mean "unchanged". `ok` is false (and the
// rest zero) when stat failed, so a file that stays missing is not reported twice.
struct FileStamp {
  bool ok = false;
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  int64_t mtime_ns = 0;
  bool operator==(const FileStamp& o) const {
    return ok == o.ok && dev == o.dev && ino == o.ino && size == o.size && mtime_ns == o.mtime_ns;
  }
  bool operator!=(const FileStamp& o) const { return !(*this == o); }
};

FileStamp StatPath(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return {};
  return {true, st.st_dev, st.st_ino, st.st_size,
          int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec};
}

}  // namespace

// Every field is touched only by the thread running the loop, or by Start/Stop while no loop
// thread runs (before it starts, after it is joined): no lock.
struct MetricsHttpServer::Loop {
  Loop(const prometheus::Collectable* c, const MetricsHttpOptions& o)
      : collectable(c), options(o) {}
  ~Loop();

  const prometheus::Collectable* collectable;
  const MetricsHttpOptions options;
  event_base* base = nullptr;
  evhttp* http = nullptr;
  evconnlistener* listener = nullptr;  // owned by `http`
  evutil_socket_t listen_fd = -1;
  int wake[2] = {-1, -1};         // Stop() writes a byte to wake[1]
  event* wake_event = nullptr;    // reads wake[0]: breaks the loop
  event* sweep_event = nullptr;   // every kSweep: Sweep()
  event* reload_event = nullptr;  // every reload_interval: Reload(); null without files to watch
  bool paused = false;            // the listener is disabled (max_connections reached)
  // TLS (null without): the context new connections get; each SSL holds its own reference, so a
  // reload may replace it while connections made with the old one are open.
  SslCtxPtr ssl_ctx;
  FileStamp cert_stamp, key_stamp;  // of the files last tried (loaded or not)
  // The bearer token (when has_token): only its SHA-256 digest is kept.
  bool has_token = false;
  TokenDigest token_digest{};
  FileStamp token_stamp;
  // Every connection's bufferevent, with a reference of ours, so that its socket stays open (and
  // its descriptor ours) until Sweep sees evhttp has let it go.
  struct Conn {
    bufferevent* bev;
    absl::Time opened;
    bool read_shut = false;
  };
  std::vector<Conn> conns;
};

namespace {

constexpr const char* kMetricsContentType = "text/plain; version=0.0.4";
constexpr const char* kAllow = "GET, HEAD";
constexpr timeval kSweep = {0, 200 * 1000};

template <typename... Args>
absl::Status Invalid(const char* flag, const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(flag, ": ", args...));
}

// The reasons on this thread's OpenSSL error queue, oldest first; empties the queue.
std::string OpenSslErrors() {
  std::string out;
  while (const unsigned long e = ERR_get_error()) {
    const char* reason = ERR_reason_error_string(e);
    absl::StrAppend(&out, out.empty() ? "" : "; ",
                    reason != nullptr ? reason : absl::StrCat("error ", e));
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

// Refuses to decrypt: an encrypted key is an error, never a prompt on the terminal.
int NoPassphrase(char*, int, int, void*) { return -1; }

// Reads a regular file of at most kMaxFileBytes. Never blocks on a FIFO (O_NONBLOCK).
absl::StatusOr<std::string> ReadSmallFile(const char* flag, const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return Invalid(flag, "cannot read ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return Invalid(flag, path, " is not a regular file");
  }
  std::string data;
  char chunk[16384];
  while (data.size() <= kMaxFileBytes) {
    const ssize_t n = read(fd, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      close(fd);
      return Invalid(flag, "cannot read ", path, ": ", std::strerror(err));
    }
    if (n == 0) break;
    data.append(chunk, static_cast<size_t>(n));
  }
  close(fd);
  if (data.size() > kMaxFileBytes) return Invalid(flag, path, " is over ", kMaxFileBytes, " bytes");
  return data;
}

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

// Puts the chain of `pem` (leaf first, then intermediates) into ctx. The leaf must be valid now.
absl::Status UseCertificateChain(SSL_CTX* ctx, const std::string& path, const std::string& pem) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) return absl::InternalError("metrics: BIO_new_mem_buf failed");
  std::unique_ptr<X509, X509Free> leaf(
      PEM_read_bio_X509_AUX(bio.get(), nullptr, NoPassphrase, nullptr));
  if (leaf == nullptr) {
    return Invalid(kCertFlag, path, ": no PEM certificate (", OpenSslErrors(), ")");
  }
  if (X509_cmp_current_time(X509_get0_notAfter(leaf.get())) < 0) {
    return Invalid(kCertFlag, path, ": the certificate has expired");
  }
  if (X509_cmp_current_time(X509_get0_notBefore(leaf.get())) > 0) {
    return Invalid(kCertFlag, path, ": the certificate is not valid yet");
  }
  if (SSL_CTX_use_certificate(ctx, leaf.get()) != 1) {
    return Invalid(kCertFlag, path, ": ", OpenSslErrors());
  }
  while (X509* next = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr)) {
    if (SSL_CTX_add0_chain_cert(ctx, next) != 1) {  // takes `next` only on success
      X509_free(next);
      return Invalid(kCertFlag, path, ": ", OpenSslErrors());
    }
  }
  // The loop ends at the end of the PEM text, or at a block that is not a certificate.
  const unsigned long end = ERR_peek_last_error();
  if (ERR_GET_LIB(end) != ERR_LIB_PEM || ERR_GET_REASON(end) != PEM_R_NO_START_LINE) {
    return Invalid(kCertFlag, path, ": a bad certificate in the chain (", OpenSslErrors(), ")");
  }
  ERR_clear_error();
  return absl::OkStatus();
}

absl::Status UsePrivateKey(SSL_CTX* ctx, const std::string& path, const std::string& pem) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) return absl::InternalError("metrics: BIO_new_mem_buf failed");
  std::unique_ptr<EVP_PKEY, PkeyFree> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  if (key == nullptr) {
    return Invalid(kKeyFlag, path, ": no unencrypted PEM private key (", OpenSslErrors(), ")");
  }
  if (SSL_CTX_use_PrivateKey(ctx, key.get()) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    return Invalid(kKeyFlag, path, ": the key does not match the certificate of ", kCertFlag, " (",
                   OpenSslErrors(), ")");
  }
  return absl::OkStatus();
}

// A server context with the certificate and key files of `o`: TLS 1.2 or later, no
// renegotiation, no client certificate asked for.
absl::StatusOr<SslCtxPtr> LoadTls(const MetricsHttpOptions& o) {
  SAMBAY_ASSIGN_OR_RETURN(const std::string cert_pem, ReadSmallFile(kCertFlag, o.tls_cert_file));
  SAMBAY_ASSIGN_OR_RETURN(const std::string key_pem, ReadSmallFile(kKeyFlag, o.tls_key_file));
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (ctx == nullptr) return absl::InternalError("metrics: SSL_CTX_new: " + OpenSslErrors());
  if (SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION) != 1) {
    return absl::InternalError("metrics: cannot require TLS 1.2: " + OpenSslErrors());
  }
  // A client closing without close_notify ends its connection as a plain EOF would.
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                     SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_RELEASE_BUFFERS);
  SAMBAY_RETURN_IF_ERROR(UseCertificateChain(ctx.get(), o.tls_cert_file, cert_pem));
  SAMBAY_RETURN_IF_ERROR(UsePrivateKey(ctx.get(), o.tls_key_file, key_pem));
  return ctx;
}

TokenDigest Sha256(absl::string_view text) {
  TokenDigest d;
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), d.data());
  return d;
}

// The digest of the token in `path`: the content without surrounding whitespace, non-empty,
// printable ASCII without spaces. Errors never quote the content.
absl::StatusOr<TokenDigest> LoadToken(const std::string& path) {
  SAMBAY_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(kTokenFlag, path));
  const absl::string_view token = absl::StripAsciiWhitespace(text);
  absl::Status bad;
  if (token.empty()) {
    bad = Invalid(kTokenFlag, path, " is empty");
  } else if (token.size() > kMaxTokenBytes) {
    bad = Invalid(kTokenFlag, path, ": the token is over ", kMaxTokenBytes, " bytes");
  } else {
    for (const char c : token) {
      if (c <= ' ' || c > '~') {
        bad = Invalid(kTokenFlag, path,
                      ": the token must be printable ASCII without spaces or control characters");
        break;
      }
    }
  }
  const TokenDigest digest = Sha256(token);
  OPENSSL_cleanse(text.data(), text.size());
  if (!bad.ok()) return bad;
  return digest;
}

// Loads what the options name into *l (Start, before the thread runs): INVALID_ARGUMENT naming
// the flag when a file is missing or bad.
absl::Status LoadSecurity(MetricsHttpServer::Loop* l) {
  const MetricsHttpOptions& o = l->options;
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return o.tls_cert_file.empty() ? Invalid(kCertFlag, "required with ", kKeyFlag)
                                   : Invalid(kKeyFlag, "required with ", kCertFlag);
  }
  if (o.reload_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics reload_interval: must be positive, not ",
                     absl::FormatDuration(o.reload_interval)));
  }
  if (!o.tls_cert_file.empty()) {
    l->cert_stamp = StatPath(o.tls_cert_file);
    l->key_stamp = StatPath(o.tls_key_file);
    SAMBAY_ASSIGN_OR_RETURN(l->ssl_ctx, LoadTls(o));
  }
  if (!o.bearer_token_file.empty()) {
    l->token_stamp = StatPath(o.bearer_token_file);
    SAMBAY_ASSIGN_OR_RETURN(l->token_digest, LoadToken(o.bearer_token_file));
    l->has_token = true;
  }
  return absl::OkStatus();
}

// Re-reads the files that changed since they were last tried (on the server thread). A file
// that does not load leaves the old certificate or token in use.
void Reload(MetricsHttpServer::Loop* l) {
  const MetricsHttpOptions& o = l->options;
  if (l->ssl_ctx != nullptr) {
    const FileStamp cert = StatPath(o.tls_cert_file);
    const FileStamp key = StatPath(o.tls_key_file);
    if (cert != l->cert_stamp || key != l->key_stamp) {
      l->cert_stamp = cert;
      l->key_stamp = key;
      absl::StatusOr<SslCtxPtr> ctx = LoadTls(o);
      if (ctx.ok()) {
        l->ssl_ctx = std::move(*ctx);
        Log(LogLevel::kInfo, "metrics", "reloaded the TLS certificate",
            {{"cert", o.tls_cert_file}, {"key", o.tls_key_file}});
      } else {
        Log(LogLevel::kWarning, "metrics", "TLS reload failed: keeping the old certificate",
            {{"error", std::string(ctx.status().message())}});
      }
    }
  }
  if (l->has_token) {
    const FileStamp token = StatPath(o.bearer_token_file);
    if (token != l->token_stamp) {
      l->token_stamp = token;
      absl::StatusOr<TokenDigest> digest = LoadToken(o.bearer_token_file);
      if (digest.ok()) {
        l->token_digest = *digest;
        Log(LogLevel::kInfo, "metrics", "reloaded the bearer token",
            {{"file", o.bearer_token_file}});
      } else {
        Log(LogLevel::kWarning, "metrics", "bearer token reload failed: keeping the old token",
            {{"error", std::string(digest.status().message())}});
      }
    }
  }
}

void OnReload(evutil_socket_t, short, void* arg) {
  Reload(static_cast<MetricsHttpServer::Loop*>(arg));
}

// Drops the connections evhttp has freed (it clears a bufferevent's callbacks when it frees it;
// while it owns one, the event callback is always set) and stops reading from those older than
// max_connection_age: a request in flight is still answered, then evhttp reads EOF and closes.
void Sweep(MetricsHttpServer::Loop* l) {
  const absl::Time now = absl::Now();
  auto& conns = l->conns;
  for (size_t i = 0; i < conns.size();) {
    auto& c = conns[i];
    bufferevent_event_cb event_cb = nullptr;
    bufferevent_getcb(c.bev, nullptr, nullptr, &event_cb, nullptr);
    if (event_cb == nullptr) {
      bufferevent_decref(c.bev);  // the last reference: closes the socket
      c = conns.back();
      conns.pop_back();
      continue;
    }
    if (!c.read_shut && now - c.opened >= l->options.max_connection_age) {
      const evutil_socket_t fd = bufferevent_getfd(c.bev);
      if (fd >= 0) shutdown(fd, SHUT_RD);
      c.read_shut = true;
    }
    ++i;
  }
  const bool full = static_cast<int>(conns.size()) >= l->options.max_connections;
  if (full != l->paused) {
    full ? evconnlistener_disable(l->listener) : evconnlistener_enable(l->listener);
    l->paused = full;
  }
}

void OnSweep(evutil_socket_t, short, void* arg) {
  Sweep(static_cast<MetricsHttpServer::Loop*>(arg));
}

// evhttp's per-connection bufferevent factory: called once per accepted connection. At the cap,
// the listener stops accepting until a connection closes.
// With TLS the bufferevent does the server side of the handshake with the current context; if it
// cannot be made, evhttp makes a plaintext one of its own, which OnRequest refuses.
bufferevent* OnNewConnection(event_base* base, void* arg) {
  auto* l = static_cast<MetricsHttpServer::Loop*>(arg);
  bufferevent* bev = nullptr;
  if (l->ssl_ctx != nullptr) {
    SSL* ssl = SSL_new(l->ssl_ctx.get());
    if (ssl == nullptr) {
      ERR_clear_error();
      return nullptr;
    }
    // Frees `ssl` when it fails; with BEV_OPT_CLOSE_ON_FREE, frees it with the bufferevent.
    bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                         BEV_OPT_CLOSE_ON_FREE);
    if (bev != nullptr) bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
  } else {
    bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
  }
  if (bev == nullptr) return nullptr;  // evhttp then makes its own, untracked
  bufferevent_incref(bev);
  Sweep(l);  // before adding `bev`, which has no callbacks until evhttp sets them
  l->conns.push_back({bev, absl::Now()});
  if (static_cast<int>(l->conns.size()) >= l->options.max_connections && !l->paused) {
    evconnlistener_disable(l->listener);
    l->paused = true;
  }
  return bev;
}

void Reply(evhttp_request* req, int code, const char* reason, const std::string& body,
           const char* content_type) {
  evkeyvalq* headers = evhttp_request_get_output_headers(req);
  evhttp_add_header(headers, "Content-Type", content_type);
  evbuffer* buf = evbuffer_new();
  if (buf == nullptr) {
    evhttp_send_error(req, HTTP_INTERNAL, nullptr);
    return;
  }
  evbuffer_add(buf, body.data(), body.size());
  evhttp_send_reply(req, code, reason, buf);
  evbuffer_free(buf);
}

// Whether the request carries exactly one `Authorization: Bearer <token>` with the right token.
// The scheme is matched in any case (RFC 9110 §11.1), the token byte for byte, in constant time.
bool Authorized(const MetricsHttpServer::Loop* l, evhttp_request* req) {
  const char* value = nullptr;
  int count = 0;
  const evkeyvalq* headers = evhttp_request_get_input_headers(req);
  for (const evkeyval* h = headers->tqh_first; h != nullptr; h = h->next.tqe_next) {
    if (absl::EqualsIgnoreCase(h->key, "Authorization")) {
      value = h->value;
      ++count;
    }
  }
  if (count != 1) return false;
  const absl::string_view v = absl::StripAsciiWhitespace(value);
  constexpr absl::string_view kScheme = "Bearer ";
  if (!absl::StartsWithIgnoreCase(v, kScheme)) return false;
  const TokenDigest got = Sha256(absl::StripLeadingAsciiWhitespace(v.substr(kScheme.size())));
  return CRYPTO_memcmp(got.data(), l->token_digest.data(), got.size()) == 0;
}

bool OverTls(evhttp_request* req) {
  evhttp_connection* conn = evhttp_request_get_connection(req);
  bufferevent* bev = conn == nullptr ? nullptr : evhttp_connection_get_bufferevent(conn);
  return bev != nullptr && bufferevent_openssl_get_ssl(bev) != nullptr;
}

void OnRequest(evhttp_request* req, void* arg) {
  auto* l = static_cast<MetricsHttpServer::Loop*>(arg);
  const evhttp_cmd_type method = evhttp_request_get_command(req);
  if (l->ssl_ctx != nullptr && !OverTls(req)) {  // OnNewConnection could not make a TLS one
    evhttp_send_error(req, HTTP_INTERNAL, nullptr);
    return;
  }
  if (l->has_token && !Authorized(l, req)) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                      "Bearer realm=\"metrics\"");
    Reply(req, 401, "Unauthorized", method == EVHTTP_REQ_HEAD ? "" : "unauthorized\n",
          "text/plain");
    return;
  }
  if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", kAllow);
    Reply(req, 405, "Method Not Allowed", "method not allowed: use GET or HEAD\n", "text/plain");
    return;
  }
  const evhttp_uri* uri = evhttp_request_get_evhttp_uri(req);
  const char* path = uri == nullptr ? nullptr : evhttp_uri_get_path(uri);
  if (path == nullptr || std::strcmp(path, "/metrics") != 0) {
    Reply(req, HTTP_NOTFOUND, "Not Found", "not found: the metrics are at /metrics\n",
          "text/plain");
    return;
  }
  std::ostringstream text;
  prometheus::TextSerializer().Serialize(text, l->collectable->Collect());
  if (method == EVHTTP_REQ_HEAD) {
    // libevent 2.1.12 would send the body of a HEAD reply (and break a pipelined connection):
    // send the length of the GET body and no body.
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Length",
                      std::to_string(text.str().size()).c_str());
    Reply(req, HTTP_OK, "OK", "", kMetricsContentType);
    return;
  }
  Reply(req, HTTP_OK, "OK", text.str(), kMetricsContentType);
}

void OnWake(evutil_socket_t, short, void* arg) {
  event_base_loopbreak(static_cast<MetricsHttpServer::Loop*>(arg)->base);
}

// The bound port of a listening socket.
absl::StatusOr<int> BoundPort(evutil_socket_t fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return absl::InternalError(absl::StrCat("metrics: getsockname: ", std::strerror(errno)));
  }
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  return absl::InternalError("metrics: the listener is not an IP socket");
}

// The event base and evhttp with the limits of the options; every request goes to OnRequest.
absl::Status NewHttp(MetricsHttpServer::Loop* l) {
  l->base = event_base_new();
  if (l->base == nullptr) return absl::InternalError("metrics: event_base_new failed");
  l->http = evhttp_new(l->base);
  if (l->http == nullptr) return absl::InternalError("metrics: evhttp_new failed");
  evhttp_set_max_headers_size(l->http, l->options.max_header_bytes);
  evhttp_set_max_body_size(l->http, l->options.max_body_bytes);
  // Also bounds a TLS handshake: evhttp sets it on the bufferevent before the handshake's reads.
  const timeval timeout = absl::ToTimeval(l->options.timeout);
  evhttp_set_timeout_tv(l->http, &timeout);
  // Every method evhttp parses reaches OnRequest, which answers 405 for all but GET and HEAD.
  evhttp_set_allowed_methods(l->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                                          EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                          EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
  evhttp_set_default_content_type(l->http, "text/plain");
  evhttp_set_gencb(l->http, OnRequest, l);
  evhttp_set_bevcb(l->http, OnNewConnection, l);
  return absl::OkStatus();
}

// The wake pipe (Stop), the sweep timer and, with files to watch, the reload timer.
absl::Status AddLoopEvents(MetricsHttpServer::Loop* l) {
  if (pipe2(l->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    return absl::InternalError(absl::StrCat("metrics: pipe2: ", std::strerror(errno)));
  }
  l->wake_event = event_new(l->base, l->wake[0], EV_READ, OnWake, l);
  l->sweep_event = event_new(l->base, -1, EV_PERSIST, OnSweep, l);
  if (l->wake_event == nullptr || l->sweep_event == nullptr ||
      event_add(l->wake_event, nullptr) != 0 || event_add(l->sweep_event, &kSweep) != 0) {
    return absl::InternalError("metrics: cannot create the loop's events");
  }
  const bool watch = l->ssl_ctx != nullptr || l->has_token;
  if (watch && l->options.reload_interval != absl::InfiniteDuration()) {
    const timeval every = absl::ToTimeval(l->options.reload_interval);
    l->reload_event = event_new(l->base, -1, EV_PERSIST, OnReload, l);
    if (l->reload_event == nullptr || event_add(l->reload_event, &every) != 0) {
      return absl::InternalError("metrics: cannot create the reload timer");
    }
  }
  return absl::OkStatus();
}

}  // namespace

MetricsHttpServer::Loop::~Loop() {
  if (reload_event != nullptr) event_free(reload_event);
  if (sweep_event != nullptr) event_free(sweep_event);
  if (wake_event != nullptr) event_free(wake_event);
  if (http != nullptr) evhttp_free(http);  // frees the listener and every connection
  for (Conn& c : conns) bufferevent_decref(c.bev);
  if (base != nullptr) event_base_free(base);
  for (int fd : wake) {
    if (fd >= 0) close(fd);
  }
}

MetricsHttpServer::MetricsHttpServer(std::shared_ptr<prometheus::Collectable> collectable,
                                     MetricsHttpOptions options)
    : collectable_(std::move(collectable)), options_(options) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

absl::StatusOr<int> MetricsHttpServer::Start(const std::string& host, int port) {
  if (loop_ != nullptr) return absl::FailedPreconditionError("metrics server already started");
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("metrics-port: ", port, " is out of range"));
  }
  auto l = std::make_unique<Loop>(collectable_.get(), options_);
  SAMBAY_RETURN_IF_ERROR(LoadSecurity(l.get()));
  SAMBAY_RETURN_IF_ERROR(NewHttp(l.get()));
  evhttp_bound_socket* bound =
      evhttp_bind_socket_with_handle(l->http, host.c_str(), static_cast<ev_uint16_t>(port));
  if (bound == nullptr) {
    return absl::UnavailableError(absl::StrCat("metrics-port: cannot listen on ", host, ":", port,
                                               ": ", std::strerror(errno)));
  }
  l->listen_fd = evhttp_bound_socket_get_fd(bound);
  l->listener = evhttp_bound_socket_get_listener(bound);
  absl::StatusOr<int> bound_port = BoundPort(l->listen_fd);
  if (!bound_port.ok()) return bound_port.status();
  SAMBAY_RETURN_IF_ERROR(AddLoopEvents(l.get()));
  event_base* base = l->base;
  thread_ = std::thread([base] {
    // A peer that resets the connection makes a write fail with EPIPE, not kill the process.
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
    event_base_dispatch(base);
  });
  loop_ = std::move(l);
  return *bound_port;
}

void MetricsHttpServer::Stop() {
  if (loop_ == nullptr) return;
  const char byte = 0;
  while (write(loop_->wake[1], &byte, 1) < 0 && errno == EINTR) {
  }
  thread_.join();
  loop_.reset();
}

absl::StatusOr<int> ServeMetrics(std::shared_ptr<prometheus::Collectable> collectable,
                                 const std::string& host, int port,
                                 std::unique_ptr<MetricsHttpServer>* server,
                                 MetricsHttpOptions options) {
  if (*server != nullptr) return absl::FailedPreconditionError("metrics are already served");
  auto http = std::make_unique<MetricsHttpServer>(std::move(collectable), std::move(options));
  absl::StatusOr<int> bound = http->Start(host, port);
  if (bound.ok()) *server = std::move(http);
  return bound;
}

}  // namespace sambay
