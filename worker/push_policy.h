// Where a prefill worker may push states: the Prefill caller names the
// destination, so without a check any caller could make the worker open connections to any
// address (server-side request forgery) and grow its channel cache without bound.
//
//   PushAllowList  parsed from --push-allow: comma-separated entries, each one of
//                    *                 any destination (trust every caller);
//                    loopback          127.0.0.0/8, ::1 and localhost, any port (the default);
//                    A.B.C.D/N, V6/N   IP literals in that CIDR block, any port;
//                    A.B.C.D, V6       that address, any port;
//                    HOST:PORT         exactly that host (case-insensitive) and port;
//                    HOST              that host name, any port.
//                  A destination must be plain HOST:PORT or [V6]:PORT (no scheme such as dns:,
//                  unix: or ipv4:, which only '*' admits). Host names are compared as written,
//                  never resolved (a resolved name could change between check and connect).
//   PeerChannels   channels to push destinations, at most `capacity`, least recently used
//                  evicted (a push in flight keeps its channel alive through its shared_ptr).
//
// Ownership: both own their data. Thread-safety: PushAllowList is immutable after Parse (const
// methods thread-safe); PeerChannels is thread-safe (one mutex).
#ifndef SAMBAY_WORKER_PUSH_POLICY_H_
#define SAMBAY_WORKER_PUSH_POLICY_H_

#include <grpcpp/channel.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/grpc_channel.h"
#include "common/mutex.h"

namespace sambay {

class PushAllowList {
 public:
  // INVALID_ARGUMENT naming --push-allow and the bad entry.
  static absl::StatusOr<PushAllowList> Parse(absl::string_view spec);
  // The default: "loopback".
  static PushAllowList Loopback();

  // OK, or PERMISSION_DENIED naming destination.address (INVALID_ARGUMENT when it is not
  // HOST:PORT at all and the list is not '*').
  absl::Status Check(absl::string_view address) const;

 private:
  struct Cidr {
    int family = 0;  // AF_INET or AF_INET6
    std::array<uint8_t, 16> bytes{};
    int prefix = 0;
  };
  bool any_ = false;
  std::vector<Cidr> cidrs_;
  std::vector<std::string> hosts_;                       // lower case, any port
  std::vector<std::pair<std::string, int>> host_ports_;  // lower case host, port
};

class PeerChannels {
 public:
  static constexpr size_t kDefaultCapacity = 64;
  explicit PeerChannels(RpcLimits limits, size_t capacity = kDefaultCapacity)
      : limits_(limits), capacity_(capacity < 1 ? 1 : capacity) {}

  std::shared_ptr<grpc::Channel> Get(const std::string& address);
  size_t size() const;

 private:
  using Lru = std::list<std::pair<std::string, std::shared_ptr<grpc::Channel>>>;
  const RpcLimits limits_;
  const size_t capacity_;
  mutable Mutex mu_;
  Lru lru_ ABSL_GUARDED_BY(mu_);  // most recently used first
  std::map<std::string, Lru::iterator> index_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sambay

#endif  // SAMBAY_WORKER_PUSH_POLICY_H_
