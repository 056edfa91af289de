#include "tools/http_stream_client.h"

#include <algorithm>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <functional>
#include <limits>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/mutex.h"
#include "nlohmann/json.hpp"

namespace sambay {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using Stream = beast::tcp_stream;
using Request = http::request<http::string_body>;

// The message of an OpenAI error body ({"error": {"message": ...}}), else the body's start.
std::string ErrorMessage(std::string_view body) {
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object() &&
      j["error"].contains("message") && j["error"]["message"].is_string()) {
    return j["error"]["message"].get<std::string>();
  }
  return std::string(body.substr(0, 200));
}

// What every stream shares: the server's endpoints and the idle keep-alive connections.
// Thread-safety: mu_ guards the idle list.
class Pool {
 public:
  Pool(net::io_context& ioc, tcp::resolver::results_type endpoints)
      : ioc_(ioc), endpoints_(std::move(endpoints)) {}

  // An idle connection, or null when there is none.
  std::unique_ptr<Stream> TakeIdle() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    if (idle_.empty()) return nullptr;
    std::unique_ptr<Stream> s = std::move(idle_.back());
    idle_.pop_back();
    return s;
  }
  void PutIdle(std::unique_ptr<Stream> s) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    idle_.push_back(std::move(s));
  }
  // A new, unconnected stream on its own strand.
  std::unique_ptr<Stream> NewStream() { return std::make_unique<Stream>(net::make_strand(ioc_)); }
  const tcp::resolver::results_type& endpoints() const { return endpoints_; }

 private:
  net::io_context& ioc_;
  const tcp::resolver::results_type endpoints_;
  Mutex mu_;
  std::vector<std::unique_ptr<Stream>> idle_ ABSL_GUARDED_BY(mu_);
};

// One streamed request: connect (or reuse), write, read the head, then the body's chunks into
// an SseReader; reports to the observer and gives a kept-alive connection back to the pool.
// Everything after Begin runs on the stream's strand, one operation at a time.
class Call : public std::enable_shared_from_this<Call> {
 public:
  Call(Pool& pool, Request req, std::optional<Clock::time_point> deadline,
       SseStreamObserver* observer)
      : pool_(pool), req_(std::move(req)), deadline_(deadline), observer_(observer) {}

  void Begin() {
    stream_ = pool_.TakeIdle();
    if (stream_ == nullptr) return Connect();
    reused_ = true;
    net::post(stream_->get_executor(), [self = shared_from_this()] { self->Write(); });
  }

