// Linear layers on the CPU: y = x W^T (+ b) with W [out, in] in its checkpoint dtype.
//
// Few rows (decode, <= kGemvMaxRows): a Highway GEMV that streams each weight row once and
// widens it in registers, split over the thread pool by output rows (memory-bound path).
// Many rows (prefill): OpenBLAS sgemm; BF16/F16 weights are widened to fp32 one block of output
// rows at a time (the block is reused by all rows, so the cost is amortized).
// Batch-invariant mode (ScopedBatchInvariant): every row goes through the GEMV kernels, whose
// per-row arithmetic does not depend on how many rows are in the call, so a decode row gives
// bit-identical results alone or in a batch of any size (docs/design.md "Same tokens on every
// path").
//
// Stateless; thread-safety: a call uses the pool's ParallelFor, so one call at a time per pool.
#ifndef SAMBAY_ENGINE_CPU_LINEAR_H_
#define SAMBAY_ENGINE_CPU_LINEAR_H_

#include <cstdint>

#include "common/thread_pool.h"
#include "engine/dtype.h"

namespace sambay::cpu {

// A 2-D weight matrix [rows, cols] living in the checkpoint mapping (not owned).
struct WeightView {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t bytes() const { return rows * cols * DTypeSize(dtype); }
};

inline constexpr int64_t kGemvMaxRows = 8;

// y[r, o] = sum_i x[r, i] * w[o, i] + (bias ? bias[o] : 0), r < rows, o < w.rows.
// x is [rows, w.cols] and y is [rows, ldy] (ldy >= w.rows; 0 means w.rows).
void Linear(const WeightView& w, const float* x, int64_t rows, float* y, ThreadPool& pool,
            const float* bias = nullptr, int64_t ldy = 0);

// While alive, Linear calls made on this thread use the GEMV kernels for any row count.
class ScopedBatchInvariant {
 public:
  explicit ScopedBatchInvariant(bool on);
  ~ScopedBatchInvariant();
  ScopedBatchInvariant(const ScopedBatchInvariant&) = delete;
  ScopedBatchInvariant& operator=(const ScopedBatchInvariant&) = delete;

 private:
  bool previous_;
};

// Sets the thread count of the BLAS library (call once at start-up).
void SetBlasThreads(int n);

}  // namespace sambay::cpu

#endif  // SAMBAY_ENGINE_CPU_LINEAR_H_
