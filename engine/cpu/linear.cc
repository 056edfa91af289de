#include "engine/cpu/linear.h"

#include <cblas.h>

#include <algorithm>
#include <vector>

#include "engine/cpu/precision.h"
#include "engine/cpu/vec.h"

namespace sambay::cpu {

namespace {
thread_local bool t_batch_invariant = false;
}  // namespace

ScopedBatchInvariant::ScopedBatchInvariant(bool on) : previous_(t_batch_invariant) {
  t_batch_invariant = on;
}
ScopedBatchInvariant::~ScopedBatchInvariant() { t_batch_invariant = previous_; }

void SetBlasThreads(int n) { openblas_set_num_threads(std::max(1, n)); }

void Linear(const WeightView& w, const float* x, int64_t rows, float* y, ThreadPool& pool,
            const float* bias, int64_t ldy) {
  if (ldy == 0) ldy = w.rows;
  const int64_t out = w.rows;
  const int64_t in = w.cols;
  if (rows <= 0 || out <= 0) return;
  // GPU-precision emulation (precision.h): the GEMM input is rounded to bf16, as cuBLASLt's is.
  thread_local std::vector<float> rounded;
  if (Bf16Activations()) {
    rounded.assign(x, x + rows * in);
    RoundBf16IfEmulating(rounded.data(), rows * in);
    x = rounded.data();
  }
  if (rows <= kGemvMaxRows || t_batch_invariant) {
    // Grain: at least ~64 KiB of weights per chunk so small layers do not pay for threading.
    const int64_t row_bytes = in * DTypeSize(w.dtype);
    const int64_t grain = std::max<int64_t>(2, (64 << 10) / std::max<int64_t>(1, row_bytes));
    pool.ParallelFor(out, grain, [&](int64_t o0, int64_t o1) {
      GemvRows(w.dtype, w.data, in, o0, o1, x, rows, y, ldy);
    });
  } else if (w.dtype == DType::kF32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(rows),
                static_cast<blasint>(out), static_cast<blasint>(in), 1.0f, x,
                static_cast<blasint>(in), static_cast<const float*>(w.data),
                static_cast<blasint>(in), 0.0f, y, static_cast<blasint>(ldy));
  } else {
    // Block of output rows widened to fp32: about 4 MiB, at least 16 rows.
    const int64_t block = std::max<int64_t>(16, (4 << 20) / (4 * in));
    std::vector<float> wide(static_cast<size_t>(std::min(block, out) * in));
    for (int64_t b0 = 0; b0 < out; b0 += block) {
      const int64_t b1 = std::min(out, b0 + block);
      pool.ParallelFor(b1 - b0, 8, [&](int64_t r0, int64_t r1) {
        WidenRows(w.dtype, w.data, in, b0 + r0, b0 + r1, wide.data() + r0 * in);
      });
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(rows),
                  static_cast<blasint>(b1 - b0), static_cast<blasint>(in), 1.0f, x,
                  static_cast<blasint>(in), wide.data(), static_cast<blasint>(in), 0.0f, y + b0,
                  static_cast<blasint>(ldy));
    }
  }
  if (bias != nullptr) {
    for (int64_t r = 0; r < rows; ++r) {
      float* yr = y + r * ldy;
      for (int64_t o = 0; o < out; ++o) yr[o] += bias[o];
    }
  }
}

}  // namespace sambay::cpu
