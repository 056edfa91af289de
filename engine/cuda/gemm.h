// bf16 GEMM with fp32 accumulation: y = x W^T (+ beta y), the Linear layer of the CUDA backend
// (W [N, K] row-major as in the checkpoint): cuBLASLt, or for decode-sized M the engine's GEMV
// kernel (kernels.h LaunchGemv).
//
// x bf16 [M, K] with row stride lda; W bf16 [N, K] (row stride K); y [M, N] with row stride
// ldy, bf16 or fp32. beta = 1 (fp32 output only) accumulates into y: used to add a mixer's
// output straight into the fp32 residual stream.
//
// GemmCache keeps the cuBLASLt descriptors and the chosen algorithm per shape, so a decode step
// pays the heuristic query once. Ownership: a cache owns its descriptors. Thread-safety: a cache
// is used by one thread at a time (like the CudaContext it runs on).
#ifndef SAMBAY_ENGINE_CUDA_GEMM_H_
#define SAMBAY_ENGINE_CUDA_GEMM_H_

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "absl/status/status.h"
#include "engine/cuda/cuda_util.h"
#include "engine/cuda/kernels.h"

namespace sambay::cuda {

enum class GemmOut { kBf16, kF32 };

// Gemm runs one row (batch-1 decode) with at least this many output columns on the engine's
// GEMV kernel instead of cuBLASLt (no split-K partials and reduce launch). With more rows
// cuBLASLt's tensor-core tiles win: the GEMV at 8 rows made the H200 decode step at
// concurrency 8 1.8x slower (docs/benchmarks.md, 2026-12-04).
inline constexpr int64_t kGemvMinColumns = 1024;

struct GemmArgs {
  const bf16* x = nullptr;
  int64_t lda = 0;  // 0 = K
  int64_t M = 0;
  int64_t K = 0;
  const bf16* w = nullptr;
  int64_t N = 0;
  void* y = nullptr;
  GemmOut out = GemmOut::kBf16;
  int64_t ldy = 0;    // 0 = N
  float beta = 0.0f;  // 0 or 1; 1 needs GemmOut::kF32
};

class GemmCache {
 public:
  GemmCache();
  ~GemmCache();
  GemmCache(const GemmCache&) = delete;
  GemmCache& operator=(const GemmCache&) = delete;

  struct Plan;
  // Key: M, N, K, lda, ldy, out type, accumulate, alignment of x / w / y.
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, int, int>;
  std::map<Key, std::unique_ptr<Plan>>& plans() { return plans_; }

 private:
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

// Validates (InvalidArgument naming the argument) and enqueues on ctx.stream().
absl::Status Gemm(CudaContext& ctx, GemmCache& cache, const GemmArgs& a);

}  // namespace sambay::cuda

#endif  // SAMBAY_ENGINE_CUDA_GEMM_H_
