#include "common/metrics_http.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sambay {

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
  int wake[2] = {-1, -1};        // Stop() writes a byte to wake[1]
  event* wake_event = nullptr;   // reads wake[0]: breaks the loop
  event* sweep_event = nullptr;  // every kSweep: Sweep()
  bool paused = false;           // the listener is disabled (max_connections reached)
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
bufferevent* OnNewConnection(event_base* base, void* arg) {
  auto* l = static_cast<MetricsHttpServer::Loop*>(arg);
  bufferevent* bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
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

void OnRequest(evhttp_request* req, void* arg) {
  auto* l = static_cast<MetricsHttpServer::Loop*>(arg);
  const evhttp_cmd_type method = evhttp_request_get_command(req);
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

}  // namespace

MetricsHttpServer::Loop::~Loop() {
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
  auto l = std::make_unique<Loop>(collectable_.get(), options_);
  l->base = event_base_new();
  if (l->base == nullptr) return absl::InternalError("metrics: event_base_new failed");
  l->http = evhttp_new(l->base);
  if (l->http == nullptr) return absl::InternalError("metrics: evhttp_new failed");
  evhttp_set_max_headers_size(l->http, options_.max_header_bytes);
  evhttp_set_max_body_size(l->http, options_.max_body_bytes);
  const timeval timeout = absl::ToTimeval(options_.timeout);
  evhttp_set_timeout_tv(l->http, &timeout);
  // Every method evhttp parses reaches OnRequest, which answers 405 for all but GET and HEAD.
  evhttp_set_allowed_methods(l->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                                          EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                          EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
  evhttp_set_default_content_type(l->http, "text/plain");
  evhttp_set_gencb(l->http, OnRequest, l.get());
  evhttp_set_bevcb(l->http, OnNewConnection, l.get());
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("metrics-port: ", port, " is out of range"));
  }
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
  if (pipe2(l->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    return absl::InternalError(absl::StrCat("metrics: pipe2: ", std::strerror(errno)));
  }
  l->wake_event = event_new(l->base, l->wake[0], EV_READ, OnWake, l.get());
  l->sweep_event = event_new(l->base, -1, EV_PERSIST, OnSweep, l.get());
  if (l->wake_event == nullptr || l->sweep_event == nullptr ||
      event_add(l->wake_event, nullptr) != 0 || event_add(l->sweep_event, &kSweep) != 0) {
    return absl::InternalError("metrics: cannot create the loop's events");
  }
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
                                 std::unique_ptr<MetricsHttpServer>* server) {
  if (*server != nullptr) return absl::FailedPreconditionError("metrics are already served");
  auto http = std::make_unique<MetricsHttpServer>(std::move(collectable));
  absl::StatusOr<int> bound = http->Start(host, port);
  if (bound.ok()) *server = std::move(http);
  return bound;
}

}  // namespace sambay
