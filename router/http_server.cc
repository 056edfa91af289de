#include "router/http_server.h"

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/mutex.h"
#include "router/http_tls.h"

namespace sambay {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
// The two transports: Connection is instantiated for each (no indirection per read or write).
using PlainStream = beast::tcp_stream;
using TlsStream = HttpTlsStream;

// An OpenAI-shaped error body for the errors the server answers itself.
std::string ErrorJson(const std::string& message, const char* type = "invalid_request_error") {
  nlohmann::json j = {
      {"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}}}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::chrono::steady_clock::duration Chrono(absl::Duration d) {
  return absl::ToChronoNanoseconds(d);
}

// Errors that end a connection without a response: the client left or sent nothing in time, or
// the TLS layer failed (nothing can be written through it then).
bool ClientLeft(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == net::error::eof || ec == beast::error::timeout ||
         ec == net::error::operation_aborted || ec == net::error::connection_reset ||
         IsTlsError(ec);
}

// What the server keeps of each connection, whatever its transport.
class ConnectionBase {
 public:
  virtual ~ConnectionBase() = default;
  // Closes the connection on its strand.
  virtual void PostClose() = 0;
};

// What every connection shares with the server.
struct Shared {
  HttpServerOptions options;
  HttpHandler handler;
  std::atomic<int> connections{0};
  std::atomic<bool> stopping{false};  // Stop began: no new request reaches the handler
  Mutex mu;
  // Set (under mu) once the threads stop: nothing is posted to the strands after it.
  bool stopped ABSL_GUARDED_BY(mu) = false;
  std::map<ConnectionBase*, std::weak_ptr<ConnectionBase>> live ABSL_GUARDED_BY(mu);
};

// One client connection: reads requests one after another and runs one exchange at a time.
// Everything below runs on the connection's strand. Over TLS (TlsStream) it first completes the
// handshake; every read and write then goes through the TLS stream, and every timer, cancel and
// close through the TCP stream below it (Tcp()).
template <class Stream>
class Connection final : public ConnectionBase,
                         public std::enable_shared_from_this<Connection<Stream>> {
 public:
  static constexpr bool kTls = std::is_same_v<Stream, TlsStream>;

  // `tls`: the context of a TLS connection (held until it closes); null for plaintext.
  Connection(tcp::socket socket, std::shared_ptr<Shared> shared, std::shared_ptr<ssl::context> tls)
      : tls_(std::move(tls)),
        stream_(MakeStream(std::move(socket), tls_.get())),
        shared_(std::move(shared)) {
    beast::error_code ec;
    const tcp::endpoint ep = Tcp().socket().remote_endpoint(ec);
    if (!ec) {
      peer_ = ep.address().is_v6() ? absl::StrCat("ipv6:[", ep.address().to_string(), "]")
                                   : absl::StrCat("ipv4:", ep.address().to_string());
    }
  }
  ~Connection() override {
    {
      MutexLock lock(&shared_->mu);
      shared_->live.erase(this);
    }
    shared_->connections.fetch_sub(1);
  }

  void Start(bool reject) {
    Post([self = this->shared_from_this(), reject] {
      if constexpr (kTls) {
        self->Handshake(reject);
      } else {
        self->Begin(reject);
      }
    });
  }
  // Runs `fn` on the connection's strand.
  template <class Fn>
  void Post(Fn fn) {
    net::post(stream_.get_executor(), std::move(fn));
  }
  // Posts `fn` unless the server stopped (then nothing would run it): false then.
  template <class Fn>
  bool PostUnlessStopped(Fn fn) {
    MutexLock lock(&shared_->mu);
    if (shared_->stopped) return false;
    Post(std::move(fn));
    return true;
  }
  void PostClose() override {
    Post([self = this->shared_from_this()] { self->Close(); });
  }
  void Close() {
    if (closed_) return;
    closed_ = true;
    beast::error_code ec;
    Tcp().socket().shutdown(tcp::socket::shutdown_both, ec);
    Tcp().close();
    ClientGone();
  }
  const std::string& peer() const { return peer_; }

  // The exchange's operations (on the strand). `id` names the exchange: one that ended (the
  // connection may be serving the next request) only gets done(false).
  void Respond(uint64_t id, int status, const std::string& type, std::string body,
               HttpHeaders headers, std::function<void(bool)> done);
  void Send(uint64_t id, const std::string& type, std::string data, std::function<void(bool)> done);
  void End(uint64_t id, std::string data, std::function<void(bool)> done);
  void SetGoneCallback(uint64_t id, std::function<void()> fn);
  void Abort(uint64_t id) {
    if (Current(id)) Close();
  }

 private:
  static Stream MakeStream(tcp::socket socket, ssl::context* tls) {
    if constexpr (kTls) {
      return Stream(std::move(socket), *tls);
    } else {
      return Stream(std::move(socket));
    }
  }
  // The TCP stream: timeouts, cancel, close, and the socket.
  beast::tcp_stream& Tcp() { return beast::get_lowest_layer(stream_); }
  bool Current(uint64_t id) const { return in_exchange_ && id == exchange_id_; }
  // The first response or request read of a connection (after the handshake, over TLS).
  void Begin(bool reject) {
    if (reject) {
      keep_alive_ = false;
      WriteError(http::status::service_unavailable,
                 "the router has too many open HTTP connections: retry later");
      return;
    }
    ReadHeader();
  }
  void Handshake(bool reject) {
    // Bounded like a request's header: a client that sends nothing, or stalls mid-handshake, is
    // cut off. A failed handshake (plaintext HTTP, an untrusted client certificate) just closes.
    AsyncTlsAccept(stream_, shared_->options.header_timeout,
                   [self = this->shared_from_this(), reject](beast::error_code ec) {
                     if (!ec) return self->Begin(reject);
                     if (LogEnabled(LogLevel::kDebug)) {
                       Log(LogLevel::kDebug, "http", "TLS handshake failed",
                           {{"peer", self->peer_}, {"error", ec.message()}});
                     }
                     self->Close();
                   });
  }
  void ReadHeader();
  void OnHeader(beast::error_code ec);
  // The error a well-formed header still gets (413, 400), or none.
  bool RejectHeader();
  void ReadBody();
  void OnBody(beast::error_code ec);
  void RunHandler(const std::shared_ptr<HttpExchange>& exchange);
  void WatchForClose();
  void OnReadable(beast::error_code ec);
  // The close watch over TLS. The socket's readability says nothing there (a record may hold no
  // data, or half of it): the watch reads through the TLS stream, into buffer_ (a pipelined
  // request is kept for later; nothing else reads buffer_ while a response is being made).
  void WatchTls() {
    const size_t limit = PipelineLimit();
    if (buffer_.size() > limit) return Close();
    watching_ = true;
    const size_t room = std::min<size_t>(limit + 1 - buffer_.size(), 16 << 10);
    stream_.async_read_some(buffer_.prepare(room),
                            [self = this->shared_from_this()](beast::error_code ec, size_t n) {
                              self->OnTlsWatch(ec, n);
                            });
  }
  void OnTlsWatch(beast::error_code ec, size_t n) {
    watching_ = false;
    buffer_.commit(n);
    if (closed_) return;
    if (ec && ec != net::error::operation_aborted) return Close();  // EOF, reset, a TLS error
    if (std::exchange(resume_, false)) return ResumeTls();          // the response ended meanwhile
    if (ec) return Close();
    WatchTls();
  }
  void ResponseEnded(bool ok);
  // After a TLS response: the next request, or close_notify (the response is complete: an
  // HTTP/1.0 stream ends with the close) and the close.
  void ResumeTls() {
    if (keep_alive_) return ReadHeader();
    AsyncTlsCloseNotify(stream_, shared_->options.write_timeout,
                        [self = this->shared_from_this()] { self->Close(); });
  }
  void WriteError(http::status status, const std::string& message);
  void WriteResponse(int status, const std::string& type, std::string body,
                     const HttpHeaders& headers, std::function<void(bool)> done);
  void WriteHead(const std::string& type, std::shared_ptr<std::string> first,
                 std::function<void(bool)> done);
  void WriteChunk(std::shared_ptr<std::string> data, bool last, std::function<void(bool)> done);
  void WriteLast(std::function<void(bool)> done);
  // The response's last write completed (or failed): the gone callback must not run after it
  // (the handler may free what the callback refers to as soon as it hears of the end), and the
  // exchange's handle is stale from now on.
  void Ending() {
    in_exchange_ = false;
    on_gone_ = nullptr;
  }
  void ClientGone() {
    if (!in_exchange_ || gone_called_) return;
    gone_called_ = true;
    if (on_gone_) std::exchange(on_gone_, nullptr)();
  }
  // Bounds the next write (a client that does not read is cut off: the write fails).
  void ExpireWrite() { Tcp().expires_after(Chrono(shared_->options.write_timeout)); }
  // Bytes a client may send ahead while its response is being made.
  size_t PipelineLimit() const {
    return std::max(shared_->options.max_header_bytes, shared_->options.max_pipelined_bytes);
  }

  const std::shared_ptr<ssl::context> tls_;  // before stream_, which uses it
  Stream stream_;
  std::shared_ptr<Shared> shared_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::string peer_;
  bool keep_alive_ = true, closed_ = false;
  // TLS: the close watch is a read in flight (no other read may start before it completes), and
  // the response ended while it was (its completion goes on with the connection).
  bool watching_ = false, resume_ = false;
  // The exchange in progress (a response being made).
  bool in_exchange_ = false, gone_called_ = false, head_sent_ = false;
  bool head_request_ = false;  // HEAD: the response carries no body
  bool unframed_ = false;      // an HTTP/1.0 stream: raw data, then close
  uint64_t exchange_id_ = 0;
  std::function<void()> on_gone_;
  std::unique_ptr<http::response<http::empty_body>> head_;
  std::unique_ptr<http::response_serializer<http::empty_body>> head_writer_;
};

template <class Stream>
class Exchange final : public HttpExchange {
 public:
  Exchange(std::shared_ptr<Connection<Stream>> conn, uint64_t id,
           http::request<http::string_body> req)
      : conn_(std::move(conn)),
        id_(id),
        method_(req.method_string()),
        target_(req.target()),
        req_(std::move(req)) {}

  const std::string& method() const override { return method_; }
  const std::string& target() const override { return target_; }
  const std::string& body() const override { return req_.body(); }
  std::string header(const std::string& name) const override {
    auto it = req_.find(name);
    return it == req_.end() ? "" : std::string(it->value());
  }
  const std::string& peer() const override { return conn_->peer(); }

  void Respond(int status, const std::string& type, std::string body, HttpHeaders headers,
               std::function<void(bool)> done) override {
    Call(std::move(done), [status, type, body = std::move(body), headers = std::move(headers)](
                              Connection<Stream>& c, uint64_t id, Done d) mutable {
      c.Respond(id, status, type, std::move(body), std::move(headers), std::move(d));
    });
  }
  void Send(const std::string& type, std::string data, std::function<void(bool)> done) override {
    Call(std::move(done),
         [type, data = std::move(data)](Connection<Stream>& c, uint64_t id, Done d) mutable {
           c.Send(id, type, std::move(data), std::move(d));
         });
  }
  void End(std::string data, std::function<void(bool)> done) override {
    Call(std::move(done),
         [data = std::move(data)](Connection<Stream>& c, uint64_t id, Done d) mutable {
           c.End(id, std::move(data), std::move(d));
         });
  }
  void OnClientGone(std::function<void()> fn) override {
    conn_->PostUnlessStopped([c = conn_, id = id_, fn = std::move(fn)]() mutable {
      c->SetGoneCallback(id, std::move(fn));
    });
  }
  void Abort() override {
    conn_->PostUnlessStopped([c = conn_, id = id_] { c->Abort(id); });
  }

 private:
  using Done = std::function<void(bool)>;
  // Runs `op(connection, id, done)` on the connection's strand; done(false) at once once the
  // server stopped.
  template <class Op>
  void Call(Done done, Op op) {
    auto fn = std::make_shared<Done>(std::move(done));
    if (conn_->PostUnlessStopped([c = conn_, id = id_, fn, op = std::move(op)]() mutable {
          op(*c, id, std::move(*fn));
        })) {
      return;
    }
    if (*fn) (*fn)(false);
  }

  const std::shared_ptr<Connection<Stream>> conn_;
  const uint64_t id_;
  const std::string method_, target_;
  http::request<http::string_body> req_;
};

template <class Stream>
void Connection<Stream>::ReadHeader() {
  if (closed_) return;
  parser_.emplace();
  parser_->header_limit(static_cast<uint32_t>(shared_->options.max_header_bytes));
  parser_->body_limit(static_cast<uint64_t>(shared_->options.max_body_bytes));
  Tcp().expires_after(Chrono(shared_->options.header_timeout));
  http::async_read_header(
      stream_, buffer_, *parser_,
      [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnHeader(ec); });
}

template <class Stream>
void Connection<Stream>::OnHeader(beast::error_code ec) {
  if (ClientLeft(ec)) {
    Close();  // the client left, or sent nothing in time (idle or slow-loris)
    return;
  }
  keep_alive_ = false;  // after an error the connection closes
  if (ec == http::error::header_limit) {
    WriteError(http::status::request_header_fields_too_large,
               absl::StrCat("the request's header is larger than ",
                            shared_->options.max_header_bytes, " bytes"));
    return;
  }
  if (ec == http::error::body_limit) {  // the parser checks Content-Length with the header
    WriteError(http::status::payload_too_large,
               absl::StrCat("the request body is larger than the limit of ",
                            shared_->options.max_body_bytes, " bytes"));
    return;
  }
  if (ec) {
    WriteError(http::status::bad_request, absl::StrCat("malformed HTTP request: ", ec.message()));
    return;
  }
  if (RejectHeader()) return;
  keep_alive_ = parser_->get().keep_alive();
  if (beast::iequals(parser_->get()[http::field::expect], "100-continue")) {
    auto cont = std::make_shared<http::response<http::empty_body>>(http::status::continue_, 11);
    http::async_write(stream_, *cont,
                      [self = this->shared_from_this(), cont](beast::error_code wec, size_t) {
                        if (wec) return self->Close();
                        self->ReadBody();
                      });
    return;
  }
  ReadBody();
}

template <class Stream>
bool Connection<Stream>::RejectHeader() {
  const auto& req = parser_->get();
  const auto length = parser_->content_length();
  if (length && *length > static_cast<uint64_t>(shared_->options.max_body_bytes)) {
    WriteError(http::status::payload_too_large,
               absl::StrCat("the request body is ", *length, " bytes, more than the limit of ",
                            shared_->options.max_body_bytes));
    return true;
  }
  // RFC 9112 3.2: an HTTP/1.1 request has exactly one Host header.
  if (req.version() >= 11 && req.count(http::field::host) != 1) {
    WriteError(http::status::bad_request, "an HTTP/1.1 request needs exactly one Host header");
    return true;
  }
  // RFC 9112 6.3: a request whose transfer coding does not end in chunked has no length the
  // server can know (Beast would read it as an empty body and the rest as the next request).
  if (req.find(http::field::transfer_encoding) != req.end() && !parser_->chunked()) {
    WriteError(http::status::bad_request,
               "malformed HTTP request: Transfer-Encoding must end with chunked");
    return true;
  }
  return false;
}

template <class Stream>
void Connection<Stream>::ReadBody() {
  Tcp().expires_after(Chrono(shared_->options.body_timeout));
  http::async_read(
      stream_, buffer_, *parser_,
      [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnBody(ec); });
}

template <class Stream>
void Connection<Stream>::OnBody(beast::error_code ec) {
  if (ClientLeft(ec)) {
    Close();
    return;
  }
  if (ec == http::error::body_limit) {
    keep_alive_ = false;
    WriteError(http::status::payload_too_large,
               absl::StrCat("the request body is larger than the limit of ",
                            shared_->options.max_body_bytes, " bytes"));
    return;
  }
  if (ec) {
    keep_alive_ = false;
    WriteError(http::status::bad_request, absl::StrCat("malformed HTTP request: ", ec.message()));
    return;
  }
  if (shared_->stopping.load()) return Close();
  Tcp().expires_never();
  in_exchange_ = true;
  gone_called_ = false;
  head_sent_ = false;
  head_request_ = parser_->get().method() == http::verb::head;
  unframed_ = parser_->get().version() < 11;
  const uint64_t id = ++exchange_id_;
  auto exchange =
      std::make_shared<Exchange<Stream>>(this->shared_from_this(), id, parser_->release());
  parser_.reset();
  WatchForClose();
  RunHandler(exchange);
}

template <class Stream>
void Connection<Stream>::RunHandler(const std::shared_ptr<HttpExchange>& exchange) {
  // An exception must not unwind through Asio: it would end the thread, and the process.
  std::string what;
  try {
    shared_->handler(exchange);
    return;
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
    what = "an exception that is not a std::exception";
  }
  Log(LogLevel::kError, "http", "the request handler threw",
      {{"error", what}, {"method", exchange->method()}, {"target", exchange->target()}});
  exchange->Respond(500, "application/json",
                    ErrorJson("internal error while handling the request", "server_error"));
}

template <class Stream>
void Connection<Stream>::WatchForClose() {
  if constexpr (kTls) {
    WatchTls();
  } else {
    // While a response is being made, the client sends nothing: readable means EOF, an error, or
    // a pipelined request (kept in buffer_ for later).
    Tcp().socket().async_wait(tcp::socket::wait_read, [self = this->shared_from_this(),
                                                       id = exchange_id_](beast::error_code ec) {
      if (!self->Current(id) || self->closed_) return;
      self->OnReadable(ec);
    });
  }
}

template <class Stream>
void Connection<Stream>::OnReadable(beast::error_code ec) {
  if (ec) return Close();
  beast::error_code rec;
  const size_t n = Tcp().socket().available(rec);
  if (rec || n == 0) return Close();
  // A client that floods a connection whose response it waits for: its bytes would pile up here.
  if (buffer_.size() + n > PipelineLimit()) return Close();
  auto buf = buffer_.prepare(n);
  const size_t got = Tcp().socket().read_some(buf, rec);
  if (rec) return Close();
  buffer_.commit(got);
  WatchForClose();
}

template <class Stream>
void Connection<Stream>::ResponseEnded(bool ok) {
  Ending();
  head_.reset();
  head_writer_.reset();
  // Over TLS, a connection that does not stay open sends close_notify first (ResumeTls).
  if (!ok || closed_ || (!kTls && !keep_alive_)) return Close();
  if constexpr (kTls) {
    if (!watching_) return ResumeTls();
    resume_ = true;  // the watch's completion goes on: no read may start before it is done
  }
  beast::error_code ec;
  Tcp().socket().cancel(ec);  // the close watch
  if constexpr (!kTls) ReadHeader();
}

template <class Stream>
void Connection<Stream>::WriteError(http::status status, const std::string& message) {
  // A response of its own (so that ResponseEnded closes cleanly); no exchange handle matches it.
  in_exchange_ = true;
  head_sent_ = false;
  head_request_ = false;
  ++exchange_id_;
  WriteResponse(static_cast<int>(status), "application/json", ErrorJson(message), {}, nullptr);
}

template <class Stream>
void Connection<Stream>::Respond(uint64_t id, int status, const std::string& type, std::string body,
                                 HttpHeaders headers, std::function<void(bool)> done) {
  if (!Current(id) || closed_ || head_sent_) {
    // A stream already began: it cannot end properly any more.
    if (Current(id) && !closed_) Close();
    if (done) done(false);
    return;
  }
  WriteResponse(status, type, std::move(body), headers, std::move(done));
}

template <class Stream>
void Connection<Stream>::WriteResponse(int status, const std::string& type, std::string body,
                                       const HttpHeaders& headers, std::function<void(bool)> done) {
  auto res =
      std::make_shared<http::response<http::string_body>>(static_cast<http::status>(status), 11);
  res->set(http::field::content_type, type);
  for (auto& [k, v] : headers) res->set(k, v);
  res->keep_alive(keep_alive_);
  res->body() = std::move(body);
  res->prepare_payload();
  // A response to HEAD has the headers a GET would get, and no body (RFC 9110 9.3.2): a body
  // would be read as the start of the next response.
  if (head_request_) res->body().clear();
  head_sent_ = true;
  ExpireWrite();
  http::async_write(
      stream_, *res,
      [self = this->shared_from_this(), res, done = std::move(done)](beast::error_code ec, size_t) {
        self->Tcp().expires_never();
        self->Ending();
        if (done) done(!ec);
        self->ResponseEnded(!ec);
      });
}

template <class Stream>
void Connection<Stream>::Send(uint64_t id, const std::string& type, std::string data,
                              std::function<void(bool)> done) {
  if (!Current(id) || closed_) {
    if (done) done(false);
    return;
  }
  auto chunk = std::make_shared<std::string>(std::move(data));
  if (head_sent_) {
    WriteChunk(std::move(chunk), false, std::move(done));
    return;
  }
  WriteHead(type, std::move(chunk), std::move(done));
}

template <class Stream>
void Connection<Stream>::WriteHead(const std::string& type, std::shared_ptr<std::string> first,
                                   std::function<void(bool)> done) {
  head_sent_ = true;
  // HTTP/1.0 has no chunked coding: the data goes out as it is, and the close ends it.
  if (unframed_) keep_alive_ = false;
  head_ = std::make_unique<http::response<http::empty_body>>(http::status::ok, 11);
  head_->set(http::field::content_type, type);
  head_->set(http::field::cache_control, "no-cache");
  head_->keep_alive(keep_alive_);
  head_->chunked(!unframed_);
  head_writer_ = std::make_unique<http::response_serializer<http::empty_body>>(*head_);
  ExpireWrite();
  http::async_write_header(stream_, *head_writer_,
                           [self = this->shared_from_this(), first, done = std::move(done)](
                               beast::error_code ec, size_t) mutable {
                             self->Tcp().expires_never();
                             if (ec) {
                               if (done) done(false);
                               self->Close();
                               return;
                             }
                             self->WriteChunk(std::move(first), false, std::move(done));
                           });
}

template <class Stream>
void Connection<Stream>::End(uint64_t id, std::string data, std::function<void(bool)> done) {
  if (!Current(id) || closed_ || !head_sent_) {
    const bool close = Current(id) && !closed_;
    if (Current(id)) Ending();
    if (done) done(false);
    if (close) Close();
    return;
  }
  WriteChunk(std::make_shared<std::string>(std::move(data)), true, std::move(done));
}

template <class Stream>
void Connection<Stream>::WriteChunk(std::shared_ptr<std::string> data, bool last,
                                    std::function<void(bool)> done) {
  auto finish = [self = this->shared_from_this(), data, last, done = std::move(done)](
                    beast::error_code ec, size_t) mutable {
    self->Tcp().expires_never();
    if (ec) {
      if (last) self->Ending();
      if (done) done(false);
      self->Close();
      return;
    }
    if (!last) {
      if (done) done(true);
      return;
    }
    self->WriteLast(std::move(done));
  };
  if (data->empty() || head_request_) {
    finish(beast::error_code(), 0);
    return;
  }
  ExpireWrite();
  if (unframed_) {
    net::async_write(stream_, net::buffer(*data), std::move(finish));
  } else {
    net::async_write(stream_, http::make_chunk(net::buffer(*data)), std::move(finish));
  }
}

template <class Stream>
void Connection<Stream>::WriteLast(std::function<void(bool)> done) {
  if (unframed_ || head_request_) {
    Ending();
    if (done) done(true);
    ResponseEnded(true);  // unframed: keep_alive_ is off, the close ends the response
    return;
  }
  auto tail = std::make_shared<http::chunk_last<>>();
  ExpireWrite();
  net::async_write(stream_, *tail,
                   [self = this->shared_from_this(), tail, done = std::move(done)](
                       beast::error_code ec, size_t) {
                     self->Tcp().expires_never();
                     self->Ending();
                     if (done) done(!ec);
                     self->ResponseEnded(!ec);
                   });
}

template <class Stream>
void Connection<Stream>::SetGoneCallback(uint64_t id, std::function<void()> fn) {
  if (!Current(id)) return;  // the response ended: the client did not go away before it
  if (closed_ || gone_called_) {
    gone_called_ = true;
    if (fn) fn();
    return;
  }
  on_gone_ = std::move(fn);
}

// Opens a connection on `socket` (`tls`: its context, for a TlsStream).
template <class Stream>
void OpenConnection(tcp::socket socket, const std::shared_ptr<Shared>& shared, bool reject,
                    std::shared_ptr<ssl::context> tls) {
  auto conn = std::make_shared<Connection<Stream>>(std::move(socket), shared, std::move(tls));
  {
    MutexLock lock(&shared->mu);
    shared->live.emplace(conn.get(), conn);
  }
  conn->Start(reject);
}

}  // namespace

class HttpServer::Impl {
 public:
  Impl(HttpServerOptions options, HttpHandler handler)
      : ioc_(std::max(1, options.threads)),
        acceptor_(net::make_strand(ioc_)),
        accept_timer_(acceptor_.get_executor()),
        shared_(std::make_shared<Shared>()) {
    shared_->options = std::move(options);
    shared_->handler = std::move(handler);
  }

  absl::StatusOr<int> Start();
  void Stop();
  int connections() const { return shared_->connections.load(); }

 private:
  void Accept();
  void OnAccept(beast::error_code ec, tcp::socket socket);
  void CloseAll();

  net::io_context ioc_;
  // Keeps the threads running while Stop waits for the connections to close, when no socket
  // operation may be pending any more (calls on closed connections must still complete).
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_;
  tcp::acceptor acceptor_;  // and accept_timer_: on one strand
  net::steady_timer accept_timer_;
  bool accept_failing_ = false;           // on the acceptor's strand
  std::unique_ptr<HttpTlsContexts> tls_;  // HTTPS only; set by Start
  std::shared_ptr<Shared> shared_;
  std::vector<std::thread> threads_;
  bool stopped_ = false;
};

absl::StatusOr<int> HttpServer::Impl::Start() {
  const HttpServerOptions& o = shared_->options;
  beast::error_code ec;
  const auto address = net::ip::make_address(o.host, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("--host: not an IP address: ", o.host));
  if (!o.tls_cert_file.empty() || !o.tls_key_file.empty() || !o.tls_client_ca_file.empty()) {
    auto tls = HttpTlsContexts::Create(o);
    if (!tls.ok()) return tls.status();
    tls_ = *std::move(tls);
  }
  const tcp::endpoint ep(address, static_cast<unsigned short>(o.port));
  acceptor_.open(ep.protocol(), ec);
  if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(ep, ec);
  if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("--http-port: cannot listen on ", o.host, ":", o.port, ": ", ec.message()));
  }
  const int port = acceptor_.local_endpoint().port();
  Accept();
  work_.emplace(ioc_.get_executor());
  for (int i = 0; i < std::max(1, o.threads); ++i) threads_.emplace_back([this] { ioc_.run(); });
  return port;
}

