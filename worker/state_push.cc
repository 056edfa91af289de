#include "worker/state_push.h"

#include <grpcpp/client_context.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/request_id.h"

namespace sambay {

absl::StatusOr<PushResult> PushState(sambay::v1::Worker::StubInterface& stub,
                                     const std::string& handle, std::vector<std::string> chunks,
                                     absl::Time deadline, const std::string& request_id,
                                     const std::string& address) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(deadline));
  if (IsValidRequestId(request_id)) ctx.AddMetadata("x-request-id", request_id);
  sambay::v1::PushStateResponse reply;
  PushResult result;
  const absl::Time start = absl::Now();
  auto writer = stub.PushState(&ctx, &reply);
  sambay::v1::StateChunk msg;
  msg.set_handle(handle);
  for (std::string& chunk : chunks) {
    const int64_t size = static_cast<int64_t>(chunk.size());
    msg.set_data(std::move(chunk));  // no copy: each chunk is sent once
    // A failed write means the stream is broken; Finish() below says why.
    if (!writer->Write(msg)) break;
    msg.clear_handle();
    result.bytes += size;
    ++result.chunks;
  }
  writer->WritesDone();
  const grpc::Status st = writer->Finish();
  if (!st.ok()) {
    absl::Status s = FromGrpcStatus(st);
    if (address.empty()) return s;
    return absl::Status(s.code(), absl::StrCat("push to ", address, ": ", s.message()));
  }
  result.transfer_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  result.import_seconds = reply.import_seconds();
  return result;
}

}  // namespace sambay
