// Raw-socket HTTP/1.1 helpers for the hostile HTTP tests (http_hostile_test.cc,
// http_server_hostile_test.cc): a TCP client that sends exact bytes, a response parser (status,
// headers, chunked bodies), and /proc readings of a process (descriptors, RSS, CPU).
//
// Test-only; each RawConn is used by one thread.
#ifndef SAMBAY_TESTS_ROUTER_HTTP_RAW_H_
#define SAMBAY_TESTS_ROUTER_HTTP_RAW_H_

#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/mutex.h"
#include "gtest/gtest.h"
#include "router/http_server.h"
#include "tests/router/router_harness.h"

namespace sambay::testing {

// ---- A raw TCP client ------------------------------------------------------------------------

class RawConn {
 public:
  // Connects to 127.0.0.1:port; rcvbuf > 0 sets SO_RCVBUF first (a client that takes little).
  explicit RawConn(int port, int rcvbuf = 0) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return;
    if (rcvbuf > 0) setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) Close();
  }
  ~RawConn() { Close(); }
  RawConn(const RawConn&) = delete;
  RawConn& operator=(const RawConn&) = delete;

  bool ok() const { return fd_ >= 0; }
  // Sends all of `data`; false when the peer closed or reset.
  bool Send(const std::string& data) {
    size_t off = 0;
    while (off < data.size()) {
      const ssize_t n = send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }
  void ShutdownWrite() { shutdown(fd_, SHUT_WR); }
  // Reads until `done(received)` holds, the peer closes (EOF or reset), or `timeout`.
  // Returns whether the peer closed.
  bool ReadUntil(const std::function<bool(const std::string&)>& done, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!closed_ && !(done && done(in_))) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) break;
      pollfd p{fd_, POLLIN, 0};
      const int r = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      char buf[65536];
      const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n > 0) {
        in_.append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        closed_ = true;
      }
    }
    return closed_;
  }
  // Reads (and keeps) what arrives until the peer closes (true) or `timeout` (false).
  bool WaitClosed(absl::Duration timeout) { return ReadUntil(nullptr, timeout); }
  const std::string& received() const { return in_; }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  std::string in_;
  bool closed_ = false;
};

// ---- Responses -------------------------------------------------------------------------------

struct Resp {
  int status = 0;
  std::string head;                            // status line and header fields
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;                            // de-chunked
};

// The chunked body at in[p...]: appends it to *body; the offset past it, or npos if incomplete.
inline size_t Dechunk(const std::string& in, size_t p, std::string* body) {
  while (true) {
    const size_t eol = in.find("\r\n", p);
    if (eol == std::string::npos) return std::string::npos;
    const size_t size = std::strtoul(in.substr(p, eol - p).c_str(), nullptr, 16);
    p = eol + 2;
    if (size == 0) return in.compare(p, 2, "\r\n") == 0 ? p + 2 : std::string::npos;
    if (p + size + 2 > in.size()) return std::string::npos;
    body->append(in, p, size);
    p += size + 2;
  }
}

// The complete responses at the start of `in` (interim 1xx ones skipped). head[i]: the i-th
// answers a HEAD request (no body). A body without a length ends with the connection: complete
// only when `closed`. Bytes that are not a response give one with status -1.
inline std::vector<Resp> Parse(const std::string& in, bool closed,
                               const std::vector<bool>& head = {}) {
  std::vector<Resp> out;
  size_t pos = 0;
  while (pos < in.size()) {
    const size_t end = in.find("\r\n\r\n", pos);
    if (end == std::string::npos) break;
    Resp r;
    r.head = in.substr(pos, end - pos);
    if (!absl::StartsWith(r.head, "HTTP/1.") || r.head.size() < 12 ||
        !absl::SimpleAtoi(r.head.substr(9, 3), &r.status)) {
      r.status = -1;
      out.push_back(std::move(r));
      break;
    }
    for (absl::string_view line : absl::StrSplit(r.head, "\r\n")) {
      const size_t colon = line.find(':');
      if (colon == absl::string_view::npos) continue;
      r.headers[absl::AsciiStrToLower(line.substr(0, colon))] =
          std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
    size_t p = end + 4;
    if (r.status / 100 == 1) {
      pos = p;
      continue;
    }
    const bool no_body = (out.size() < head.size() && head[out.size()]) || r.status == 204;
    size_t length = 0;
    if (no_body) {
    } else if (absl::StrContains(r.headers["transfer-encoding"], "chunked")) {
      p = Dechunk(in, p, &r.body);
      if (p == std::string::npos) break;
    } else if (absl::SimpleAtoi(r.headers["content-length"], &length)) {
      if (p + length > in.size()) break;
      r.body = in.substr(p, length);
      p += length;
    } else {
      if (!closed) break;
      r.body = in.substr(p);
      p = in.size();
    }
    out.push_back(std::move(r));
    pos = p;
  }
  return out;
}

inline std::string Describe(const std::string& raw) {
  return absl::CHexEscape(raw.substr(0, 600)) + (raw.size() > 600 ? "..." : "");
}

// A request with a body (Content-Length), HTTP/1.1.
inline std::string PostRequest(const std::string& path, const std::string& body,
                               const std::string& extra_headers = "") {
  return absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
                      extra_headers, "Content-Length: ", body.size(), "\r\n\r\n", body);
}

inline const std::string kHealth = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

// ---- /proc -----------------------------------------------------------------------------------

inline int CountFds(pid_t pid) {
  DIR* d = opendir(absl::StrCat("/proc/", pid, "/fd").c_str());
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

inline int64_t RssKb(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(f, line)) {
    int64_t kb = 0;
    if (absl::StartsWith(line, "VmRSS:") &&
        absl::SimpleAtoi(absl::StripSuffix(absl::StripAsciiWhitespace(line.substr(6)), " kB"),
                         &kb)) {
      return kb;
    }
  }
  return -1;
}

// User + system CPU seconds of a process.
inline double CpuSeconds(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t paren = s.rfind(')');
  if (paren == std::string::npos) return -1;
  std::vector<std::string> fields = absl::StrSplit(s.substr(paren + 2), ' ');
  if (fields.size() < 13) return -1;
  return (std::atof(fields[11].c_str()) + std::atof(fields[12].c_str())) /
         static_cast<double>(sysconf(_SC_CLK_TCK));
}

}  // namespace sambay::testing

#endif  // SAMBAY_TESTS_ROUTER_HTTP_RAW_H_
