// ClientFlags: the connection flags the command-line clients (sambay-client, sambay-bench) share,
// with their checks, the channel they describe and what every call carries:
//
//   --address, --timeout, --max-message-mib   where to connect, the deadline, the message cap;
//   --tls                                     TLS, verifying the server against the system roots;
//   --tls-ca PATH                             TLS, verifying the server against this CA bundle;
//   --tls-cert PATH --tls-key PATH            a client certificate (mTLS); implies TLS;
//   --tls-server-name NAME                    the name the server's certificate must carry
//                                             (default: the host of --address);
//   --api-key KEY                             sent as gRPC metadata "authorization: Bearer KEY".
//
// The wording of --address and --timeout is the tool's own and is passed in. Every flag is read
// from the tool's environment variable (FlagSet), and ApplySharedClientEnv then gives the TLS
// flags and --api-key the shared SAMBAY_TLS, SAMBAY_TLS_CA, SAMBAY_TLS_CERT, SAMBAY_TLS_KEY,
// SAMBAY_TLS_SERVER_NAME and SAMBAY_API_KEY as defaults (what deploy/local/cluster.sh --secure
// exports), for tools whose own prefix is not SAMBAY_ (sambay-bench's SAMBAY_LOADGEN_).
//
// The API key is a secret: no function here puts it into an error message, and RedactedEffective
// is the effective configuration with it replaced. It travels as per-call metadata, not as gRPC
// call credentials, so it also works on plaintext channels (loopback testing); over a network,
// use TLS.
//
// Ownership: RegisterClientFlags writes through `flags`, which must outlive FlagSet::Parse.
// Thread-safety: none for registration and checks (main() before threads); MakeClientChannel and
// PrepareClientContext may be called from any thread.
#ifndef SAMBAY_COMMON_CLIENT_FLAGS_H_
#define SAMBAY_COMMON_CLIENT_FLAGS_H_

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "common/flags.h"
#include "nlohmann/json.hpp"

namespace sambay {

struct ClientFlags {
  std::string address = "127.0.0.1:50050";  // host:port
  double timeout = 0;                       // deadline in seconds; 0 = none
  int64_t max_message_mib = 32;             // largest gRPC message, both directions
  bool tls = false;                         // TLS with the system roots (or tls_ca)
  std::string tls_ca;                       // PEM CA bundle to verify the server; implies TLS
  std::string tls_cert;                     // PEM client certificate chain (mTLS); implies TLS
  std::string tls_key;                      // its PEM private key
  std::string tls_server_name;              // overrides the name checked in the server's cert
  std::string api_key;                      // secret; empty = none

  bool UseTls() const { return tls || !tls_ca.empty() || !tls_cert.empty() || !tls_key.empty(); }
};

// Registers the flags above on `fs`, writing into *flags.
void RegisterClientFlags(FlagSet& fs, ClientFlags* flags, const char* address_help,
                         const char* timeout_help);

// For each TLS flag and --api-key that neither the command line nor the tool's own variable set:
// the shared variable SAMBAY_<NAME> when it is set. Call after fs.Parse. An error (a bad
// SAMBAY_TLS boolean) names the variable.
absl::Status ApplySharedClientEnv(const FlagSet& fs, ClientFlags* flags,
                                  const std::function<const char*(const char*)>& getenv = nullptr);

// A non-empty --address, --timeout >= 0, --max-message-mib in [1, 2047]; --tls-cert and --tls-key
// both or neither, readable and matching, --tls-ca readable (common/tls.h CheckTlsFiles);
// --tls-server-name only with TLS; --api-key printable ASCII without spaces. The error names the
// flag and never holds the key.
absl::Status CheckClientFlags(const ClientFlags& flags);

// For a mode that cannot use TLS: OK without TLS, else INVALID_ARGUMENT naming the flag that
// turned TLS on ("--tls-ca", "--tls-cert", "--tls-key" or "--tls"), with `why`, and how to turn it
// off (it may have come from a SAMBAY_TLS* variable).
absl::Status RefuseTls(const ClientFlags& flags, const std::string& why);

// A channel to --address with the --max-message-mib cap (common/grpc_channel.h): TLS credentials
// when UseTls() (common/tls.h; the files are re-read every minute), else insecure.
// REQUIRES: CheckClientFlags(flags) is OK.
std::shared_ptr<grpc::Channel> MakeClientChannel(const ClientFlags& flags);

// Prepares a call's context: the deadline (--timeout, or `default_timeout` seconds when --timeout
// is 0; none when both are 0) and the API key as "authorization: Bearer KEY" metadata.
void PrepareClientContext(const ClientFlags& flags, grpc::ClientContext* ctx,
                          double default_timeout = 0);

// fs.Effective() with a non-empty "api-key" value replaced by "<redacted>": for logs and reports.
nlohmann::json RedactedEffective(const FlagSet& fs);

}  // namespace sambay

#endif  // SAMBAY_COMMON_CLIENT_FLAGS_H_
