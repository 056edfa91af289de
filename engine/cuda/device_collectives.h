// DeviceCollectives: the collectives a tensor-parallel CudaModel rank enqueues inside its forward
// pass (docs/design.md "Tensor parallelism"): fp32 all-reduce of the row-parallel partial sums and
// fp32 all-gather of the vocabulary-parallel logits. Unlike engine/tp/communicator.h, the calls
// only enqueue on the given stream (no host synchronization), so they order after the kernels that
// produced the buffers and can be captured into a CUDA graph.
//
// Production: NcclCommunicator (engine/tp/nccl_communicator.h), one GPU per rank. Tests may
// supply another implementation (tests/cuda/host_collectives.h runs several ranks on one GPU).
//
// Ownership: the caller (CudaGroup) owns each rank's object and keeps it alive as long as the
// rank's CudaModel. Thread-safety: one thread per rank object; ranks call concurrently, every
// rank the same collectives in the same order with the same counts.
#ifndef SAMBAY_ENGINE_CUDA_DEVICE_COLLECTIVES_H_
#define SAMBAY_ENGINE_CUDA_DEVICE_COLLECTIVES_H_

#include <cuda_runtime_api.h>

#include <cstddef>

#include "absl/status/status.h"

namespace sambay::cuda {

class DeviceCollectives {
 public:
  virtual ~DeviceCollectives() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place, device memory: buf[count] <- sum over ranks of buf[count]. Every rank receives
  // the same bits.
  virtual absl::Status EnqueueAllReduceSumF32(float* buf, size_t count, cudaStream_t stream) = 0;
  // Device memory: out[size() * count] <- each rank's in[count], in rank order.
  virtual absl::Status EnqueueAllGatherF32(const float* in, float* out, size_t count,
                                           cudaStream_t stream) = 0;
  // Makes collectives pending on any rank of the group fail or return instead of waiting for a
  // rank that will never arrive (a rank failed mid-pass). The group is unusable afterwards.
  // Thread-safe; may be called from any thread, more than once.
  virtual void Abort() = 0;
};

}  // namespace sambay::cuda

#endif  // SAMBAY_ENGINE_CUDA_DEVICE_COLLECTIVES_H_
