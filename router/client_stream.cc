#include "router/client_stream.h"

#include "common/grpc_status.h"
#include "common/peer_identity.h"

namespace sambay {

absl::Time GrpcClientStream::deadline() const {
  if (gpr_time_cmp(ctx_.raw_deadline(), gpr_inf_future(ctx_.raw_deadline().clock_type)) == 0) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(ctx_.deadline());
}

std::string GrpcClientStream::peer() const { return PeerIdentity(ctx_); }

std::string GrpcClientStream::header_request_id() const {
  return ClientMetadata(ctx_, "x-request-id");
}

std::string GrpcClientStream::authorization() const {
  return ClientMetadata(ctx_, "authorization");
}

void GrpcClientStream::Finish(const absl::Status& status, void* tag) {
  writer_.Finish(ToGrpcStatus(status), tag);
}

}  // namespace sambay
