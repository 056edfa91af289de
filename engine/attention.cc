#include "engine/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/cpu/ops.h"
#include "engine/cpu/precision.h"
#include "engine/cpu/vec.h"

namespace sambay {
namespace {

// RMSNorm eps of subln (docs/model-spec.md "Differential attention core").
constexpr double kSublnEps = 1e-5;

// One stripe: softmax over q.k (scaled) of n keys, applied to 2*hd-wide values. o: [2 hd].
void AttendStripe(const float* q, const float* const* k_rows, int64_t k_off,
                  const float* const* v_rows, int64_t v_off, int64_t n, int64_t hd, float scale,
                  float* scores, float* o) {
  float m = -INFINITY;
  for (int64_t t = 0; t < n; ++t) {
    scores[t] = scale * cpu::Dot(q, k_rows[t] + k_off, hd);
    m = std::max(m, scores[t]);
  }
  float sum = 0;
  for (int64_t t = 0; t < n; ++t) {
    scores[t] = std::exp(scores[t] - m);
    sum += scores[t];
  }
  std::memset(o, 0, 2 * hd * sizeof(float));
  for (int64_t t = 0; t < n; ++t) cpu::Axpy(scores[t], v_rows[t] + v_off, o, 2 * hd);
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < 2 * hd; ++i) o[i] *= inv;
}

}  // namespace

void DiffAttendRow(const ModelConfig& c, const AttentionWeights& w, const float* q,
                   const float* const* k_rows, const float* const* v_rows, int64_t n, int pair,
                   float* out, float* scratch) {
  const int64_t hd = c.head_dim;
  const int64_t j = pair / (c.num_heads / c.num_kv_heads);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  float* a = scratch + n;  // [2 hd]
  float* b = a + 2 * hd;   // [2 hd]
  AttendStripe(q + (2 * pair) * hd, k_rows, (2 * j) * hd, v_rows, (2 * j) * hd, n, hd, scale,
               scratch, a);
  AttendStripe(q + (2 * pair + 1) * hd, k_rows, (2 * j + 1) * hd, v_rows, (2 * j) * hd, n, hd,
               scale, scratch, b);
  float* dst = out + pair * 2 * hd;
  for (int64_t i = 0; i < 2 * hd; ++i) dst[i] = a[i] - w.lambda * b[i];
  cpu::RmsNormScaled(dst, 2 * hd, w.subln.data(), kSublnEps, 1.0f - w.lambda_init);
}

