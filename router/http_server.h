// HttpServer: the router's HTTP/1.1 listener (Boost.Beast on Asio). It reads requests with
// limits (header bytes, body bytes) and timeouts (a request's header, then its body, must arrive
// in time: a slow-loris client is cut off; every write of a response must complete in time: a
// client that does not read is cut off), answers protocol errors itself (400, 413, 431, JSON
// bodies, then closes; 400 also for an HTTP/1.1 request without exactly one Host, and for a
// Transfer-Encoding that does not end in chunked), and hands every well-formed request to the
// handler as an HttpExchange. Connections are kept alive between requests; a response to HEAD
// has no body. No thread per connection: `threads` threads run every connection's I/O; each
// connection's operations are serialized on its own strand. A handler that throws gets its
// request answered with a 500; the server keeps serving. Out of file descriptors, accepting
// pauses between tries (it does not spin).
//
// HTTPS: with tls_cert_file and tls_key_file set, the listener speaks only TLS (1.2 or later,
// no renegotiation; Boost.Asio SSL on OpenSSL, router/http_tls.h); with tls_client_ca_file also
// set, only to clients that present a certificate signed by that CA. The handshake must complete
// within header_timeout (a client that sends nothing, or stalls mid-handshake, is cut off like a
// slow-loris one); a failed handshake (plaintext HTTP on the TLS port, an untrusted or missing
// client certificate) closes the connection without a response. Every limit above holds over
// TLS (a connection beyond max_connections gets its 503 after the handshake), HttpExchange
// behaves the same, and a connection that closes after a response sends close_notify first (an
// HTTP/1.0 stream is seen to be complete). The files are checked for changes at most once per
// tls_reload, when a connection is accepted: new connections use the new files, open ones keep
// theirs, and files that do not load leave the previous ones in use (with a warning). Plaintext
// and TLS connections are one template instantiated per stream type: no indirection per read or
// write.
//
// HttpExchange is the handler's view of one request: a complete response (Respond), or a
// streamed one (Send ... End, chunked transfer encoding), plus a callback when the client goes
// away before the response ended (the connection is watched for EOF while streaming).
//
// Ownership: the server owns its threads, listener and TLS contexts; connections and exchanges
// are reference-counted (an exchange keeps its connection alive until the response ended; a TLS
// connection keeps the context it started with). Stop() closes the listener and every connection
// and joins the threads.
// Thread-safety: HttpExchange's methods may be called from any thread (they post to the
// connection's strand); callbacks run on the server's threads. Start/Stop from one thread.
#ifndef SAMBAY_ROUTER_HTTP_SERVER_H_
#define SAMBAY_ROUTER_HTTP_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sambay {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

class HttpExchange {
 public:
  virtual ~HttpExchange() = default;
  virtual const std::string& method() const = 0;
  virtual const std::string& target() const = 0;  // path and query, as sent
  virtual const std::string& body() const = 0;
  // The value of header `name` (case-insensitive), "" when absent.
  virtual std::string header(const std::string& name) const = 0;
  // "ipv4:ADDR" / "ipv6:[ADDR]" of the client (PeerHost's form, common/peer_identity.h).
  virtual const std::string& peer() const = 0;

  // A complete response; `done(ok)` runs once it was written (ok) or could not be (optional).
  virtual void Respond(int status, const std::string& content_type, std::string body,
                       HttpHeaders headers = {}, std::function<void(bool)> done = nullptr) = 0;
  // A streamed response: the first Send writes the head (status 200, `content_type`) and each
  // Send one chunk; End writes `data` (if any) and the last chunk. `done(ok)` per call; one call
  // at a time (the next after the previous one's done). (To an HTTP/1.0 client the data goes
  // out unframed and the connection closes at the end.)
  virtual void Send(const std::string& content_type, std::string data,
                    std::function<void(bool)> done) = 0;
  virtual void End(std::string data, std::function<void(bool)> done) = 0;
  // `fn` runs once if the client goes away (or Abort is called) before the response ended;
  // never after the response ended.
  virtual void OnClientGone(std::function<void()> fn) = 0;
  // Closes the connection (a write in flight fails); nothing once the response ended.
  // Every method is bound to its own request: after the response ended (the connection may be
  // serving the next request by then), Respond/Send/End only report done(false).
  virtual void Abort() = 0;
};

using HttpHandler = std::function<void(std::shared_ptr<HttpExchange>)>;

struct HttpServerOptions {
  std::string host = "0.0.0.0";
  int port = 0;  // 0: any free port (Start returns it)
  int threads = 1;
  size_t max_header_bytes = 16 << 10;
  int64_t max_body_bytes = 4 << 20;
  int max_connections = 4096;  // beyond: 503 and close
  // Also the keep-alive idle limit, and the limit of a TLS handshake.
  absl::Duration header_timeout = absl::Seconds(10);
  absl::Duration body_timeout = absl::Seconds(30);
  // Longest one write of a response may take (a client that does not read is cut off).
  absl::Duration write_timeout = absl::Seconds(30);
  // Bytes a client may send ahead (pipelined) while its response is being made; beyond, the
  // connection is closed. At least max_header_bytes.
  size_t max_pipelined_bytes = 64 << 10;
  // The kernel send buffer of each connection (SO_SNDBUF; 0 = the kernel's autotuning, up to
  // net.ipv4.tcp_wmem's maximum, often 4 MiB). Bounded, a client that reads nothing pins at most
  // this much kernel memory, and its stream stalls (and is cut by the write timeout) after this
  // much instead of after megabytes.
  int send_buffer_bytes = 256 << 10;
  // HTTPS (see the top of this file): PEM files. cert and key: both or neither; client_ca needs
  // both, and makes a client certificate signed by one of its certificates mandatory.
  std::string tls_cert_file, tls_key_file, tls_client_ca_file;
  // How often, at most, the TLS files are checked for changes; zero or less: never.
  absl::Duration tls_reload = absl::Seconds(60);
};

class HttpServer {
 public:
  HttpServer(HttpServerOptions options, HttpHandler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and starts serving; returns the bound port. Errors: INVALID_ARGUMENT "--host: ..." and,
  // for the TLS files (checked before binding), "--tls-cert: ...", "--tls-key: ...",
  // "--tls-client-ca: ..." (unreadable, not PEM, key mismatch, certificate out of its validity);
  // UNAVAILABLE "--http-port: ..." when the port cannot be bound.
  absl::StatusOr<int> Start();
  // Stops accepting, closes every connection and joins the threads. Every `done` of an
  // exchange runs (false once stopped). Idempotent.
  void Stop();
  // Open connections now.
  int connections() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_HTTP_SERVER_H_
