#include "common/client_flags.h"

#include "common/grpc_channel.h"

namespace sambay {

void RegisterClientFlags(FlagSet& fs, ClientFlags* flags, const char* address_help,
                         const char* timeout_help) {
  fs.AddString("address", &flags->address, address_help);
  fs.AddDouble("timeout", &flags->timeout, timeout_help);
  fs.AddInt("max-message-mib", &flags->max_message_mib, "Largest gRPC message (MiB).");
}

absl::Status CheckClientFlags(const ClientFlags& flags) {
  if (flags.address.empty()) {
    return absl::InvalidArgumentError("--address: a host:port is required");
  }
  if (flags.timeout < 0) return absl::InvalidArgumentError("--timeout: must be >= 0");
  if (flags.max_message_mib <= 0 || flags.max_message_mib > 2047) {
    return absl::InvalidArgumentError("--max-message-mib: must be in [1, 2047]");
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::Channel> MakeClientChannel(const ClientFlags& flags) {
  RpcLimits limits;
  limits.max_message_bytes = flags.max_message_mib << 20;
  return MakeChannel(flags.address, limits);
}

}  // namespace sambay
