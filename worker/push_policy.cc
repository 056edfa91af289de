#include "worker/push_policy.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sambay {
namespace {

struct Ip {
  int family = 0;
  std::array<uint8_t, 16> bytes{};
};

std::optional<Ip> ParseIp(absl::string_view s) {
  const std::string str(s);
  Ip ip;
  if (inet_pton(AF_INET, str.c_str(), ip.bytes.data()) == 1) {
    ip.family = AF_INET;
    return ip;
  }
  if (inet_pton(AF_INET6, str.c_str(), ip.bytes.data()) == 1) {
    ip.family = AF_INET6;
    return ip;
  }
  return std::nullopt;
}

bool IsHostName(absl::string_view h) {
  if (h.empty() || h.size() > 253) return false;
  for (char c : h) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_') {
      return false;
    }
  }
  return true;
}

std::optional<int> ParsePort(absl::string_view p) {
  int port = 0;
  if (p.empty() || p.size() > 5 || !absl::SimpleAtoi(p, &port) || port < 1 || port > 65535) {
    return std::nullopt;
  }
  for (char c : p) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return std::nullopt;
  }
  return port;
}

// HOST:PORT or [V6]:PORT -> (host without brackets, port).
std::optional<std::pair<std::string, int>> SplitHostPort(absl::string_view a) {
  absl::string_view host, port;
  if (absl::ConsumePrefix(&a, "[")) {
    const size_t close = a.find(']');
    if (close == absl::string_view::npos || a.substr(close + 1, 1) != ":") return std::nullopt;
    host = a.substr(0, close);
    port = a.substr(close + 2);
    if (!ParseIp(host) || ParseIp(host)->family != AF_INET6) return std::nullopt;
  } else {
    const size_t colon = a.find(':');
    if (colon == absl::string_view::npos || a.find(':', colon + 1) != absl::string_view::npos) {
      return std::nullopt;
    }
    host = a.substr(0, colon);
    port = a.substr(colon + 1);
    if (!IsHostName(host)) return std::nullopt;
  }
  auto p = ParsePort(port);
  if (!p) return std::nullopt;
  return std::make_pair(absl::AsciiStrToLower(host), *p);
}

bool InBlock(const Ip& ip, int family, const std::array<uint8_t, 16>& net, int prefix) {
  if (ip.family != family) return false;
  for (int i = 0; i < prefix / 8; ++i) {
    if (ip.bytes[i] != net[i]) return false;
  }
  if (prefix % 8 == 0) return true;
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - prefix % 8));
  return (ip.bytes[prefix / 8] & mask) == (net[prefix / 8] & mask);
}

}  // namespace

absl::StatusOr<PushAllowList> PushAllowList::Parse(absl::string_view spec) {
  PushAllowList list;
  for (absl::string_view raw : absl::StrSplit(spec, ',', absl::SkipWhitespace())) {
    const absl::string_view e = absl::StripAsciiWhitespace(raw);
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("--push-allow: entry \"", e, "\" ", why));
    };
    if (e == "*") {
      list.any_ = true;
      continue;
    }
    if (e == "loopback") {
      for (absl::string_view block : {"127.0.0.0/8", "::1/128"}) {
        auto sub = Parse(block);
        if (!sub.ok()) return sub.status();
        list.cidrs_.insert(list.cidrs_.end(), sub->cidrs_.begin(), sub->cidrs_.end());
      }
      list.hosts_.push_back("localhost");
      continue;
    }
    const size_t slash = e.find('/');
    if (slash != absl::string_view::npos) {
      auto ip = ParseIp(e.substr(0, slash));
      int prefix = -1;
      if (!ip || !absl::SimpleAtoi(e.substr(slash + 1), &prefix)) {
        return bad("is not a CIDR block (A.B.C.D/N or V6/N)");
      }
      const int max = ip->family == AF_INET ? 32 : 128;
      if (prefix < 0 || prefix > max)
        return bad(absl::StrCat("has a prefix outside [0, ", max, "]"));
      list.cidrs_.push_back({ip->family, ip->bytes, prefix});
      continue;
    }
    if (auto ip = ParseIp(e)) {
      list.cidrs_.push_back({ip->family, ip->bytes, ip->family == AF_INET ? 32 : 128});
      continue;
    }
    if (auto hp = SplitHostPort(e)) {
      list.host_ports_.push_back(*std::move(hp));
      continue;
    }
    if (IsHostName(e)) {
      list.hosts_.push_back(absl::AsciiStrToLower(e));
      continue;
    }
    return bad("is not *, loopback, a CIDR block, an IP address, HOST or HOST:PORT");
  }
  return list;
}

PushAllowList PushAllowList::Loopback() { return *Parse("loopback"); }

absl::Status PushAllowList::Check(absl::string_view address) const {
  if (any_) return absl::OkStatus();
  auto hp = SplitHostPort(address);
  if (!hp) {
    return absl::InvalidArgumentError(
        absl::StrCat("destination.address: \"", address, "\" is not HOST:PORT or [IPV6]:PORT"));
  }
  const auto& [host, port] = *hp;
  if (auto ip = ParseIp(host)) {
    for (const Cidr& c : cidrs_) {
      if (InBlock(*ip, c.family, c.bytes, c.prefix)) return absl::OkStatus();
    }
  }
  for (const std::string& h : hosts_) {
    if (h == host) return absl::OkStatus();
  }
  for (const auto& [h, p] : host_ports_) {
    if (h == host && p == port) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      absl::StrCat("destination.address: \"", address,
                   "\" is not an allowed push destination for this worker (see its --push-allow)"));
}

std::shared_ptr<grpc::Channel> PeerChannels::Get(const std::string& address) {
  MutexLock lock(&mu_);
  auto it = index_.find(address);
  if (it != index_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->second;
  }
  lru_.emplace_front(address, MakeChannel(address, limits_));
  index_[address] = lru_.begin();
  while (lru_.size() > capacity_) {
    index_.erase(lru_.back().first);
    lru_.pop_back();
  }
  return lru_.front().second;
}

size_t PeerChannels::size() const {
  MutexLock lock(&mu_);
  return lru_.size();
}

}  // namespace sambay
