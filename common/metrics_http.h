// MetricsHttpServer: the Prometheus /metrics endpoint of the router and the worker, an HTTP/1.1
// server on libevent's evhttp with its own event-loop thread, optionally over TLS and behind a
// bearer token (the two things Prometheus's scrape config can present: tls_config and
// authorization.credentials_file).
//
// Behaviour (docs/worker.md, "The metrics endpoint"):
//   GET or HEAD /metrics (any query string)  200, Content-Type: text/plain; version=0.0.4
//   GET or HEAD on any other path            404
//   POST, PUT, DELETE, OPTIONS, TRACE, CONNECT, PATCH   405 with `Allow: GET, HEAD`
//   a method evhttp does not know             501 (evhttp's answer)
//   a malformed request line or header        400 (evhttp's answer), or the connection closed
//   headers over max_header_bytes             400 (evhttp's answer), connection closed
//   a body over max_body_bytes                413 (evhttp's answer), connection closed
// With bearer_token_file, every request that evhttp parses must first carry
// `Authorization: Bearer <token>` (the scheme in any case, the token exactly); otherwise 401 with
// `WWW-Authenticate: Bearer realm="metrics"`, the same answer for a missing, malformed or wrong
// token. Tokens are compared in constant time over their SHA-256 digests and never logged.
// With tls_cert_file/tls_key_file the port speaks only TLS (1.2 or later): a failed handshake or a
// plaintext request closes that connection and nothing else.
// Every connection is dropped after `timeout` without progress (idle keep-alive, a TLS handshake
// that stalls), and the server stops reading from a connection older than max_connection_age (a
// slowloris client that sends a byte now and then, also mid-handshake): a request in flight is
// answered, then the connection closes. At most max_connections are open at once: beyond that,
// new connections wait in the kernel's accept queue until one closes (closed connections are
// counted out within 200 ms). The loop never blocks on a peer, so a stalled or idle connection
// cannot hold up another scrape.
//
// Reloading: every reload_interval the server thread stats the certificate, key and token files
// (device, inode, size, mtime; a symlink is followed, so a Kubernetes Secret's swap counts). When
// they changed it reads them again: new connections use the new certificate or token, open ones
// keep theirs. A file that does not load (half-written, key not matching the certificate yet, an
// empty token) leaves the old one in use and logs one warning per change.
//
// ServeMetrics starts such a server for an owner that keeps it in a unique_ptr (RouterMetrics,
// WorkerMetrics).
//
// Ownership: holds a shared reference to the collectable it serves; owns its listener, the
// connections, the OpenSSL context and the token's digest. Thread-safety: Start and Stop (and the
// destructor) must be called from one thread at a time, and so must ServeMetrics for one owner;
// everything else (requests, reloads) runs on the server's own thread, which alone touches the
// loop's state, so there is no lock. The collectable's Collect() is called on that thread and
// must be thread-safe (prometheus::Registry's is).
#ifndef SAMBAY_COMMON_METRICS_HTTP_H_
#define SAMBAY_COMMON_METRICS_HTTP_H_

#include <prometheus/collectable.h>

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sambay {

struct MetricsHttpOptions {
  int max_header_bytes = 8 << 10;              // request line and headers together; more gets 400
  int max_body_bytes = 4 << 10;                // a scrape has no body; more gets 413
  absl::Duration timeout = absl::Seconds(10);  // a read or write without progress: closed
  absl::Duration max_connection_age = absl::Seconds(20);  // then no more requests are read
  int max_connections = 128;  // open at once; more wait in the accept queue
  // TLS: a PEM certificate chain (leaf first) and its unencrypted PEM private key, both or neither.
  // When set the endpoint speaks only HTTPS (TLS 1.2 minimum; no client certificate asked for).
  std::string tls_cert_file, tls_key_file;
  // When set, every request must carry `Authorization: Bearer <token>`, the token being this
  // file's content without surrounding whitespace (printable ASCII, no inner spaces, <= 4 KiB).
  std::string bearer_token_file;
  // How often the files above are checked for changes (and re-read when they changed); must be
  // positive; absl::InfiniteDuration() never re-reads them.
  absl::Duration reload_interval = absl::Seconds(60);
};

class MetricsHttpServer {
 public:
  explicit MetricsHttpServer(std::shared_ptr<prometheus::Collectable> collectable,
                             MetricsHttpOptions options = {});
  ~MetricsHttpServer();  // Stop()
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Reads and checks the TLS and token files, listens on host:port (port 0 = a free port) and
  // starts the server thread. Returns the bound port; INVALID_ARGUMENT naming the flag
  // ("--metrics-tls-cert: ...", "--metrics-tls-key: ...", "--metrics-bearer-token-file: ...")
  // for a file that is missing, unreadable, not PEM, an expired certificate, a key that does not
  // match the certificate or is encrypted, an empty or malformed token; UNAVAILABLE (naming
  // host:port) when it cannot listen; FAILED_PRECONDITION when started.
  absl::StatusOr<int> Start(const std::string& host, int port);

  // Stops the thread and closes the listener and every connection. Idempotent.
  void Stop();

  // The libevent state (metrics_http.cc); public only so that its callbacks can name it.
  struct Loop;

 private:
  std::shared_ptr<prometheus::Collectable> collectable_;
  const MetricsHttpOptions options_;
  std::unique_ptr<Loop> loop_;  // null until Start succeeds
  std::thread thread_;
};

// Serves /metrics of `collectable` on host:port (port 0 = any free port) with a new
// MetricsHttpServer with `options` kept in *server. Returns the bound port; FAILED_PRECONDITION
// when *server is already set; the error of Start (and *server left null) when it cannot start.
absl::StatusOr<int> ServeMetrics(std::shared_ptr<prometheus::Collectable> collectable,
                                 const std::string& host, int port,
                                 std::unique_ptr<MetricsHttpServer>* server,
                                 MetricsHttpOptions options = {});

}  // namespace sambay

#endif  // SAMBAY_COMMON_METRICS_HTTP_H_
