// NcclCommunicator: the Communicator (engine/tp/communicator.h) of a tensor-parallel group of
// GPUs in one process, over NCCL.
//
// One rank per GPU, one thread per rank: rank i runs on devices[i] and enqueues its collectives
// on its own CUDA stream; buffers are device pointers on that device. Each collective then
// waits for its stream, so on return the result is in `buf` / `out` (the same contract as the
// CPU communicator). Reductions: NCCL ring/tree sums are deterministic for a fixed group size
// and topology. As cuda::DeviceCollectives (engine/cuda/device_collectives.h) it also enqueues
// collectives on a caller's stream without waiting: the tensor-parallel CudaModel's forward.
//
// Built only with CUDA and NCCL (SAMBAY_HAVE_NCCL); the .cc compiles to nothing otherwise.
// Ownership: each rank's object owns its ncclComm_t and stream. Thread-safety: one thread per
// rank object; different ranks are called concurrently from their own threads.
#ifndef SAMBAY_ENGINE_TP_NCCL_COMMUNICATOR_H_
#define SAMBAY_ENGINE_TP_NCCL_COMMUNICATOR_H_

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/cuda/device_collectives.h"
#include "engine/tp/communicator.h"

namespace sambay {

class NcclCommunicator : public Communicator, public cuda::DeviceCollectives {
 public:
  // Creates one communicator per device (ncclCommInitAll), rank i on devices[i]. Errors:
  // InvalidArgument for an empty list, a repeated or absent device; Internal for NCCL errors.
  static absl::StatusOr<std::vector<std::unique_ptr<NcclCommunicator>>> CreateGroup(
      const std::vector<int>& devices);

  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int device() const { return device_; }
  // The stream collectives are enqueued on: the rank's own, or the one given to SetStream.
  cudaStream_t stream() const { return user_stream_ != nullptr ? user_stream_ : stream_; }
  // Enqueues later collectives on `s` (not owned; on device()), e.g. the model's stream, so
  // they are ordered after the kernels that produced the buffers. nullptr: the rank's own.
  void SetStream(cudaStream_t s) { user_stream_ = s; }

  absl::Status AllReduceSum(void* buf, size_t count, CommDtype dtype) override;
  absl::Status AllGather(const void* in, void* out, size_t count, CommDtype dtype) override;
  absl::Status Broadcast(void* buf, size_t count, CommDtype dtype, int root) override;
  absl::Status Barrier() override;

  // DeviceCollectives: enqueue on `stream` (on device()) and return; no synchronization.
  absl::Status EnqueueAllReduceSumF32(float* buf, size_t count, cudaStream_t stream) override;
  absl::Status EnqueueAllGatherF32(const float* in, float* out, size_t count,
                                   cudaStream_t stream) override;
  // ncclCommAbort of this rank's communicator (once); later calls fail.
  void Abort() override;

 private:
  NcclCommunicator(int rank, int size, int device, ncclComm_t comm, cudaStream_t stream,
                   void* barrier_buf)
      : rank_(rank),
        size_(size),
        device_(device),
        comm_(comm),
        stream_(stream),
        barrier_buf_(barrier_buf) {}
  absl::Status Finish(ncclResult_t r, const char* what);

  int rank_;
  int size_;
  int device_;
  ncclComm_t comm_;
  cudaStream_t stream_;
  cudaStream_t user_stream_ = nullptr;
  void* barrier_buf_;  // one float on device_, for Barrier
  std::once_flag abort_once_;
  std::atomic<bool> aborted_{false};
};

}  // namespace sambay

#endif  // SAMBAY_ENGINE_TP_NCCL_COMMUNICATOR_H_