 private:
  void Connect() {
    stream_ = pool_.NewStream();
    Arm();
    stream_->async_connect(pool_.endpoints(),
                           [self = shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
                             if (ec) return self->Fail(ec, "connect");
                             beast::error_code ignored;
                             self->stream_->socket().set_option(tcp::no_delay(true), ignored);
                             self->Write();
                           });
  }
  void Write() {
    parser_.emplace();
    // No limit (an SSE stream grows with the generation). Not boost::none: Boost 1.74 compares
    // a Content-Length with the empty optional and refuses every error body.
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    buffer_.clear();
    Arm();
    http::async_write(*stream_, req_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->Retry(ec, "write");
      self->ReadHeader();
    });
  }
  void ReadHeader() {
    Arm();
    http::async_read_header(*stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              if (ec) return self->Retry(ec, "read");
                              self->OnHeader();
                            });
  }
  void OnHeader() {
    end_.http_status = parser_->get().result_int();
    if (end_.http_status != 200) return ReadErrorBody();
    on_chunk_ = [this](std::uint64_t, beast::string_view body, beast::error_code&) {
      reader_.Feed(std::string_view(body.data(), body.size()), observer_);
      return body.size();
    };
    parser_->on_chunk_body(on_chunk_);
    ReadBody();
  }
  void ReadBody() {
    if (parser_->is_done()) return Finish();
    Arm();
    http::async_read_some(*stream_, buffer_, *parser_,
                          [self = shared_from_this()](beast::error_code ec, size_t) {
                            if (ec) return self->Fail(ec, "read");
                            self->ReadBody();
                          });
  }
  void ReadErrorBody() {
    Arm();
    http::async_read(*stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->end_.error = absl::StrCat("HTTP ", self->end_.http_status, ": ",
                                                       ErrorMessage(self->parser_->get().body()));
                       self->end_.timed_out = ec == beast::error::timeout;
                       self->End(!ec && self->parser_->keep_alive());
                     });
  }
  // The whole answer arrived (a body without chunked encoding is parsed here).
  void Finish() {
    if (!parser_->get().body().empty()) reader_.Feed(parser_->get().body(), observer_);
    if (!reader_.error().empty()) {
      end_.error = reader_.error();
    } else if (!reader_.done()) {
      end_.error = "the stream ended without \"data: [DONE]\"";
    }
    End(parser_->keep_alive());
  }
  // A reused connection that fails before any answer was closed by the server meanwhile:
  // once, try again on a new one.
  void Retry(beast::error_code ec, const char* what) {
    if (reused_ && end_.http_status == 0 && ec != beast::error::timeout) {
      reused_ = false;
      return Connect();
    }
    Fail(ec, what);
  }
  void Fail(beast::error_code ec, const char* what) {
    end_.timed_out = ec == beast::error::timeout;
    end_.error = absl::StrCat(what, ": ", ec.message());
    End(false);
  }
  void End(bool reuse) {
    end_.text_events = reader_.text_events();
    end_.completion_tokens = reader_.completion_tokens();
    if (reuse) {
      stream_->expires_never();
      pool_.PutIdle(std::move(stream_));
    } else {
      stream_->close();
    }
    std::exchange(observer_, nullptr)->OnEnd(end_);
  }
  // The deadline applies to every operation of the stream.
  void Arm() {
    if (deadline_) {
      stream_->expires_at(*deadline_);
    } else {
      stream_->expires_never();
    }
  }

  Pool& pool_;
  const Request req_;
  const std::optional<Clock::time_point> deadline_;
  SseStreamObserver* observer_;
  std::unique_ptr<Stream> stream_;
  bool reused_ = false;
  beast::flat_buffer buffer_;
  std::optional<http::response_parser<http::string_body>> parser_;
  std::function<size_t(std::uint64_t, beast::string_view, beast::error_code&)> on_chunk_;
  SseReader reader_;
  SseStreamEnd end_;
};

}  // namespace

// ---- SseReader -------------------------------------------------------------------------------

void SseReader::Feed(std::string_view bytes, SseStreamObserver* observer) {
  if (pending_.empty()) {
    const size_t used = Events(bytes, observer);
    pending_.assign(bytes.substr(used));
    return;
  }
  pending_.append(bytes);
  const size_t used = Events(pending_, observer);
  pending_.erase(0, used);
}

size_t SseReader::Events(std::string_view bytes, SseStreamObserver* observer) {
  size_t start = 0;
  for (size_t end; (end = bytes.find("\n\n", start)) != std::string_view::npos; start = end + 2) {
    std::string_view event = bytes.substr(start, end - start);
    // One "data:" line per payload (the router writes one); other fields are ignored.
    while (!event.empty()) {
      const size_t nl = event.find('\n');
      std::string_view line = event.substr(0, nl);
      event = nl == std::string_view::npos ? std::string_view() : event.substr(nl + 1);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.substr(0, 5) != "data:") continue;
      line.remove_prefix(5);
      if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
      Data(line, observer);
    }
  }
  return start;
}

void SseReader::Data(std::string_view data, SseStreamObserver* observer) {
  if (data == "[DONE]") {
    done_ = true;
    return;
  }
  // The common case, a text event, without parsing: the first "text":" is choices[0]'s key
  // (the values before it are JSON strings, whose quotes are escaped).
  constexpr std::string_view kText = "\"text\":\"";
  if (const size_t at = data.find(kText); at != std::string_view::npos) {
    const int64_t characters = Characters(data, at + kText.size());
    if (characters < 0 && error_.empty()) {
      error_ = absl::StrCat("an event with unterminated text: ", std::string(data.substr(0, 100)));
    }
    if (characters > 0) {
      ++text_events_;
      observer->OnTextEvent(characters);
    }
    return;
  }
  // The usage chunk, an error event, or something unexpected.
  const nlohmann::json j = nlohmann::json::parse(data, nullptr, false);
  if (!j.is_object()) {
    if (error_.empty())
      error_ = absl::StrCat("an event that is not JSON: ", std::string(data.substr(0, 100)));
    return;
  }
  if (j.contains("error")) {
    error_ = ErrorMessage(data);
    return;
  }
  const auto usage = j.find("usage");
  if (usage != j.end() && usage->is_object()) {
    completion_tokens_ = usage->value("completion_tokens", int64_t{-1});
  }
}

