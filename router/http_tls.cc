#include "router/http_tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace sambay {
namespace {

namespace ssl = boost::asio::ssl;

constexpr char kCertFlag[] = "--tls-cert";
constexpr char kKeyFlag[] = "--tls-key";
constexpr char kCaFlag[] = "--tls-client-ca";

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyFree>;

absl::Status Bad(const char* flag, const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, ": ", what));
}

// The reason of the first error OpenSSL queued on this thread; the queue is left empty.
std::string OpenSslError() {
  const unsigned long e = ERR_peek_error();
  const char* reason = e != 0 ? ERR_reason_error_string(e) : nullptr;
  std::string text = reason != nullptr ? reason : absl::StrCat("OpenSSL error ", e);
  ERR_clear_error();
  return text;
}

// An encrypted key is refused rather than asked for on a terminal.
int NoPassword(char*, int, int, void*) { return -1; }

absl::StatusOr<std::string> ReadFile(const char* flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Bad(flag, path, absl::StrCat("cannot read the file: ", std::strerror(errno)));
  std::ostringstream s;
  s << in.rdbuf();
  if (s.str().empty()) return Bad(flag, path, "the file is empty");
  return s.str();
}

BioPtr MemoryBio(const std::string& data) {
  return BioPtr(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

// Every certificate of a PEM file, in order (other kinds of PEM blocks are skipped).
absl::StatusOr<std::vector<X509Ptr>> ReadCertificates(const char* flag, const std::string& path) {
  SAMBAY_ASSIGN_OR_RETURN(const std::string pem, ReadFile(flag, path));
  BioPtr bio = MemoryBio(pem);
  std::vector<X509Ptr> certs;
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, NoPassword, nullptr)) {
    certs.emplace_back(x);
  }
  // Reading ends at the end of the file ("no start line") or at a certificate that is broken.
  const unsigned long last = ERR_peek_last_error();
  const bool clean_end =
      ERR_GET_LIB(last) == ERR_LIB_PEM && ERR_GET_REASON(last) == PEM_R_NO_START_LINE;
  const std::string error = OpenSslError();
  if (certs.empty()) return Bad(flag, path, "no PEM certificate in the file");
  if (!clean_end) {
    return Bad(flag, path,
               absl::StrCat("a PEM certificate after the first ", certs.size(),
                            " does not parse: ", error));
  }
  return certs;
}

absl::StatusOr<KeyPtr> ReadKey(const std::string& path) {
  SAMBAY_ASSIGN_OR_RETURN(const std::string pem, ReadFile(kKeyFlag, path));
  BioPtr bio = MemoryBio(pem);
  KeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassword, nullptr));
  ERR_clear_error();
  if (key == nullptr) {
    return Bad(kKeyFlag, path,
               "no PEM private key in the file (an encrypted key is not supported)");
  }
  return key;
}

absl::Status CheckValidNow(const std::string& path, const X509* cert) {
  if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0) {
    return Bad(kCertFlag, path, "the certificate is not valid yet");
  }
  if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0) {
    return Bad(kCertFlag, path, "the certificate has expired");
  }
  return absl::OkStatus();
}

// The protocol settings, the identity and, with `roots`, the client certificate check.
absl::Status Configure(SSL_CTX* ctx, const std::string& cert_path, const std::string& key_path,
                       const std::vector<X509Ptr>& chain, EVP_PKEY* key,
                       const std::vector<X509Ptr>& roots) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(
      ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_default_passwd_cb(ctx, NoPassword);
  // Sessions resumed with a client certificate need a session id context.
  static constexpr unsigned char kSessionContext[] = "sambay-http";
  SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof(kSessionContext) - 1);
  if (SSL_CTX_use_certificate(ctx, chain.front().get()) != 1) {
    return Bad(kCertFlag, cert_path, absl::StrCat("cannot use the certificate: ", OpenSslError()));
  }
  for (size_t i = 1; i < chain.size(); ++i) {
    if (SSL_CTX_add1_chain_cert(ctx, chain[i].get()) != 1) {
      return Bad(kCertFlag, cert_path,
                 absl::StrCat("cannot use chain certificate ", i + 1, ": ", OpenSslError()));
    }
  }
  if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    return Bad(kKeyFlag, key_path,
               absl::StrCat("the key does not match the certificate in ", cert_path, " (",
                            OpenSslError(), ")"));
  }
  if (roots.empty()) return absl::OkStatus();
  for (const X509Ptr& root : roots) {
    // Trusted for the check, and named in the request for a client certificate.
    if (X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), root.get()) != 1 ||
        SSL_CTX_add_client_CA(ctx, root.get()) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCaFlag, ": cannot use a certificate: ", OpenSslError()));
    }
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  return absl::OkStatus();
}

