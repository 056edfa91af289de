#include "engine/forward.h"

#include <cstring>
#include <functional>
#include <vector>

#include "engine/attention.h"
#include "engine/batch.h"
#include "engine/cpu/linear.h"
#include "engine/cpu/ops.h"
#include "engine/cpu/precision.h"
#include "engine/mamba.h"

namespace sambay {
namespace {

using Reduce = std::function<void(float* data, int64_t count)>;

// x[rows, h] += y[rows, h]
void AddInPlace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

// x[rows, n] += bias[n] per row.
void AddBias(float* x, int64_t rows, const std::vector<float>& bias) {
  const int64_t n = static_cast<int64_t>(bias.size());
  for (int64_t r = 0; r < rows; ++r) AddInPlace(x + r * n, bias.data(), n);
}

// SwiGLU MLP of one layer (docs/model-spec.md "MLP") added to the residual x [rows, hidden].
// `reduce` (TP) is applied to the fc2 output before the add.
void MlpResidual(const ModelConfig& c, const LayerWeights& l, float* x, int64_t rows,
                 ThreadPool& pool, const Reduce& reduce) {
  const int64_t h = c.hidden_size;
  const int64_t f = c.intermediate_size;
  std::vector<float> u(rows * h), g(rows * 2 * f), a(rows * f), o(rows * h);
  cpu::LayerNorm(x, rows, h, l.ln2_w.data(), l.ln2_b.data(), c.layer_norm_eps, u.data());
  cpu::Linear(l.fc1, u.data(), rows, g.data(), pool);
  cpu::RoundBf16IfEmulating(g.data(), rows * 2 * f);  // fc1's output is bf16 on the GPU
  cpu::SwiGluRows(g.data(), rows, f, a.data());
  cpu::Linear(l.fc2, a.data(), rows, o.data(), pool);
  if (reduce) reduce(o.data(), rows * h);
  AddInPlace(x, o.data(), rows * h);
}

// GMU (docs/model-spec.md "GMU"): out = out_proj(silu(in_proj(u)) * m).
void GmuForward(const ModelConfig& c, const GmuWeights& w, const float* u, const float* m,
                int64_t rows, float* out, ThreadPool& pool) {
  const int64_t di = c.d_inner;
  std::vector<float> g(rows * di);
  cpu::Linear(w.in_proj, u, rows, g.data(), pool);
  cpu::RoundBf16IfEmulating(g.data(), rows * di);
  for (int64_t i = 0; i < rows * di; ++i) g[i] = cpu::Silu(g[i]) * m[i];
  cpu::Linear(w.out_proj, g.data(), rows, out, pool);
}

// Embedding lookup into fp32 rows.
void Embed(const WeightView& e, absl::Span<const int32_t> ids, float* x) {
  const int64_t h = e.cols;
  const int64_t row_bytes = h * DTypeSize(e.dtype);
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto* src = static_cast<const unsigned char*>(e.data) + ids[i] * row_bytes;
    ConvertToF32(e.dtype, src, x + i * h, h);
  }
}

}  // namespace