int64_t SseReader::Characters(std::string_view data, size_t at) {
  int64_t n = 0;
  for (size_t i = at; i < data.size(); ++n) {
    const char c = data[i];
    if (c == '"') return n;
    if (c != '\\') {
      // One code point per UTF-8 lead byte.
      i += 1;
      while (i < data.size() && (static_cast<unsigned char>(data[i]) & 0xC0) == 0x80) ++i;
    } else if (i + 1 < data.size() && data[i + 1] == 'u') {
      // \uXXXX; a high surrogate and its \uXXXX low surrogate are one code point.
      const bool high = i + 3 < data.size() && (data[i + 2] == 'd' || data[i + 2] == 'D') &&
                        std::string_view("89abAB").find(data[i + 3]) != std::string_view::npos;
      i += high ? 12 : 6;
    } else {
      i += 2;
    }
  }
  return -1;
}

// ---- HttpStreamClient ------------------------------------------------------------------------

class HttpStreamClient::Impl {
 public:
  Impl(tcp::resolver::results_type endpoints, std::string host, int threads,
       const std::string& api_key)
      : ioc_(threads),
        work_(net::make_work_guard(ioc_)),
        pool_(ioc_, std::move(endpoints)),
        host_(std::move(host)),
        authorization_(api_key.empty() ? "" : "Bearer " + api_key) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { ioc_.run(); });
  }
  ~Impl() {
    work_.reset();
    ioc_.stop();
    for (std::thread& t : threads_) t.join();
  }

  absl::Status WaitConnectable(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    beast::error_code ec;
    do {
      tcp::socket socket(ioc_);
      net::connect(socket, pool_.endpoints(), ec);
      if (!ec) return absl::OkStatus();
      absl::SleepFor(absl::Milliseconds(50));
    } while (absl::Now() < deadline);
    return absl::UnavailableError(absl::StrCat("cannot connect to ", host_, " within ",
                                               absl::FormatDuration(timeout), ": ", ec.message()));
  }

  void Start(const std::string& target, std::string body, double timeout_seconds,
             SseStreamObserver* observer) {
    Request req(http::verb::post, target, 11);
    req.set(http::field::host, host_);
    req.set(http::field::content_type, "application/json");
    req.set(http::field::accept, "text/event-stream");
    if (!authorization_.empty()) req.set(http::field::authorization, authorization_);
    req.keep_alive(true);
    req.body() = std::move(body);
    req.prepare_payload();
    std::optional<Clock::time_point> deadline;
    if (timeout_seconds > 0) {
      deadline =
          Clock::now() + std::chrono::microseconds(static_cast<int64_t>(timeout_seconds * 1e6));
    }
    std::make_shared<Call>(pool_, std::move(req), deadline, observer)->Begin();
  }

 private:
  net::io_context ioc_;
  net::executor_work_guard<net::io_context::executor_type> work_;
  Pool pool_;  // its idle streams go before the io_context
  const std::string host_;
  const std::string authorization_;  // "Bearer KEY", or "" without an API key
  std::vector<std::thread> threads_;
};

absl::StatusOr<std::unique_ptr<HttpStreamClient>> HttpStreamClient::Create(
    const std::string& host, int port, int threads, const std::string& api_key) {
  net::io_context resolve_ctx;
  tcp::resolver resolver(resolve_ctx);
  beast::error_code ec;
  tcp::resolver::results_type endpoints = resolver.resolve(host, std::to_string(port), ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve ", host, ":", port, ": ", ec.message()));
  }
  auto impl = std::make_unique<Impl>(std::move(endpoints), absl::StrCat(host, ":", port),
                                     std::max(1, threads), api_key);
  return std::unique_ptr<HttpStreamClient>(new HttpStreamClient(std::move(impl)));
}

HttpStreamClient::HttpStreamClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpStreamClient::~HttpStreamClient() = default;

absl::Status HttpStreamClient::WaitConnectable(absl::Duration timeout) {
  return impl_->WaitConnectable(timeout);
}

void HttpStreamClient::Start(const std::string& target, std::string body, double timeout_seconds,
                             SseStreamObserver* observer) {
  impl_->Start(target, std::move(body), timeout_seconds, observer);
}

}  // namespace sambay
