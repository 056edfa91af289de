// State push, the sending side of the prefill -> decode handoff: streams exported state chunks
// to a decode worker's PushState and returns what the destination acknowledged.
//
// Stateless function; thread-safe (each call uses its own ClientContext).
#ifndef SAMBAY_WORKER_STATE_PUSH_H_
#define SAMBAY_WORKER_STATE_PUSH_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/state_io.h"
#include "sambay/v1/worker.grpc.pb.h"

namespace sambay {

struct PushResult {
  int64_t bytes = 0;  // chunk frames sent (headers included)
  int64_t chunks = 0;
  double transfer_seconds = 0;  // first write to the destination's acknowledgement
  double import_seconds = 0;    // as the destination reported it
  double produce_seconds = 0;   // PushStateFrom: time in the producer outside the writes
};

// Writes the chunks (in order, framed as ExportStateTo frames them) into `sink`; returns the
// first error, its own or the sink's.
using ChunkProducer = std::function<absl::Status(const StateChunkSink& sink)>;

// Streams the chunks `produce` makes for reservation `handle` as they come (one chunk in memory
// at a time with ExportStateTo). `request_id` travels as x-request-id metadata; the whole call
// is bounded by `deadline`. On failure returns the destination's status (DATA_LOSS,
// FAILED_PRECONDITION, NOT_FOUND, ...) or UNAVAILABLE / DEADLINE_EXCEEDED from the transport,
// with "push to <address>: " in front of the message when `address` is given; when the producer
// fails, the stream is cancelled (the destination imports nothing) and its error returned as is.
absl::StatusOr<PushResult> PushStateFrom(sambay::v1::Worker::StubInterface& stub,
                                         const std::string& handle, const ChunkProducer& produce,
                                         absl::Time deadline, const std::string& request_id,
                                         const std::string& address = "");

// PushStateFrom with chunks already made (from ExportState; consumed: pass them with std::move
// to avoid a copy).
absl::StatusOr<PushResult> PushState(sambay::v1::Worker::StubInterface& stub,
                                     const std::string& handle, std::vector<std::string> chunks,
                                     absl::Time deadline, const std::string& request_id,
                                     const std::string& address = "");

}  // namespace sambay

#endif  // SAMBAY_WORKER_STATE_PUSH_H_