void HttpServer::Impl::Accept() {
  acceptor_.async_accept(net::make_strand(ioc_), [this](beast::error_code ec, tcp::socket socket) {
    OnAccept(ec, std::move(socket));
  });
}

void HttpServer::Impl::OnAccept(beast::error_code ec, tcp::socket socket) {
  if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
  if (ec) {
    // Out of file descriptors, most likely: the listener stays readable, so accepting again at
    // once would spin a thread. Retry in a moment (connections that close free descriptors).
    if (!accept_failing_) {
      Log(LogLevel::kWarning, "http", "cannot accept connections", {{"error", ec.message()}});
    }
    accept_failing_ = true;
    accept_timer_.expires_after(std::chrono::milliseconds(50));
    accept_timer_.async_wait([this](beast::error_code tec) {
      if (!tec && acceptor_.is_open()) Accept();
    });
    return;
  }
  accept_failing_ = false;
  // Each SSE event is a small write: without TCP_NODELAY, Nagle's algorithm holds it until the
  // client acknowledges the previous one (a delayed ACK: ~40 ms), so tokens arrive in bursts.
  beast::error_code nec;
  socket.set_option(tcp::no_delay(true), nec);
  if (shared_->options.send_buffer_bytes > 0) {
    socket.set_option(net::socket_base::send_buffer_size(shared_->options.send_buffer_bytes), nec);
  }
  const bool reject = shared_->connections.fetch_add(1) >= shared_->options.max_connections;
  if (tls_) {
    OpenConnection<TlsStream>(std::move(socket), shared_, reject, tls_->Current());
  } else {
    OpenConnection<PlainStream>(std::move(socket), shared_, reject, nullptr);
  }
  Accept();
}

