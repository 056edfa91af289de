#include "router/http_server.h"

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
std::string ErrorJson(const std::string& message) {
  nlohmann::json j = {{"error",
                       {{"message", message},
                        {"type", "invalid_request_error"},
                        {"param", nullptr},
                        {"code", nullptr}}}};
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
  std::atomic<bool> stopped{false};
  std::atomic<int> connections{0};
  Mutex mu;
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
  ~Connection() { shared_->connections.fetch_sub(1); }

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
  void Close() {
    if (closed_) return;
    closed_ = true;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
    ClientGone();
  }
  const std::string& peer() const { return peer_; }
  bool closed() const { return closed_; }

  // The exchange's operations (on the strand).
  void Respond(int status, const std::string& type, std::string body, HttpHeaders headers,
               std::function<void(bool)> done);
  void Send(const std::string& type, std::string data, std::function<void(bool)> done);
  void End(std::string data, std::function<void(bool)> done);
  void SetGoneCallback(std::function<void()> fn) {
    if (closed_ || gone_called_) {
      gone_called_ = true;
      if (fn) fn();
      return;
    }
    on_gone_ = std::move(fn);
  }

 private:
  void ReadHeader();
  void OnHeader(beast::error_code ec);
  void ReadBody();
  void OnBody(beast::error_code ec);
  void WatchForClose();
  void ResponseEnded(bool ok);
  void WriteError(http::status status, const std::string& message);
  void WriteChunk(std::shared_ptr<std::string> data, bool last, std::function<void(bool)> done);
  // The response's last write completed (or failed): the gone callback must not run after it
  // (the handler may free what the callback refers to as soon as it hears of the end).
  void Ending() {
    gone_called_ = true;
    on_gone_ = nullptr;
  }
  void ClientGone() {
    if (!in_exchange_ || gone_called_) return;
    gone_called_ = true;
    if (on_gone_) std::exchange(on_gone_, nullptr)();
  }

  beast::tcp_stream stream_;
  std::shared_ptr<Shared> shared_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::string peer_;
  bool keep_alive_ = true, closed_ = false;
  // The exchange in progress.
  bool in_exchange_ = false, gone_called_ = false, head_sent_ = false;
  uint64_t exchange_id_ = 0;
  std::function<void()> on_gone_;
  std::unique_ptr<http::response<http::empty_body>> head_;
  std::unique_ptr<http::response_serializer<http::empty_body>> head_writer_;
};

class Exchange final : public HttpExchange {
 public:
  Exchange(std::shared_ptr<Connection> conn, http::request<http::string_body> req,
           std::shared_ptr<Shared> shared)
      : conn_(std::move(conn)),
        shared_(std::move(shared)),
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
    if (Stopped(done)) return;
    conn_->Post([c = conn_, status, type, body = std::move(body), headers = std::move(headers),
                 done = std::move(done)]() mutable {
      c->Respond(status, type, std::move(body), std::move(headers), std::move(done));
    });
  }
  void Send(const std::string& type, std::string data, std::function<void(bool)> done) override {
    if (Stopped(done)) return;
    conn_->Post([c = conn_, type, data = std::move(data), done = std::move(done)]() mutable {
      c->Send(type, std::move(data), std::move(done));
    });
  }
  void End(std::string data, std::function<void(bool)> done) override {
    if (Stopped(done)) return;
    conn_->Post([c = conn_, data = std::move(data), done = std::move(done)]() mutable {
      c->End(std::move(data), std::move(done));
    });
  }
  void OnClientGone(std::function<void()> fn) override {
    conn_->Post([c = conn_, fn = std::move(fn)]() mutable { c->SetGoneCallback(std::move(fn)); });
  }
  void Abort() override {
    conn_->Post([c = conn_] { c->Close(); });
  }

 private:
  // After Stop nothing runs the strand any more: complete at once.
  bool Stopped(const std::function<void(bool)>& done) {
    if (!shared_->stopped.load()) return false;
    if (done) done(false);
    return true;
  }

  std::shared_ptr<Connection> conn_;
  std::shared_ptr<Shared> shared_;
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
  if (ec) {
    WriteError(http::status::bad_request, absl::StrCat("malformed HTTP request: ", ec.message()));
    return;
  }
  const auto& req = parser_->get();
  const auto length = parser_->content_length();
  if (length && *length > static_cast<uint64_t>(shared_->options.max_body_bytes)) {
    WriteError(http::status::payload_too_large,
               absl::StrCat("the request body is ", *length, " bytes, more than the limit of ",
                            shared_->options.max_body_bytes));
    return;
  }
  keep_alive_ = req.keep_alive();
  if (beast::iequals(req[http::field::expect], "100-continue")) {
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
  stream_.expires_never();
  in_exchange_ = true;
  gone_called_ = false;
  head_sent_ = false;
  ++exchange_id_;
  auto exchange = std::make_shared<Exchange>(shared_from_this(), parser_->release(), shared_);
  parser_.reset();
  WatchForClose();
  shared_->handler(std::move(exchange));
}

