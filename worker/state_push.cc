#include "worker/state_push.h"

#include <grpcpp/client_context.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/request_id.h"
#include "common/status_macros.h"

namespace sambay {

absl::StatusOr<PushResult> PushStateFrom(sambay::v1::Worker::StubInterface& stub,
                                         const std::string& handle, const ChunkProducer& produce,
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
  bool broken = false;
  absl::Duration writing;
  const absl::Status produced = produce([&](std::string chunk) {
    // After a failed write the stream is broken; Finish() below says why.
    if (broken) return absl::CancelledError("the push stream broke");
    const int64_t size = static_cast<int64_t>(chunk.size());
    msg.set_data(std::move(chunk));  // no copy: each chunk is sent once
    const absl::Time t0 = absl::Now();
    broken = !writer->Write(msg);
    writing += absl::Now() - t0;
    if (broken) return absl::CancelledError("the push stream broke");
    msg.clear_handle();
    result.bytes += size;
    ++result.chunks;
    return absl::OkStatus();
  });
  if (!produced.ok() && !broken) {
    // The producer failed (not the stream): the destination must not import a partial state.
    ctx.TryCancel();
    writer->Finish();
    return produced;
  }
  writer->WritesDone();
  const grpc::Status st = writer->Finish();
  if (!st.ok()) {
    absl::Status s = FromGrpcStatus(st);
    if (address.empty()) return s;
    return absl::Status(s.code(), absl::StrCat("push to ", address, ": ", s.message()));
  }
  result.transfer_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  result.produce_seconds = absl::ToDoubleSeconds(absl::Now() - start - writing);
  result.import_seconds = reply.import_seconds();
  return result;
}

absl::StatusOr<PushResult> PushState(sambay::v1::Worker::StubInterface& stub,
                                     const std::string& handle, std::vector<std::string> chunks,
                                     absl::Time deadline, const std::string& request_id,
                                     const std::string& address) {
  return PushStateFrom(
      stub, handle,
      [&](const StateChunkSink& sink) {
        for (std::string& chunk : chunks) SAMBAY_RETURN_IF_ERROR(sink(std::move(chunk)));
        return absl::OkStatus();
      },
      deadline, request_id, address);
}

}  // namespace sambay
