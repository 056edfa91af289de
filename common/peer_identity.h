// The caller identity of a gRPC call, for decisions that must not cross callers (an Abort may
// reach only the caller's own requests).
//
// The identity is the peer's authenticated names when the transport authenticated it (TLS client
// certificates: the x509 names of ServerContext::auth_context()), else the peer's host without its
// port ("ipv4:127.0.0.1:5555" -> "ipv4:127.0.0.1", "ipv6:[::1]:1234" -> "ipv6:[::1]"), so the
// new connections of one client keep one identity. Callers behind one host (or one proxy) share
// it: on insecure transport nothing finer can be told apart.
//
// Stateless; thread-safe.
#ifndef SAMBAY_COMMON_PEER_IDENTITY_H_
#define SAMBAY_COMMON_PEER_IDENTITY_H_

#include <grpcpp/server_context.h>

#include <string>

#include "absl/strings/string_view.h"

namespace sambay {

// The value of the client's metadata `key` (lower case), "" when it sent none.
std::string ClientMetadata(const grpc::ServerContextBase& ctx, absl::string_view key);

// The identity of the caller of `ctx` (never empty).
std::string PeerIdentity(const grpc::ServerContextBase& ctx);

// `peer` (a gRPC peer URI) without its port: "ipv4:" and "ipv6:" addresses lose ":PORT"; other
// forms ("unix:/path") are returned as they are.
std::string PeerHost(absl::string_view peer);

}  // namespace sambay

#endif  // SAMBAY_COMMON_PEER_IDENTITY_H_