void HttpServer::Impl::CloseAll() {
  std::vector<std::shared_ptr<ConnectionBase>> open;
  {
    MutexLock lock(&shared_->mu);
    for (auto& [p, w] : shared_->live) {
      if (auto c = w.lock()) open.push_back(std::move(c));
    }
  }
  for (auto& c : open) c->PostClose();
}

void HttpServer::Impl::Stop() {
  if (stopped_) return;
  stopped_ = true;
  shared_->stopping.store(true);
  net::post(acceptor_.get_executor(), [this] {
    beast::error_code ec;
    acceptor_.close(ec);
    accept_timer_.cancel();
  });
  CloseAll();
  // Let the closes run (their pending operations return with errors), then stop.
  const absl::Time deadline = absl::Now() + absl::Seconds(2);
  while (shared_->connections.load() > 0 && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(5));
  {
    MutexLock lock(&shared_->mu);
    shared_->stopped = true;  // from now on the exchanges complete their calls at once
  }
  work_.reset();
  ioc_.stop();
  for (auto& t : threads_) t.join();
  threads_.clear();
  // What was posted before `stopped` runs now, here: each call's done runs (false: the sockets
  // are closed). A handler dropped unrun would leave its caller waiting for ever.
  CloseAll();
  ioc_.restart();
  ioc_.poll();
}

HttpServer::HttpServer(HttpServerOptions options, HttpHandler handler)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler))) {}
HttpServer::~HttpServer() { Stop(); }
absl::StatusOr<int> HttpServer::Start() { return impl_->Start(); }
void HttpServer::Stop() { impl_->Stop(); }
int HttpServer::connections() const { return impl_->connections(); }

}  // namespace sambay
