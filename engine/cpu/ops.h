// Small elementwise and normalization ops of the CPU backend (fp32 in, fp32 out).
//
// Stateless and thread-safe. Row ops take [rows, dim] row-major buffers.
#ifndef SAMBAY_ENGINE_CPU_OPS_H_
#define SAMBAY_ENGINE_CPU_OPS_H_

#include <cmath>
#include <cstdint>

namespace sambay::cpu {

inline float Silu(float x) { return x / (1.0f + std::exp(-x)); }

// softplus(v) = log(1 + exp(v)); returns v for v > 20 like the reference CUDA/Triton kernels.
inline float Softplus(float v) { return v > 20.0f ? v : std::log1p(std::exp(v)); }

// y = (x - mean) / sqrt(var + eps) * w + b per row; biased variance; statistics in double.
void LayerNorm(const float* x, int64_t rows, int64_t dim, const float* w, const float* b,
               double eps, float* y);

// In place: x = x / sqrt(mean(x^2) + eps) * w * scale, one row of `dim`.
void RmsNormScaled(float* x, int64_t dim, const float* w, double eps, float scale);

// out[r, j] = up[r, j] * silu(gate[r, j]) with gate = in[r, 0:n], up = in[r, n:2n].
void SwiGluRows(const float* in, int64_t rows, int64_t n, float* out);

}  // namespace sambay::cpu

#endif  // SAMBAY_ENGINE_CPU_OPS_H_