// Reads every file and builds a context from them.
absl::StatusOr<std::shared_ptr<ssl::context>> Build(const std::string& cert_path,
                                                    const std::string& key_path,
                                                    const std::string& ca_path) {
  SAMBAY_ASSIGN_OR_RETURN(const std::vector<X509Ptr> chain, ReadCertificates(kCertFlag, cert_path));
  SAMBAY_RETURN_IF_ERROR(CheckValidNow(cert_path, chain.front().get()));
  SAMBAY_ASSIGN_OR_RETURN(const KeyPtr key, ReadKey(key_path));
  if (X509_check_private_key(chain.front().get(), key.get()) != 1) {
    ERR_clear_error();
    return Bad(kKeyFlag, key_path,
               absl::StrCat("the key does not match the certificate in ", cert_path));
  }
  std::vector<X509Ptr> roots;
  if (!ca_path.empty()) {
    SAMBAY_ASSIGN_OR_RETURN(roots, ReadCertificates(kCaFlag, ca_path));
  }
  std::shared_ptr<ssl::context> ctx;
  try {
    ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(absl::StrCat(kCertFlag, ": no TLS context: ", e.what()));
  }
  SAMBAY_RETURN_IF_ERROR(
      Configure(ctx->native_handle(), cert_path, key_path, chain, key.get(), roots));
  return ctx;
}

HttpTlsContexts::Stamp StampOf(const std::string& path) {
  struct stat st {};
  if (path.empty() || stat(path.c_str(), &st) != 0) return {};
  return {.dev = st.st_dev,
          .ino = st.st_ino,
          .size = st.st_size,
          .mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

}  // namespace

void AsyncTlsAccept(HttpTlsStream& stream, absl::Duration timeout,
                    std::function<void(boost::beast::error_code)> done) {
  boost::beast::get_lowest_layer(stream).expires_after(absl::ToChronoNanoseconds(timeout));
  stream.async_handshake(ssl::stream_base::server, std::move(done));
}

void AsyncTlsCloseNotify(HttpTlsStream& stream, absl::Duration timeout,
                         std::function<void()> done) {
  // Marked as received, the client's close_notify is not read: the shutdown is one write.
  SSL* ssl = stream.native_handle();
  SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | SSL_RECEIVED_SHUTDOWN);
  boost::beast::get_lowest_layer(stream).expires_after(absl::ToChronoNanoseconds(timeout));
  stream.async_shutdown([done = std::move(done)](boost::beast::error_code) { done(); });
}

bool IsTlsError(const boost::system::error_code& ec) {
  return ec == ssl::error::stream_truncated ||
         ec.category() == boost::asio::error::get_ssl_category();
}

absl::StatusOr<std::unique_ptr<HttpTlsContexts>> HttpTlsContexts::Create(
    const HttpServerOptions& options) {
  const std::string& cert = options.tls_cert_file;
  const std::string& key = options.tls_key_file;
  if (cert.empty() != key.empty()) {
    return absl::InvalidArgumentError(cert.empty() ? "--tls-cert: required with --tls-key"
                                                   : "--tls-key: required with --tls-cert");
  }
  if (cert.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca: needs --tls-cert and --tls-key");
  }
  std::unique_ptr<HttpTlsContexts> contexts(
      new HttpTlsContexts({cert, key, options.tls_client_ca_file}, options.tls_reload));
  // The stamps before the reads: a file replaced meanwhile is read again at the next check.
  std::vector<Stamp> stamps = contexts->Stamps();
  SAMBAY_ASSIGN_OR_RETURN(std::shared_ptr<ssl::context> ctx,
                          Build(cert, key, options.tls_client_ca_file));
  MutexLock lock(&contexts->mu_);
  contexts->current_ = std::move(ctx);
  contexts->stamps_ = std::move(stamps);
  contexts->next_check_ = absl::Now() + options.tls_reload;
  return contexts;
}

std::vector<HttpTlsContexts::Stamp> HttpTlsContexts::Stamps() const {
  return {StampOf(files_.cert), StampOf(files_.key), StampOf(files_.client_ca)};
}

std::shared_ptr<boost::asio::ssl::context> HttpTlsContexts::Current() {
  {
    MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    if (reload_ <= absl::ZeroDuration() || checking_ || now < next_check_) return current_;
    next_check_ = now + reload_;
    checking_ = true;
  }
  std::vector<Stamp> stamps = Stamps();
  {
    MutexLock lock(&mu_);
    const bool changed = stamps != stamps_;
    stamps_ = stamps;
    if (!changed) {
      checking_ = false;
      return current_;
    }
  }
  // Outside the lock: reading the files takes a while, and other callers get the current one.
  auto built = Build(files_.cert, files_.key, files_.client_ca);
  if (built.ok()) {
    Log(LogLevel::kInfo, "http", "TLS files changed: new connections use the new certificate",
        {{"cert", files_.cert}});
  } else {
    Log(LogLevel::kWarning, "http",
        "TLS files changed but do not load: new connections keep the previous certificate",
        {{"error", std::string(built.status().message())}});
  }
  MutexLock lock(&mu_);
  checking_ = false;
  if (built.ok()) current_ = *std::move(built);
  return current_;
}

}  // namespace sambay
