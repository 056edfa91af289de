// The TLS side of HttpServer (router/http_server.h): the stream type and its handshake and
// close, and HttpTlsContexts: Boost.Asio SSL contexts built from HttpServerOptions'
// tls_cert_file, tls_key_file and tls_client_ca_file, and built again when those files change.
//
// A context speaks TLS 1.2 or later (no renegotiation) with the certificate chain of
// tls_cert_file (PEM, leaf first) and the key of tls_key_file (PEM, unencrypted). With
// tls_client_ca_file (PEM, one or more certificates), every client must present a certificate
// that chains to one of them, or the handshake fails.
//
// Reload: Current() looks at the files (stat: device, inode, size, mtime) at most once per
// tls_reload (never when tls_reload <= 0). When one changed, it builds a new context with the
// same checks as at start-up, which the connections that start from then on use; a connection
// keeps the context it started with. A new set of files that does not load (a bad PEM, a key
// that does not match, a half-done replacement: replace the key first, then the certificate,
// each by rename) keeps the previous context and logs a warning once per change; the files are
// tried again when they change again.
//
// Ownership: a context is a shared_ptr; each connection holds its own until it closes. The
// stream functions borrow the stream, which must live until `done` ran.
// Thread-safety: HttpTlsContexts::Current() may be called from any thread; the stream functions
// on the stream's strand only.
#ifndef SAMBAY_ROUTER_HTTP_TLS_H_
#define SAMBAY_ROUTER_HTTP_TLS_H_

#include <sys/types.h>

#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "router/http_server.h"

namespace sambay {

// A TLS connection of the server: TLS over Beast's TCP stream (whose timers bound every
// operation).
using HttpTlsStream = boost::beast::ssl_stream<boost::beast::tcp_stream>;

// The server side of the handshake; the stream closes (done gets beast::error::timeout) when it
// takes longer than `timeout`. `done` runs on the stream's executor.
void AsyncTlsAccept(HttpTlsStream& stream, absl::Duration timeout,
                    std::function<void(boost::beast::error_code)> done);
// Sends close_notify (bounded by `timeout`) and then runs `done`, whatever happened. The
// client's close_notify is not awaited (RFC 8446 6.1): the connection closes next.
void AsyncTlsCloseNotify(HttpTlsStream& stream, absl::Duration timeout, std::function<void()> done);
// Whether `ec` came from the TLS layer (a failed handshake or record, a truncated stream).
bool IsTlsError(const boost::system::error_code& ec);

class HttpTlsContexts {
 public:
  // Loads the files of `options` (REQUIRES: tls_cert_file or tls_key_file or tls_client_ca_file
  // set). Errors are INVALID_ARGUMENT naming the router's flag: "--tls-cert: ...",
  // "--tls-key: ...", "--tls-client-ca: ..." (missing partner file, unreadable, no PEM, an
  // encrypted or mismatched key, a certificate that is expired or not valid yet).
  static absl::StatusOr<std::unique_ptr<HttpTlsContexts>> Create(const HttpServerOptions& options);

  // The context for a connection that starts now (never null).
  std::shared_ptr<boost::asio::ssl::context> Current();

  // One file's identity as stat(2) sees it (all zero when it cannot be stat'ed).
  struct Stamp {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    int64_t mtime_ns = 0;
    bool operator==(const Stamp&) const = default;
  };

 private:
  struct Files {
    std::string cert, key, client_ca;
  };
  HttpTlsContexts(Files files, absl::Duration reload) : files_(std::move(files)), reload_(reload) {}
  std::vector<Stamp> Stamps() const;

  const Files files_;
  const absl::Duration reload_;
  Mutex mu_;
  std::shared_ptr<boost::asio::ssl::context> current_ ABSL_GUARDED_BY(mu_);
  // The files as last tried (loaded or not); the next check after next_check_.
  std::vector<Stamp> stamps_ ABSL_GUARDED_BY(mu_);
  absl::Time next_check_ ABSL_GUARDED_BY(mu_);
  bool checking_ ABSL_GUARDED_BY(mu_) = false;  // one check at a time
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_HTTP_TLS_H_
