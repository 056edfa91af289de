// Channels and server limits shared by every sambay binary: explicit message-size caps and
// keepalive tuned for long silent streams (a prefill can run for seconds without data), so a
// dead peer is found within keepalive_seconds + keepalive_timeout_seconds.
//
// Stateless functions; ChannelCache is thread-safe: its mu_ guards the channel map.
#ifndef SAMBAY_COMMON_GRPC_CHANNEL_H_
#define SAMBAY_COMMON_GRPC_CHANNEL_H_

#include <grpcpp/channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/server_builder.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"

namespace sambay {

struct RpcLimits {
  int64_t max_message_bytes = 32 << 20;  // both directions
  int64_t keepalive_seconds = 20;
  int64_t keepalive_timeout_seconds = 10;
  // The channels' credentials (common/tls.h); null = insecure (plaintext).
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // When set (and credentials are TLS): the name the server's certificate must carry, instead of
  // the host of the address (the cluster's internal certificates name the cluster, not pod IPs).
  std::string tls_server_name;
};

// A channel to `address` (host:port) with the limits, keepalive and credentials set.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, const RpcLimits& limits);

// Applies message caps, keepalive (server side: pings allowed every 5 s without calls) and a
// cap on concurrent streams per connection to a server builder.
void ConfigureServer(grpc::ServerBuilder& builder, const RpcLimits& limits);

// One channel per address, created on first use and kept.
class ChannelCache {
 public:
  explicit ChannelCache(RpcLimits limits) : limits_(limits) {}
  std::shared_ptr<grpc::Channel> Get(const std::string& address) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  RpcLimits limits_;
  Mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sambay

#endif  // SAMBAY_COMMON_GRPC_CHANNEL_H_