absl::Status ForwardPass(const ModelConfig& c, const ModelWeights& weights, ThreadPool& pool,
                         absl::Span<const ForwardSegment> segments, float* logits,
                         const TpRank* tp) {
  const int64_t h = c.hidden_size;

  // Tensor parallelism: all-reduce of partial sums; the first error is kept (sticky) and the
  // pass runs to the end so every rank makes the same sequence of collective calls.
  absl::Status comm_status;
  Reduce reduce;
  if (tp != nullptr) {
    reduce = [&](float* data, int64_t count) {
      absl::Status s = tp->comm->AllReduceSum(data, static_cast<size_t>(count), CommDtype::kF32);
      if (!s.ok() && comm_status.ok()) comm_status = s;
    };
  }

  std::vector<SegmentPlan> plan(segments.size());
  int64_t rows = 0;
  bool all_single = true;
  for (size_t s = 0; s < segments.size(); ++s) {
    plan[s] = {segments[s].state, rows, static_cast<int64_t>(segments[s].tokens.size()),
               segments[s].state->num_tokens};
    rows += plan[s].len;
    all_single = all_single && plan[s].len == 1;
  }
  // A decode batch (one token per segment) is computed row by row with the same arithmetic as
  // a batch of one, so batching never changes a sequence's tokens.
  cpu::ScopedBatchInvariant batch_invariant(all_single);

  // Residual stream x [rows, h], fp32.
  std::vector<float> x(rows * h), u(rows * h), o(rows * h), mem(rows * c.d_inner);
  for (const SegmentPlan& p : plan) {
    Embed(weights.embed, segments[&p - plan.data()].tokens, x.data() + p.row0 * h);
  }

  // Self-decoder: every new token, state updated.
  for (int i = 0; i < c.first_cross_layer; ++i) {
    const LayerWeights& l = weights.layers[i];
    cpu::LayerNorm(x.data(), rows, h, l.ln1_w.data(), l.ln1_b.data(), c.layer_norm_eps, u.data());
    if (l.kind == LayerKind::kMamba) {
      MambaForward(c, i, l.mamba, plan, u.data(), rows, o.data(),
                   i == c.memory_layer ? mem.data() : nullptr, pool, reduce);
      if (tp != nullptr) reduce(o.data(), rows * h);
    } else {
      SelfAttentionForward(c, i, l.attn, plan, u.data(), rows, o.data(), pool);
      if (tp != nullptr) {
        reduce(o.data(), rows * h);
        AddBias(o.data(), rows, tp->logical->layers[i].attn.out_bias);
      }
    }
    AddInPlace(x.data(), o.data(), rows * h);
    MlpResidual(c, l, x.data(), rows, pool, reduce);
  }
  for (const SegmentPlan& p : plan) p.state->num_tokens += p.len;

  // Cross-decoder: only the rows whose logits are wanted (docs/model-spec.md "Prefill behaviour
  // (YOCO)").
  std::vector<int64_t> sel;
  std::vector<CrossRow> cross;
  for (size_t s = 0; s < plan.size(); ++s) {
    const SegmentPlan& p = plan[s];
    int64_t first = p.len;
    if (segments[s].logits == LogitsMode::kAll) first = 0;
    if (segments[s].logits == LogitsMode::kLast) first = p.len - 1;
    for (int64_t t = first; t < p.len; ++t) {
      sel.push_back(p.row0 + t);
      cross.push_back({p.state, p.start + t});
    }
  }
  const int64_t n = static_cast<int64_t>(sel.size());
  if (n == 0) return comm_status;
  std::vector<float> xs(n * h), ms(n * c.d_inner);
  for (int64_t r = 0; r < n; ++r) {
    std::memcpy(xs.data() + r * h, x.data() + sel[r] * h, h * sizeof(float));
    std::memcpy(ms.data() + r * c.d_inner, mem.data() + sel[r] * c.d_inner,
                c.d_inner * sizeof(float));
  }
  for (int i = c.first_cross_layer; i < c.num_layers; ++i) {
    const LayerWeights& l = weights.layers[i];
    cpu::LayerNorm(xs.data(), n, h, l.ln1_w.data(), l.ln1_b.data(), c.layer_norm_eps, u.data());
    if (l.kind == LayerKind::kGmu) {
      GmuForward(c, l.gmu, u.data(), ms.data(), n, o.data(), pool);
      if (tp != nullptr) reduce(o.data(), n * h);
    } else {
      CrossAttentionForward(c, l.attn, cross, u.data(), o.data(), pool);
      if (tp != nullptr) {
        reduce(o.data(), n * h);
        AddBias(o.data(), n, tp->logical->layers[i].attn.out_bias);
      }
    }
    AddInPlace(xs.data(), o.data(), n * h);
    MlpResidual(c, l, xs.data(), n, pool, reduce);
  }
  cpu::LayerNorm(xs.data(), n, h, weights.final_w.data(), weights.final_b.data(), c.layer_norm_eps,
                 u.data());
  // Vocabulary-parallel LM head: a rank writes its columns of the shared logits rows.
  const int64_t vocab0 = tp != nullptr ? tp->vocab0 : 0;
  cpu::Linear(weights.lm_head, u.data(), n, logits + vocab0, pool, nullptr, c.vocab_size);
  return comm_status;
}

}  // namespace sambay
