// Test support: DeviceCollectives for ranks that share one GPU (NCCL refuses two ranks on one
// device), so the tensor-parallel CUDA forward can be checked on a one-GPU machine. Each call
// synchronizes the rank's stream, meets the other ranks at a host barrier, and combines the
// ranks' device buffers through host memory in rank order (every rank gets the same bits).
// Slow and not capturable into a CUDA graph: for tests only, never for serving.
//
// A rank can be told to fail its k-th collective (fail_rank / fail_at), to test how a group
// survives a rank that errors mid-pass.
//
// Ownership: the ranks share one HostGroup (shared_ptr). Thread-safety: one thread per rank
// object; Abort from any thread.
#ifndef SAMBAY_TESTS_CUDA_HOST_COLLECTIVES_H_
#define SAMBAY_TESTS_CUDA_HOST_COLLECTIVES_H_

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/cuda/device_collectives.h"

namespace sambay::cuda::testing {

struct HostGroup {
  explicit HostGroup(int n) : size(n), ptrs(static_cast<size_t>(n), nullptr) {}
  const int size;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t phase = 0;
  bool aborted = false;
  std::vector<const void*> ptrs;
  int fail_rank = -1;  // this rank's fail_at-th collective (0-based) returns Internal
  int64_t fail_at = -1;

  // False when the group was aborted (before or while waiting).
  bool Barrier() {
    std::unique_lock<std::mutex> lock(mu);
    if (aborted) return false;
    const uint64_t my_phase = phase;
    if (++arrived == size) {
      arrived = 0;
      ++phase;
      cv.notify_all();
      return true;
    }
    cv.wait(lock, [&] { return aborted || phase != my_phase; });
    return !aborted;
  }
};

class HostCollectives final : public DeviceCollectives {
 public:
  HostCollectives(std::shared_ptr<HostGroup> g, int rank) : g_(std::move(g)), rank_(rank) {}

  // One object per rank of a new group of n.
  static std::vector<std::unique_ptr<DeviceCollectives>> MakeGroup(
      int n, std::shared_ptr<HostGroup>* group = nullptr) {
    auto g = std::make_shared<HostGroup>(n);
    std::vector<std::unique_ptr<DeviceCollectives>> out;
    for (int r = 0; r < n; ++r) out.push_back(std::make_unique<HostCollectives>(g, r));
    if (group != nullptr) *group = g;
    return out;
  }

  int rank() const override { return rank_; }
  int size() const override { return g_->size; }

  absl::Status EnqueueAllReduceSumF32(float* buf, size_t count, cudaStream_t stream) override {
    absl::Status s = Enter(buf, stream);
    if (!s.ok()) return s;
    std::vector<float> sum(count, 0.0f), part(count);
    for (int r = 0; r < g_->size && s.ok(); ++r) {
      s = Cuda(cudaMemcpy(part.data(), g_->ptrs[r], count * 4, cudaMemcpyDeviceToHost));
      for (size_t i = 0; i < count; ++i) sum[i] += part[i];
    }
    if (!g_->Barrier()) return absl::AbortedError("host collectives aborted");  // all have read
    if (s.ok()) s = Cuda(cudaMemcpy(buf, sum.data(), count * 4, cudaMemcpyHostToDevice));
    return s;
  }

  absl::Status EnqueueAllGatherF32(const float* in, float* out, size_t count,
                                   cudaStream_t stream) override {
    absl::Status s = Enter(in, stream);
    if (!s.ok()) return s;
    for (int r = 0; r < g_->size && s.ok(); ++r) {
      s = Cuda(cudaMemcpy(out + r * count, g_->ptrs[r], count * 4, cudaMemcpyDeviceToDevice));
    }
    if (!g_->Barrier()) return absl::AbortedError("host collectives aborted");
    return s;
  }

  void Abort() override {
    std::lock_guard<std::mutex> lock(g_->mu);
    g_->aborted = true;
    g_->cv.notify_all();
  }

  int64_t calls() const { return calls_; }

 private:
  static absl::Status Cuda(cudaError_t e) {
    if (e == cudaSuccess) return absl::OkStatus();
    return absl::InternalError(cudaGetErrorString(e));
  }
  // The rank's buffer is ready (stream drained) and published; every rank has arrived.
  absl::Status Enter(const void* buf, cudaStream_t stream) {
    if (rank_ == g_->fail_rank && calls_ == g_->fail_at) {
      ++calls_;
      return absl::InternalError(absl::StrCat("injected failure on rank ", rank_));
    }
    ++calls_;
    absl::Status s = Cuda(cudaStreamSynchronize(stream));
    if (!s.ok()) return s;
    {
      std::lock_guard<std::mutex> lock(g_->mu);
      g_->ptrs[rank_] = buf;
    }
    if (!g_->Barrier()) return absl::AbortedError("host collectives aborted");
    return absl::OkStatus();
  }

  std::shared_ptr<HostGroup> g_;
  const int rank_;
  int64_t calls_ = 0;
};

}  // namespace sambay::cuda::testing

#endif  // SAMBAY_TESTS_CUDA_HOST_COLLECTIVES_H_
