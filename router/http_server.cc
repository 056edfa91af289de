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

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/mutex.h"

namespace sambay {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

// An OpenAI-shaped error body for the errors the server answers itself.
std::string ErrorJson(const std::string& message, const char* type = "invalid_request_error") {
  nlohmann::json j = {
      {"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}}}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::chrono::steady_clock::duration Chrono(absl::Duration d) {
  return absl::ToChronoNanoseconds(d);
}

class Connection;

// What every connection shares with the server.
struct Shared {
  HttpServerOptions options;
  HttpHandler handler;
  std::atomic<int> connections{0};
  std::atomic<bool> stopping{false};  // Stop began: no new request reaches the handler
  Mutex mu;
  // Set (under mu) once the threads stop: nothing is posted to the strands after it.
  bool stopped ABSL_GUARDED_BY(mu) = false;
  std::map<Connection*, std::weak_ptr<Connection>> live ABSL_GUARDED_BY(mu);
};

// One client connection: reads requests one after another and runs one exchange at a time.
// Everything below runs on the connection's strand.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(tcp::socket socket, std::shared_ptr<Shared> shared)
      : stream_(std::move(socket)), shared_(std::move(shared)) {
    beast::error_code ec;
    const tcp::endpoint ep = stream_.socket().remote_endpoint(ec);
    if (!ec) {
      peer_ = ep.address().is_v6() ? absl::StrCat("ipv6:[", ep.address().to_string(), "]")
                                   : absl::StrCat("ipv4:", ep.address().to_string());
    }
  }
  ~Connection() {
    {
      MutexLock lock(&shared_->mu);
      shared_->live.erase(this);
    }
    shared_->connections.fetch_sub(1);
  }

  void Start(bool reject) {
    Post([self = shared_from_this(), reject] {
      if (reject) {
        self->keep_alive_ = false;
        self->WriteError(http::status::service_unavailable,
                         "the router has too many open HTTP connections: retry later");
        return;
      }
      self->ReadHeader();
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
  void Close() {
    if (closed_) return;
    closed_ = true;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
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
  bool Current(uint64_t id) const { return in_exchange_ && id == exchange_id_; }
  void ReadHeader();
  void OnHeader(beast::error_code ec);
  // The error a well-formed header still gets (413, 400), or none.
  bool RejectHeader();
  void ReadBody();
  void OnBody(beast::error_code ec);
  void RunHandler(const std::shared_ptr<HttpExchange>& exchange);
  void WatchForClose();
  void OnReadable(beast::error_code ec);
  void ResponseEnded(bool ok);
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
  void ExpireWrite() { stream_.expires_after(Chrono(shared_->options.write_timeout)); }

  beast::tcp_stream stream_;
  std::shared_ptr<Shared> shared_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::string peer_;
  bool keep_alive_ = true, closed_ = false;
  // The exchange in progress (a response being made).
  bool in_exchange_ = false, gone_called_ = false, head_sent_ = false;
  bool head_request_ = false;  // HEAD: the response carries no body
  bool unframed_ = false;      // an HTTP/1.0 stream: raw data, then close
  uint64_t exchange_id_ = 0;
  std::function<void()> on_gone_;
  std::unique_ptr<http::response<http::empty_body>> head_;
  std::unique_ptr<http::response_serializer<http::empty_body>> head_writer_;
};

class Exchange final : public HttpExchange {
 public:
  Exchange(std::shared_ptr<Connection> conn, uint64_t id, http::request<http::string_body> req)
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
    auto fn = std::make_shared<std::function<void(bool)>>(std::move(done));
    if (conn_->PostUnlessStopped([c = conn_, id = id_, status, type, body = std::move(body),
                                  headers = std::move(headers), fn]() mutable {
          c->Respond(id, status, type, std::move(body), std::move(headers), std::move(*fn));
        })) {
      return;
    }
    if (*fn) (*fn)(false);
  }
  void Send(const std::string& type, std::string data, std::function<void(bool)> done) override {
    auto fn = std::make_shared<std::function<void(bool)>>(std::move(done));
    if (conn_->PostUnlessStopped([c = conn_, id = id_, type, data = std::move(data), fn]() mutable {
          c->Send(id, type, std::move(data), std::move(*fn));
        })) {
      return;
    }
    if (*fn) (*fn)(false);
  }
  void End(std::string data, std::function<void(bool)> done) override {
    auto fn = std::make_shared<std::function<void(bool)>>(std::move(done));
    if (conn_->PostUnlessStopped([c = conn_, id = id_, data = std::move(data), fn]() mutable {
          c->End(id, std::move(data), std::move(*fn));
        })) {
      return;
    }
    if (*fn) (*fn)(false);
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
  const std::shared_ptr<Connection> conn_;
  const uint64_t id_;
  const std::string method_, target_;
  http::request<http::string_body> req_;
};

void Connection::ReadHeader() {
  if (closed_) return;
  parser_.emplace();
  parser_->header_limit(static_cast<uint32_t>(shared_->options.max_header_bytes));
  parser_->body_limit(static_cast<uint64_t>(shared_->options.max_body_bytes));
  stream_.expires_after(Chrono(shared_->options.header_timeout));
  http::async_read_header(
      stream_, buffer_, *parser_,
      [self = shared_from_this()](beast::error_code ec, size_t) { self->OnHeader(ec); });
}

void Connection::OnHeader(beast::error_code ec) {
  if (ec == http::error::end_of_stream || ec == net::error::eof || ec == beast::error::timeout ||
      ec == net::error::operation_aborted || ec == net::error::connection_reset) {
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
                      [self = shared_from_this(), cont](beast::error_code wec, size_t) {
                        if (wec) return self->Close();
                        self->ReadBody();
                      });
    return;
  }
  ReadBody();
}

bool Connection::RejectHeader() {
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

void Connection::ReadBody() {
  stream_.expires_after(Chrono(shared_->options.body_timeout));
  http::async_read(stream_, buffer_, *parser_,
                   [self = shared_from_this()](beast::error_code ec, size_t) { self->OnBody(ec); });
}

void Connection::OnBody(beast::error_code ec) {
  if (ec == beast::error::timeout || ec == net::error::eof || ec == http::error::end_of_stream ||
      ec == net::error::operation_aborted || ec == net::error::connection_reset) {
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
  stream_.expires_never();
  in_exchange_ = true;
  gone_called_ = false;
  head_sent_ = false;
  head_request_ = parser_->get().method() == http::verb::head;
  unframed_ = parser_->get().version() < 11;
  const uint64_t id = ++exchange_id_;
  auto exchange = std::make_shared<Exchange>(shared_from_this(), id, parser_->release());
  parser_.reset();
  WatchForClose();
  RunHandler(exchange);
}

void Connection::RunHandler(const std::shared_ptr<HttpExchange>& exchange) {
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

void Connection::WatchForClose() {
  // While a response is being made, the client sends nothing: readable means EOF, an error, or a
  // pipelined request (kept in buffer_ for later).
  stream_.socket().async_wait(tcp::socket::wait_read,
                              [self = shared_from_this(), id = exchange_id_](beast::error_code ec) {
                                if (!self->Current(id) || self->closed_) return;
                                self->OnReadable(ec);
                              });
}

void Connection::OnReadable(beast::error_code ec) {
  if (ec) return Close();
  beast::error_code rec;
  const size_t n = stream_.socket().available(rec);
  if (rec || n == 0) return Close();
  const size_t limit =
      std::max(shared_->options.max_header_bytes, shared_->options.max_pipelined_bytes);
  // A client that floods a connection whose response it waits for: its bytes would pile up here.
  if (buffer_.size() + n > limit) return Close();
  auto buf = buffer_.prepare(n);
  const size_t got = stream_.socket().read_some(buf, rec);
  if (rec) return Close();
  buffer_.commit(got);
  WatchForClose();
}

void Connection::ResponseEnded(bool ok) {
  Ending();
  head_.reset();
  head_writer_.reset();
  if (!ok || !keep_alive_ || closed_) {
    Close();
    return;
  }
  beast::error_code ec;
  stream_.socket().cancel(ec);  // the close watch
  ReadHeader();
}

void Connection::WriteError(http::status status, const std::string& message) {
  // A response of its own (so that ResponseEnded closes cleanly); no exchange handle matches it.
  in_exchange_ = true;
  head_sent_ = false;
  head_request_ = false;
  ++exchange_id_;
  WriteResponse(static_cast<int>(status), "application/json", ErrorJson(message), {}, nullptr);
}

void Connection::Respond(uint64_t id, int status, const std::string& type, std::string body,
                         HttpHeaders headers, std::function<void(bool)> done) {
  if (!Current(id) || closed_ || head_sent_) {
    // A stream already began: it cannot end properly any more.
    if (Current(id) && !closed_) Close();
    if (done) done(false);
    return;
  }
  WriteResponse(status, type, std::move(body), headers, std::move(done));
}

void Connection::WriteResponse(int status, const std::string& type, std::string body,
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
      [self = shared_from_this(), res, done = std::move(done)](beast::error_code ec, size_t) {
        self->stream_.expires_never();
        self->Ending();
        if (done) done(!ec);
        self->ResponseEnded(!ec);
      });
}

void Connection::Send(uint64_t id, const std::string& type, std::string data,
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

void Connection::WriteHead(const std::string& type, std::shared_ptr<std::string> first,
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
                           [self = shared_from_this(), first, done = std::move(done)](
                               beast::error_code ec, size_t) mutable {
                             self->stream_.expires_never();
                             if (ec) {
                               if (done) done(false);
                               self->Close();
                               return;
                             }
                             self->WriteChunk(std::move(first), false, std::move(done));
                           });
}

void Connection::End(uint64_t id, std::string data, std::function<void(bool)> done) {
  if (!Current(id) || closed_ || !head_sent_) {
    const bool close = Current(id) && !closed_;
    if (Current(id)) Ending();
    if (done) done(false);
    if (close) Close();
    return;
  }
  WriteChunk(std::make_shared<std::string>(std::move(data)), true, std::move(done));
}

void Connection::WriteChunk(std::shared_ptr<std::string> data, bool last,
                            std::function<void(bool)> done) {
  auto finish = [self = shared_from_this(), data, last, done = std::move(done)](
                    beast::error_code ec, size_t) mutable {
    self->stream_.expires_never();
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

void Connection::WriteLast(std::function<void(bool)> done) {
  if (unframed_ || head_request_) {
    Ending();
    if (done) done(true);
    ResponseEnded(true);  // unframed: keep_alive_ is off, the close ends the response
    return;
  }
  auto tail = std::make_shared<http::chunk_last<>>();
  ExpireWrite();
  net::async_write(
      stream_, *tail,
      [self = shared_from_this(), tail, done = std::move(done)](beast::error_code ec, size_t) {
        self->stream_.expires_never();
        self->Ending();
        if (done) done(!ec);
        self->ResponseEnded(!ec);
      });
}

void Connection::SetGoneCallback(uint64_t id, std::function<void()> fn) {
  if (!Current(id)) return;  // the response ended: the client did not go away before it
  if (closed_ || gone_called_) {
    gone_called_ = true;
    if (fn) fn();
    return;
  }
  on_gone_ = std::move(fn);
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
  bool accept_failing_ = false;  // on the acceptor's strand
  std::shared_ptr<Shared> shared_;
  std::vector<std::thread> threads_;
  bool stopped_ = false;
};

absl::StatusOr<int> HttpServer::Impl::Start() {
  const HttpServerOptions& o = shared_->options;
  beast::error_code ec;
  const auto address = net::ip::make_address(o.host, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("--host: not an IP address: ", o.host));
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
  const bool reject = shared_->connections.fetch_add(1) >= shared_->options.max_connections;
  auto conn = std::make_shared<Connection>(std::move(socket), shared_);
  {
    MutexLock lock(&shared_->mu);
    shared_->live.emplace(conn.get(), conn);
  }
  conn->Start(reject);
  Accept();
}

void HttpServer::Impl::CloseAll() {
  std::vector<std::shared_ptr<Connection>> open;
  {
    MutexLock lock(&shared_->mu);
    for (auto& [p, w] : shared_->live) {
      if (auto c = w.lock()) open.push_back(std::move(c));
    }
  }
  for (auto& c : open) c->Post([c] { c->Close(); });
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
