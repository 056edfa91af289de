#include "common/grpc_channel.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>
#include <climits>

namespace sambay {

namespace {
int ClampInt(int64_t v) { return static_cast<int>(std::clamp<int64_t>(v, 0, INT_MAX)); }
}  // namespace

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, const RpcLimits& limits) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(ClampInt(limits.max_message_bytes));
  args.SetMaxSendMessageSize(ClampInt(limits.max_message_bytes));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, ClampInt(limits.keepalive_seconds * 1000));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ClampInt(limits.keepalive_timeout_seconds * 1000));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Each channel gets its own connection (no sharing between caches in one process).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (limits.credentials == nullptr) {
    return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  }
  if (!limits.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(limits.tls_server_name);
  }
  return grpc::CreateCustomChannel(address, limits.credentials, args);
}

void ConfigureServer(grpc::ServerBuilder& builder, const RpcLimits& limits) {
  builder.SetMaxReceiveMessageSize(ClampInt(limits.max_message_bytes));
  builder.SetMaxSendMessageSize(ClampInt(limits.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, ClampInt(limits.keepalive_seconds * 1000));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             ClampInt(limits.keepalive_timeout_seconds * 1000));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, 1024);
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, 16 * 1024);
  // A port already in use is an error, not a second process silently sharing it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
}

std::shared_ptr<grpc::Channel> ChannelCache::Get(const std::string& address) {
  MutexLock lock(&mu_);
  auto& ch = channels_[address];
  if (!ch) ch = MakeChannel(address, limits_);
  return ch;
}

}  // namespace sambay
