// SIMD kernels for the CPU backend (Highway, dispatched at run time to the best target the CPU
// supports: AVX-512, AVX2, SSE4, or scalar).
//
// All functions are stateless and thread-safe; callers split work across threads themselves.
// Weights are read in their checkpoint dtype (F32, BF16, F16) and widened to fp32 in registers;
// all arithmetic and accumulation is fp32.
#ifndef SAMBAY_ENGINE_CPU_VEC_H_
#define SAMBAY_ENGINE_CPU_VEC_H_

#include <cstdint>

#include "engine/dtype.h"

namespace sambay::cpu {

// sum_i a[i] * b[i].
float Dot(const float* a, const float* b, int64_t n);

// y[i] += alpha * x[i].
void Axpy(float alpha, const float* x, float* y, int64_t n);

// For output rows o in [o0, o1) of a weight matrix w [*, in] (row-major, dtype wt) and input
// rows r in [0, rows) of x [rows, in]:  y[r * ldy + o] = sum_i w[o, i] * x[r, i].
// Reads each weight row once per group of 8 input rows: meant for small `rows` (decode).
void GemvRows(DType wt, const void* w, int64_t in, int64_t o0, int64_t o1, const float* x,
              int64_t rows, float* y, int64_t ldy);

// dst[(o - o0) * in + i] = float(w[o, i]) for o in [o0, o1).
void WidenRows(DType wt, const void* w, int64_t in, int64_t o0, int64_t o1, float* dst);

// One token of the Mamba-1 selective scan for channels [c0, c1) (docs/model-spec.md "Mamba-1
// mixer" step 6):
//   dA = exp(delta[c] * A[c, n]);  h[c, n] = dA * h[c, n] + delta[c] * B[n] * x[c]
//   y[c] = sum_n C[n] * h[c, n] + D[c] * x[c]
// h and A are [channels, d_state] row-major; delta, x, D, y are per channel.
void ScanStep(int64_t c0, int64_t c1, int64_t d_state, const float* delta, const float* A,
              const float* B, const float* C, const float* D, const float* x, float* h, float* y);

}  // namespace sambay::cpu

#endif  // SAMBAY_ENGINE_CPU_VEC_H_