void Connection::WatchForClose() {
  // While a response is being made, the client sends nothing: readable means EOF, an error, or a
  // pipelined request (kept in buffer_ for later).
  stream_.socket().async_wait(tcp::socket::wait_read, [self = shared_from_this(),
                                                       id = exchange_id_](beast::error_code ec) {
    if (!self->in_exchange_ || id != self->exchange_id_ || self->closed_) return;
    if (ec) return self->Close();
    beast::error_code rec;
    const size_t n = self->stream_.socket().available(rec);
    if (rec || n == 0) return self->Close();
    if (self->buffer_.size() + n > self->shared_->options.max_header_bytes +
                                       static_cast<size_t>(self->shared_->options.max_body_bytes)) {
      return self->Close();  // a client that floods a connection it does not read
    }
    auto buf = self->buffer_.prepare(n);
    const size_t got = self->stream_.socket().read_some(buf, rec);
    if (rec) return self->Close();
    self->buffer_.commit(got);
    self->WatchForClose();
  });
}

void Connection::ResponseEnded(bool ok) {
  in_exchange_ = false;
  on_gone_ = nullptr;
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
  in_exchange_ = true;  // so that ResponseEnded closes cleanly
  Respond(static_cast<int>(status), "application/json", ErrorJson(message), {}, nullptr);
}

void Connection::Respond(int status, const std::string& type, std::string body, HttpHeaders headers,
                         std::function<void(bool)> done) {
  if (closed_ || head_sent_) {
    Ending();
    if (done) done(false);
    return;
  }
  auto res =
      std::make_shared<http::response<http::string_body>>(static_cast<http::status>(status), 11);
  res->set(http::field::content_type, type);
  for (auto& [k, v] : headers) res->set(k, v);
  res->keep_alive(keep_alive_);
  res->body() = std::move(body);
  res->prepare_payload();
  head_sent_ = true;
  stream_.expires_after(Chrono(shared_->options.body_timeout));
  http::async_write(
      stream_, *res,
      [self = shared_from_this(), res, done = std::move(done)](beast::error_code ec, size_t) {
        self->stream_.expires_never();
        self->Ending();
        if (done) done(!ec);
        self->ResponseEnded(!ec);
      });
}

void Connection::Send(const std::string& type, std::string data, std::function<void(bool)> done) {
  if (closed_) {
    if (done) done(false);
    return;
  }
  auto chunk = std::make_shared<std::string>(std::move(data));
  if (head_sent_) {
    WriteChunk(std::move(chunk), false, std::move(done));
    return;
  }
  head_sent_ = true;
  head_ = std::make_unique<http::response<http::empty_body>>(http::status::ok, 11);
  head_->set(http::field::content_type, type);
  head_->set(http::field::cache_control, "no-cache");
  head_->keep_alive(keep_alive_);
  head_->chunked(true);
  head_writer_ = std::make_unique<http::response_serializer<http::empty_body>>(*head_);
  http::async_write_header(stream_, *head_writer_,
                           [self = shared_from_this(), chunk, done = std::move(done)](
                               beast::error_code ec, size_t) mutable {
                             if (ec) {
                               if (done) done(false);
                               self->Close();
                               return;
                             }
                             self->WriteChunk(std::move(chunk), false, std::move(done));
                           });
}

