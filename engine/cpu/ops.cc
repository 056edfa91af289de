#include "engine/cpu/ops.h"

#include <vector>

#include "engine/cpu/precision.h"

namespace sambay::cpu {

void LayerNorm(const float* x, int64_t rows, int64_t dim, const float* w, const float* b,
               double eps, float* y) {
  std::vector<float> rounded;  // GPU-precision emulation: the input row rounded to bf16
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    if (Bf16Activations()) {
      rounded.assign(xr, xr + dim);
      RoundBf16IfEmulating(rounded.data(), dim);
      xr = rounded.data();
    }
    float* yr = y + r * dim;
    double sum = 0;
    for (int64_t i = 0; i < dim; ++i) sum += xr[i];
    const double mean = sum / static_cast<double>(dim);
    double var = 0;
    for (int64_t i = 0; i < dim; ++i) {
      const double d = xr[i] - mean;
      var += d * d;
    }
    var /= static_cast<double>(dim);
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int64_t i = 0; i < dim; ++i) {
      yr[i] = static_cast<float>((xr[i] - mean) * inv) * w[i] + b[i];
    }
    RoundBf16IfEmulating(yr, dim);
  }
}

void RmsNormScaled(float* x, int64_t dim, const float* w, double eps, float scale) {
  double ss = 0;
  for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(dim) + eps));
  for (int64_t i = 0; i < dim; ++i) x[i] = x[i] * inv * w[i] * scale;
}

void SwiGluRows(const float* in, int64_t rows, int64_t n, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = in + r * 2 * n;
    const float* u = g + n;
    float* o = out + r * n;
    for (int64_t j = 0; j < n; ++j) o[j] = u[j] * Silu(g[j]);
  }
}

}  // namespace sambay::cpu
