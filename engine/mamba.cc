#include "engine/mamba.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "engine/cpu/ops.h"
#include "engine/cpu/precision.h"
#include "engine/cpu/vec.h"

namespace sambay {

void MambaForward(const ModelConfig& c, int layer, const MambaWeights& w,
                  absl::Span<const SegmentPlan> segs, const float* u, int64_t rows, float* out,
                  float* memory, ThreadPool& pool,
                  const std::function<void(float* data, int64_t count)>& reduce_xdbl) {
  const int64_t di = c.d_inner;
  const int64_t K = c.d_conv;
  const int64_t S = c.d_state;
  const int64_t R = c.dt_rank;
  const int64_t xpd = c.x_proj_dim();

  // 1. xz = in_proj(u): x = xz[:, 0:di], z = xz[:, di:2di].
  std::vector<float> xz(rows * 2 * di);
  cpu::Linear(w.in_proj, u, rows, xz.data(), pool);
  cpu::RoundBf16IfEmulating(xz.data(), rows * 2 * di);  // the GPU stores xz in bf16

  // 2. Causal depthwise conv + SiLU, per channel over each segment's tokens; conv state holds
  //    the K-1 x vectors before the segment (row 0 oldest).
  std::vector<float> xc(rows * di);
  pool.ParallelFor(di, 64, [&](int64_t c0, int64_t c1) {
    for (const SegmentPlan& s : segs) {
      float* conv = s.state->mamba[layer].conv.data();  // [K-1, di]
      for (int64_t t = 0; t < s.len; ++t) {
        float* yt = xc.data() + (s.row0 + t) * di;
        for (int64_t ch = c0; ch < c1; ++ch) {
          const float* wc = w.conv_w.data() + ch * K;
          float acc = w.conv_b[ch];
          for (int64_t k = 0; k < K; ++k) {
            const int64_t src = t - (K - 1) + k;  // token index within the segment
            const float v = src >= 0 ? xz[(s.row0 + src) * 2 * di + ch] : conv[(t + k) * di + ch];
            acc += wc[k] * v;
          }
          yt[ch] = cpu::Silu(acc);
        }
      }
      // New conv state: the last K-1 x vectors of (old state ++ segment).
      for (int64_t j = 0; j < K - 1; ++j) {
        const int64_t src = s.len - (K - 1) + j;  // index in the segment; < 0 -> old state row
        for (int64_t ch = c0; ch < c1; ++ch) {
          conv[j * di + ch] =
              src >= 0 ? xz[(s.row0 + src) * 2 * di + ch] : conv[(j + s.len) * di + ch];
        }
      }
    }
  });

  cpu::RoundBf16IfEmulating(xc.data(), rows * di);  // bf16 on the GPU, read by the scan too

  // 3. x_dbl = x_proj(xc) -> dt_low | B | C; 4. delta = softplus(dt_proj(dt_low) + bias).
  std::vector<float> xdbl(rows * xpd);
  cpu::Linear(w.x_proj, xc.data(), rows, xdbl.data(), pool);
  if (reduce_xdbl) reduce_xdbl(xdbl.data(), rows * xpd);
  cpu::RoundBf16IfEmulating(xdbl.data(), rows * xpd);  // bf16 on the GPU (after the TP sum)
  std::vector<float> dt_low(rows * R);
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dt_low.data() + r * R, xdbl.data() + r * xpd, R * sizeof(float));
  }
  std::vector<float> delta(rows * di);
  cpu::Linear(w.dt_proj, dt_low.data(), rows, delta.data(), pool);
  for (int64_t r = 0; r < rows; ++r) {
    float* d = delta.data() + r * di;
    for (int64_t ch = 0; ch < di; ++ch) d[ch] = cpu::Softplus(d[ch] + w.dt_bias[ch]);
  }

  // 5-6. Selective scan, sequential over tokens, parallel over channels.
  std::vector<float> y(rows * di);
  pool.ParallelFor(di, 32, [&](int64_t c0, int64_t c1) {
    for (const SegmentPlan& s : segs) {
      float* h = s.state->mamba[layer].ssm.data();
      for (int64_t t = 0; t < s.len; ++t) {
        const int64_t r = s.row0 + t;
        const float* B = xdbl.data() + r * xpd + R;
        const float* C = B + S;
        cpu::ScanStep(c0, c1, S, delta.data() + r * di, w.A.data(), B, C, w.D.data(),
                      xc.data() + r * di, h, y.data() + r * di);
      }
    }
  });
  if (memory != nullptr) {
    std::memcpy(memory, y.data(), y.size() * sizeof(float));
    cpu::RoundBf16IfEmulating(memory, static_cast<int64_t>(y.size()));  // bf16 on the GPU
  }

  // 7. Gate with silu(z); 8. out_proj.
  for (int64_t r = 0; r < rows; ++r) {
    float* yr = y.data() + r * di;
    const float* z = xz.data() + r * 2 * di + di;
    for (int64_t ch = 0; ch < di; ++ch) yr[ch] *= cpu::Silu(z[ch]);
  }
  cpu::Linear(w.out_proj, y.data(), rows, out, pool);
}

}  // namespace sambay
