#include "tests/worker/http_get.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace sambay::testing {
namespace {

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

// Waits until fd is ready for `events` or the deadline passes.
absl::Status WaitFd(int fd, short events, absl::Time deadline, const char* what) {
  while (true) {
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) return absl::DeadlineExceededError(absl::StrCat("http: timeout while ", what));
    pollfd p{fd, events, 0};
    const int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(ms, 1000)));
    if (r > 0) return absl::OkStatus();
    if (r < 0 && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat("http: poll: ", strerror(errno)));
    }
  }
}

// Parses one sample line: name[{labels}] value [timestamp].
bool ParseSampleLine(const std::string& line, MetricSample* out) {
  size_t i = 0;
  const size_t n = line.size();
  while (i < n &&
         (std::isalnum(static_cast<unsigned char>(line[i])) || line[i] == '_' || line[i] == ':')) {
    ++i;
  }
  if (i == 0) return false;
  out->name = line.substr(0, i);
  out->labels.clear();
  if (i < n && line[i] == '{') {
    ++i;
    while (true) {
      while (i < n && (line[i] == ' ' || line[i] == ',')) ++i;
      if (i < n && line[i] == '}') {
        ++i;
        break;
      }
      const size_t eq = line.find('=', i);
      if (eq == std::string::npos || eq + 1 >= n || line[eq + 1] != '"') return false;
      std::string key = line.substr(i, eq - i);
      std::string value;
      size_t j = eq + 2;
      for (; j < n && line[j] != '"'; ++j) {
        if (line[j] == '\\' && j + 1 < n) {
          ++j;
          value += line[j] == 'n' ? '\n' : line[j];
        } else {
          value += line[j];
        }
      }
      if (j >= n) return false;
      out->labels[key] = value;
      i = j + 1;
    }
  }
  while (i < n && line[i] == ' ') ++i;
  size_t end = line.find(' ', i);
  const std::string v = line.substr(i, end == std::string::npos ? std::string::npos : end - i);
  if (v == "+Inf") {
    out->value = INFINITY;
  } else if (v == "-Inf") {
    out->value = -INFINITY;
  } else if (v == "NaN") {
    out->value = NAN;
  } else {
    char* e = nullptr;
    out->value = std::strtod(v.c_str(), &e);
    if (v.empty() || e == nullptr || *e != '\0') return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<HttpResponse> HttpGet(const std::string& host, int port, const std::string& path,
                                     absl::Duration timeout) {
  return HttpExchange(
      host, port, absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", host, ":", port, "\r\n\r\n"),
      timeout);
}

absl::StatusOr<HttpResponse> HttpExchange(const std::string& host, int port, const std::string& req,
                                          absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("http: not an IPv4 address: ", host));
  }
  Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return absl::InternalError(absl::StrCat("http: socket: ", strerror(errno)));
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno != EINPROGRESS) {
      return absl::UnavailableError(
          absl::StrCat("http: connect ", host, ":", port, ": ", strerror(errno)));
    }
    if (absl::Status s = WaitFd(fd.get(), POLLOUT, deadline, "connecting"); !s.ok()) return s;
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      return absl::UnavailableError(
          absl::StrCat("http: connect ", host, ":", port, ": ", strerror(err)));
    }
  }
  size_t sent = 0;
  while (sent < req.size()) {
    const ssize_t w = send(fd.get(), req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (w > 0) {
      sent += static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (absl::Status s = WaitFd(fd.get(), POLLOUT, deadline, "sending"); !s.ok()) return s;
      continue;
    }
    return absl::UnavailableError(absl::StrCat("http: send: ", strerror(errno)));
  }
  std::string raw;
  char buf[16384];
  while (true) {
    const ssize_t r = recv(fd.get(), buf, sizeof(buf), 0);
    if (r > 0) {
      raw.append(buf, static_cast<size_t>(r));
      continue;
    }
    if (r == 0) break;
    if (errno == EAGAIN || errno == EINTR) {
      if (absl::Status s = WaitFd(fd.get(), POLLIN, deadline, "reading"); !s.ok()) return s;
      continue;
    }
    return absl::UnavailableError(absl::StrCat("http: recv: ", strerror(errno)));
  }
  const size_t split = raw.find("\r\n\r\n");
  if (split == std::string::npos || raw.compare(0, 5, "HTTP/") != 0) {
    return absl::DataLossError(absl::StrCat("http: malformed response: ", raw.substr(0, 200)));
  }
  HttpResponse resp;
  resp.headers = raw.substr(0, split);
  resp.body = raw.substr(split + 4);
  const size_t sp = resp.headers.find(' ');
  if (sp == std::string::npos || !absl::SimpleAtoi(resp.headers.substr(sp + 1, 3), &resp.status)) {
    return absl::DataLossError(absl::StrCat("http: bad status line: ", resp.headers));
  }
  return resp;
}

absl::StatusOr<std::string> ScrapeMetrics(int port, absl::Duration timeout) {
  auto r = HttpGet("127.0.0.1", port, "/metrics", timeout);
  if (!r.ok()) return r.status();
  if (r->status != 200) {
    return absl::UnavailableError(absl::StrCat("GET /metrics: HTTP ", r->status));
  }
  return r->body;
}

std::vector<MetricSample> ParseMetrics(const std::string& text) {
  std::vector<MetricSample> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    MetricSample s;
    if (ParseSampleLine(line, &s)) out.push_back(std::move(s));
  }
  return out;
}

std::optional<double> MetricValue(const std::string& text, const std::string& name,
                                  const std::map<std::string, std::string>& labels) {
  for (const MetricSample& s : ParseMetrics(text)) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  return std::nullopt;
}

std::optional<double> SeriesValue(const std::string& text, const std::string& series) {
  MetricSample want;
  // Reuse the line parser with a dummy value.
  if (!ParseSampleLine(series + " 0", &want)) return std::nullopt;
  return MetricValue(text, want.name, want.labels);
}

double MetricSum(const std::string& text, const std::string& name,
                 const std::map<std::string, std::string>& labels) {
  double sum = 0;
  for (const MetricSample& s : ParseMetrics(text)) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      match = match && it != s.labels.end() && it->second == v;
    }
    if (match) sum += s.value;
  }
  return sum;
}

}  // namespace sambay::testing
