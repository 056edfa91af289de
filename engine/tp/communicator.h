// Communicator: the collectives a tensor-parallel group needs (docs/design.md "Tensor
// parallelism").
//
// One Communicator object per rank. All ranks of a group call the same collectives in the same
// order with the same sizes (a broken order is an internal invariant violation, not request
// input). Two implementations:
//   - engine/tp/cpu_communicator.h: ranks are threads of one process, shared memory.
//   - engine/tp/nccl_communicator.h (built with CUDA): NCCL, one thread per GPU rank; the
//     buffers are device pointers and the calls are enqueued on the rank's CUDA stream.
// Reductions are deterministic for a fixed group size (same inputs -> same bits).
//
// Ownership: a rank's Communicator is owned by the thread/rank that uses it; the group's shared
// part is owned jointly (shared_ptr) by its ranks.
// Thread-safety: one thread per Communicator; different ranks call concurrently.
#ifndef SAMBAY_ENGINE_TP_COMMUNICATOR_H_
#define SAMBAY_ENGINE_TP_COMMUNICATOR_H_

#include <cstddef>

#include "absl/status/status.h"

namespace sambay {

enum class CommDtype { kF32, kBF16 };

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place: buf[count] <- sum over ranks of buf[count].
  virtual absl::Status AllReduceSum(void* buf, size_t count, CommDtype dtype) = 0;
  // out[size() * count] <- concatenation, in rank order, of each rank's in[count].
  virtual absl::Status AllGather(const void* in, void* out, size_t count, CommDtype dtype) = 0;
  // buf[count] on every rank <- buf[count] of `root`.
  virtual absl::Status Broadcast(void* buf, size_t count, CommDtype dtype, int root) = 0;
  virtual absl::Status Barrier() = 0;
};

}  // namespace sambay

#endif  // SAMBAY_ENGINE_TP_COMMUNICATOR_H_