void Connection::End(std::string data, std::function<void(bool)> done) {
  if (closed_ || !head_sent_) {
    Ending();
    if (done) done(false);
    if (!closed_) Close();
    return;
  }
  WriteChunk(std::make_shared<std::string>(std::move(data)), true, std::move(done));
}

void Connection::WriteChunk(std::shared_ptr<std::string> data, bool last,
                            std::function<void(bool)> done) {
  auto finish = [self = shared_from_this(), data, last, done = std::move(done)](
                    beast::error_code ec, size_t) mutable {
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
    auto tail = std::make_shared<http::chunk_last<>>();
    net::async_write(self->stream_, *tail,
                     [self, tail, done = std::move(done)](beast::error_code lec, size_t) {
                       self->Ending();
                       if (done) done(!lec);
                       self->ResponseEnded(!lec);
                     });
  };
  if (data->empty()) {
    finish(beast::error_code(), 0);
    return;
  }
  net::async_write(stream_, http::make_chunk(net::buffer(*data)), std::move(finish));
}

}  // namespace

class HttpServer::Impl {
 public:
  Impl(HttpServerOptions options, HttpHandler handler)
      : ioc_(std::max(1, options.threads)), acceptor_(ioc_), shared_(std::make_shared<Shared>()) {
    shared_->options = std::move(options);
    shared_->handler = std::move(handler);
  }

  absl::StatusOr<int> Start();
  void Stop();
  int connections() const { return shared_->connections.load(); }

 private:
  void Accept();

  net::io_context ioc_;
  tcp::acceptor acceptor_;
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
  for (int i = 0; i < std::max(1, o.threads); ++i) threads_.emplace_back([this] { ioc_.run(); });
  return port;
}

void HttpServer::Impl::Accept() {
  acceptor_.async_accept(net::make_strand(ioc_), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
    if (!ec) {
      const bool reject = shared_->connections.fetch_add(1) >= shared_->options.max_connections;
      auto conn = std::make_shared<Connection>(std::move(socket), shared_);
      {
        MutexLock lock(&shared_->mu);
        for (auto it = shared_->live.begin(); it != shared_->live.end();) {
          it = it->second.expired() ? shared_->live.erase(it) : std::next(it);
        }
        shared_->live.emplace(conn.get(), conn);
      }
      conn->Start(reject);
    }
    Accept();
  });
}

void HttpServer::Impl::Stop() {
  if (stopped_) return;
  stopped_ = true;
  net::post(acceptor_.get_executor(), [this] {
    beast::error_code ec;
    acceptor_.close(ec);
  });
  std::vector<std::shared_ptr<Connection>> open;
  {
    MutexLock lock(&shared_->mu);
    for (auto& [p, w] : shared_->live) {
      if (auto c = w.lock()) open.push_back(std::move(c));
    }
    shared_->live.clear();
  }
  for (auto& c : open) c->Post([c] { c->Close(); });
  open.clear();
  // Let the closes run (their pending operations return with errors), then stop.
  const absl::Time deadline = absl::Now() + absl::Seconds(2);
  while (shared_->connections.load() > 0 && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(5));
  shared_->stopped.store(true);
  ioc_.stop();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

HttpServer::HttpServer(HttpServerOptions options, HttpHandler handler)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler))) {}
HttpServer::~HttpServer() { Stop(); }
absl::StatusOr<int> HttpServer::Start() { return impl_->Start(); }
void HttpServer::Stop() { impl_->Stop(); }
int HttpServer::connections() const { return impl_->connections(); }

}  // namespace sambay
