// ClientFlags: the connection flags the command-line clients (sambay-client, sambay-bench) share,
// --address, --timeout and --max-message-mib, with their checks and the channel they describe.
// The wording of --address and --timeout is the tool's own and is passed in.
//
// Ownership: RegisterClientFlags writes through `flags`, which must outlive FlagSet::Parse.
// Thread-safety: none for registration and checks (main() before threads); MakeClientChannel may
// be called from any thread.
#ifndef SAMBAY_COMMON_CLIENT_FLAGS_H_
#define SAMBAY_COMMON_CLIENT_FLAGS_H_

#include <grpcpp/channel.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "common/flags.h"

namespace sambay {

struct ClientFlags {
  std::string address = "127.0.0.1:50050";  // host:port
  double timeout = 0;                       // deadline in seconds; 0 = none
  int64_t max_message_mib = 32;             // largest gRPC message, both directions
};

// Registers --address, --timeout and --max-message-mib on `fs`, writing into *flags.
void RegisterClientFlags(FlagSet& fs, ClientFlags* flags, const char* address_help,
                         const char* timeout_help);

// A non-empty --address, --timeout >= 0, --max-message-mib in [1, 2047]; the error names the flag.
absl::Status CheckClientFlags(const ClientFlags& flags);

// An insecure channel to --address with the --max-message-mib cap (common/grpc_channel.h).
std::shared_ptr<grpc::Channel> MakeClientChannel(const ClientFlags& flags);

}  // namespace sambay

#endif  // SAMBAY_COMMON_CLIENT_FLAGS_H_
