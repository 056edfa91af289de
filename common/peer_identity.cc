#include "common/peer_identity.h"

#include <grpcpp/security/auth_context.h>

#include <memory>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sambay {

std::string PeerHost(absl::string_view peer) {
  if (!absl::StartsWith(peer, "ipv4:") && !absl::StartsWith(peer, "ipv6:")) {
    return std::string(peer);
  }
  const size_t colon = peer.rfind(':');
  // An IPv6 address is bracketed ("ipv6:[::1]:1234", or "%5B::1%5D" URI-escaped): the port's
  // colon follows the closing bracket.
  size_t close = peer.rfind(']');
  if (const size_t escaped = peer.rfind("%5D");
      escaped != absl::string_view::npos && (close == absl::string_view::npos || escaped > close)) {
    close = escaped;
  }
  if (colon <= 4 || (close != absl::string_view::npos && colon < close)) return std::string(peer);
  return std::string(peer.substr(0, colon));
}

std::string ClientMetadata(const grpc::ServerContextBase& ctx, absl::string_view key) {
  const auto& md = ctx.client_metadata();
  auto it = md.find(grpc::string_ref(key.data(), key.size()));
  if (it == md.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

std::string PeerIdentity(const grpc::ServerContextBase& ctx) {
  const std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  if (auth != nullptr && auth->IsPeerAuthenticated()) {
    std::vector<std::string> names;
    for (const grpc::string_ref& name : auth->GetPeerIdentity()) {
      names.emplace_back(name.data(), name.size());
    }
    if (!names.empty()) {
      return absl::StrCat("x509:", auth->GetPeerIdentityPropertyName(), "=",
                          absl::StrJoin(names, ","));
    }
  }
  std::string host = PeerHost(ctx.peer());
  return host.empty() ? "unknown" : host;
}

}  // namespace sambay