void SelfAttentionForward(const ModelConfig& c, int layer, const AttentionWeights& w,
                          absl::Span<const SegmentPlan> segs, const float* u, int64_t rows,
                          float* out, ThreadPool& pool) {
  const bool global = c.layers[layer] == LayerKind::kGlobal;
  const int64_t qd = c.q_dim();
  const int64_t kvd = c.kv_dim();
  const int64_t ld = qd + 2 * kvd;
  const int64_t hd = c.head_dim;
  const int64_t pairs = c.num_heads / 2;
  const int64_t W = c.sliding_window;

  std::vector<float> qkv(rows * ld);
  cpu::Linear(w.wqkv, u, rows, qkv.data(), pool, w.wqkv_bias.data());
  cpu::RoundBf16IfEmulating(qkv.data(), rows * ld);  // Q/K/V are bf16 on the GPU

  // Per segment: row pointers to K/V for positions lo .. start+len-1.
  struct Keys {
    int64_t lo = 0;
    std::vector<const float*> k, v;
  };
  std::vector<Keys> keys(segs.size());
  int64_t max_keys = 0;
  for (size_t si = 0; si < segs.size(); ++si) {
    const SegmentPlan& s = segs[si];
    Keys& ks = keys[si];
    const int64_t end = s.start + s.len;
    if (global) {
      BlockKv& kv = s.state->global;
      kv.Resize(end);
      for (int64_t t = 0; t < s.len; ++t) {
        const float* row = qkv.data() + (s.row0 + t) * ld;
        std::memcpy(kv.k(s.start + t), row + qd, kvd * sizeof(float));
        std::memcpy(kv.v(s.start + t), row + qd + kvd, kvd * sizeof(float));
      }
      ks.lo = 0;
      for (int64_t p = 0; p < end; ++p) {
        ks.k.push_back(kv.k(p));
        ks.v.push_back(kv.v(p));
      }
    } else {
      const RingKv& ring = s.state->swa[layer];
      ks.lo = std::max<int64_t>(0, s.start - (W - 1));
      for (int64_t p = ks.lo; p < end; ++p) {
        if (p < s.start) {
          ks.k.push_back(ring.k.data() + (p % W) * kvd);
          ks.v.push_back(ring.v.data() + (p % W) * kvd);
        } else {
          const float* row = qkv.data() + (s.row0 + p - s.start) * ld;
          ks.k.push_back(row + qd);
          ks.v.push_back(row + qd + kvd);
        }
      }
    }
    max_keys = std::max<int64_t>(max_keys, static_cast<int64_t>(ks.k.size()));
  }

  // Tasks: (segment, token, pair), flattened.
  std::vector<int64_t> task0(segs.size() + 1, 0);
  for (size_t si = 0; si < segs.size(); ++si) task0[si + 1] = task0[si] + segs[si].len * pairs;
  std::vector<float> attn(rows * qd);
  const int64_t scratch_size = max_keys + 4 * hd;
  pool.ParallelFor(task0.back(), 1, [&](int64_t b, int64_t e) {
    std::vector<float> scratch(scratch_size);
    size_t si = std::upper_bound(task0.begin(), task0.end(), b) - task0.begin() - 1;
    for (int64_t task = b; task < e; ++task) {
      while (task >= task0[si + 1]) ++si;
      const SegmentPlan& s = segs[si];
      const Keys& ks = keys[si];
      const int64_t t = (task - task0[si]) / pairs;
      const int pair = static_cast<int>((task - task0[si]) % pairs);
      const int64_t p = s.start + t;
      const int64_t first = global ? 0 : std::max<int64_t>(0, p - (W - 1));
      const int64_t n = p - first + 1;
      const int64_t r = s.row0 + t;
      DiffAttendRow(c, w, qkv.data() + r * ld, ks.k.data() + (first - ks.lo),
                    ks.v.data() + (first - ks.lo), n, pair, attn.data() + r * qd, scratch.data());
    }
  });

  // SWA: the last min(len, W) new tokens go into the ring.
  if (!global) {
    for (const SegmentPlan& s : segs) {
      RingKv& ring = s.state->swa[layer];
      for (int64_t t = std::max<int64_t>(0, s.len - W); t < s.len; ++t) {
        const float* row = qkv.data() + (s.row0 + t) * ld;
        const int64_t slot = (s.start + t) % W;
        std::memcpy(ring.k.data() + slot * kvd, row + qd, kvd * sizeof(float));
        std::memcpy(ring.v.data() + slot * kvd, row + qd + kvd, kvd * sizeof(float));
      }
    }
  }
  cpu::Linear(w.out_proj, attn.data(), rows, out, pool, w.out_bias.data());
}

void CrossAttentionForward(const ModelConfig& c, const AttentionWeights& w,
                           absl::Span<const CrossRow> rows, const float* u, float* out,
                           ThreadPool& pool) {
  const int64_t n_rows = static_cast<int64_t>(rows.size());
  const int64_t qd = c.q_dim();
  const int64_t hd = c.head_dim;
  const int64_t pairs = c.num_heads / 2;
  std::vector<float> q(n_rows * qd);
  cpu::Linear(w.wqkv, u, n_rows, q.data(), pool, w.wqkv_bias.data());
  cpu::RoundBf16IfEmulating(q.data(), n_rows * qd);
  std::vector<float> attn(n_rows * qd);
  pool.ParallelFor(n_rows * pairs, 1, [&](int64_t b, int64_t e) {
    std::vector<const float*> k, v;
    std::vector<float> scratch;
    int64_t cached_row = -1;
    for (int64_t task = b; task < e; ++task) {
      const int64_t r = task / pairs;
      const int pair = static_cast<int>(task % pairs);
      const CrossRow& cr = rows[r];
      const int64_t n = cr.pos + 1;
      if (cached_row != r) {
        k.resize(n);
        v.resize(n);
        for (int64_t p = 0; p < n; ++p) {
          k[p] = cr.state->global.k(p);
          v[p] = cr.state->global.v(p);
        }
        scratch.resize(n + 4 * hd);
        cached_row = r;
      }
      DiffAttendRow(c, w, q.data() + r * qd, k.data(), v.data(), n, pair, attn.data() + r * qd,
                    scratch.data());
    }
  });
  cpu::Linear(w.out_proj, attn.data(), n_rows, out, pool, w.out_bias.data());
}

}  // namespace sambay
