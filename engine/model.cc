#include "engine/model.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "engine/attention.h"
#include "engine/batch.h"
#include "engine/cpu/ops.h"
#include "engine/mamba.h"

namespace sambay {
namespace {

// FNV-1a 64-bit, for the fingerprint.
struct Fnv {
  uint64_t h = 1469598103934665603ull;
  void Add(const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  }
  void Add(const std::string& s) { Add(s.data(), s.size()); }
};

std::string Fingerprint(const ModelConfig& c, const Checkpoint& ck) {
  Fnv f;
  f.Add(ModelConfigToJson(c));
  for (const auto& [name, t] : ck.tensors()) {
    f.Add(name);
    f.Add(ShapeString(t->shape));
    f.Add(std::string(DTypeName(t->dtype)));
    // Up to 4 KiB sampled from the start, middle and end of each tensor's bytes.
    const auto* b = static_cast<const unsigned char*>(t->data);
    const int64_t n = t->nbytes;
    for (int64_t off : {int64_t{0}, n / 2, std::max<int64_t>(0, n - 1365)}) {
      f.Add(b + off, static_cast<size_t>(std::min<int64_t>(1365, n - off)));
    }
  }
  return absl::StrFormat("%016x", f.h);
}

// x[rows, h] += y[rows, h]
void AddInPlace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

// SwiGLU MLP of one layer (spec §3.8) added to the residual x [rows, hidden].
void MlpResidual(const ModelConfig& c, const LayerWeights& l, float* x, int64_t rows,
                 ThreadPool& pool) {
  const int64_t h = c.hidden_size;
  const int64_t f = c.intermediate_size;
  std::vector<float> u(rows * h), g(rows * 2 * f), a(rows * f), o(rows * h);
  cpu::LayerNorm(x, rows, h, l.ln2_w.data(), l.ln2_b.data(), c.layer_norm_eps, u.data());
  cpu::Linear(l.fc1, u.data(), rows, g.data(), pool);
  cpu::SwiGluRows(g.data(), rows, f, a.data());
  cpu::Linear(l.fc2, a.data(), rows, o.data(), pool);
  AddInPlace(x, o.data(), rows * h);
}

// GMU (spec §3.7): out = out_proj(silu(in_proj(u)) * m).
void GmuForward(const ModelConfig& c, const GmuWeights& w, const float* u, const float* m,
                int64_t rows, float* out, ThreadPool& pool) {
  const int64_t di = c.d_inner;
  std::vector<float> g(rows * di);
  cpu::Linear(w.in_proj, u, rows, g.data(), pool);
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

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir,
                                                   const ModelOptions& options,
                                                   LoadReport* report) {
  LoadReport local;
  if (report == nullptr) report = &local;
  std::unique_ptr<Model> m(new Model());
  SAMBAY_ASSIGN_OR_RETURN(m->config_, LoadModelConfig(dir));
  std::unique_ptr<Checkpoint> ck;
  SAMBAY_ASSIGN_OR_RETURN(ck, Checkpoint::Open(dir));
  m->fingerprint_ = Fingerprint(m->config_, *ck);
  SAMBAY_ASSIGN_OR_RETURN(m->weights_, BindWeights(m->config_, std::move(ck), report));
  m->pool_ = std::make_unique<ThreadPool>(options.num_threads);
  cpu::SetBlasThreads(m->pool_->num_threads());
  return m;
}

std::unique_ptr<SequenceState> Model::NewState() const {
  return std::make_unique<SequenceState>(config_);
}

absl::Status Model::Validate(absl::Span<const ForwardSegment> segments) const {
  if (segments.empty()) return absl::InvalidArgumentError("forward: no segments");
  std::set<const SequenceState*> seen;
  for (size_t s = 0; s < segments.size(); ++s) {
    const ForwardSegment& seg = segments[s];
    if (seg.state == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("segment ", s, ": null state"));
    }
    if (!seen.insert(seg.state).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("segment ", s, ": the same sequence state appears twice in one batch"));
    }
    if (seg.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("segment ", s, ": no tokens"));
    }
    for (size_t i = 0; i < seg.tokens.size(); ++i) {
      const int32_t t = seg.tokens[i];
      if (t < 0 || t >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("segment ", s, ": token id ", t,
                                                       " at position ", i, " is outside [0, ",
                                                       config_.vocab_size, ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Model::Forward(absl::Span<const ForwardSegment> segments, std::vector<float>* logits) {
  SAMBAY_RETURN_IF_ERROR(Validate(segments));
  std::lock_guard<std::mutex> lock(mu_);
  const ModelConfig& c = config_;
  ThreadPool& pool = *pool_;
  const int64_t h = c.hidden_size;

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
    Embed(weights_.embed, segments[&p - plan.data()].tokens, x.data() + p.row0 * h);
  }

  // Self-decoder: every new token, state updated.
  for (int i = 0; i < c.first_cross_layer; ++i) {
    const LayerWeights& l = weights_.layers[i];
    cpu::LayerNorm(x.data(), rows, h, l.ln1_w.data(), l.ln1_b.data(), c.layer_norm_eps, u.data());
    if (l.kind == LayerKind::kMamba) {
      MambaForward(c, i, l.mamba, plan, u.data(), rows, o.data(),
                   i == c.memory_layer ? mem.data() : nullptr, pool);
    } else {
      SelfAttentionForward(c, i, l.attn, plan, u.data(), rows, o.data(), pool);
    }
    AddInPlace(x.data(), o.data(), rows * h);
    MlpResidual(c, l, x.data(), rows, pool);
  }
  for (const SegmentPlan& p : plan) p.state->num_tokens += p.len;

  // Cross-decoder: only the rows whose logits are wanted (YOCO, spec §5).
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
  if (n == 0) return absl::OkStatus();
  std::vector<float> xs(n * h), ms(n * c.d_inner);
  for (int64_t r = 0; r < n; ++r) {
    std::memcpy(xs.data() + r * h, x.data() + sel[r] * h, h * sizeof(float));
    std::memcpy(ms.data() + r * c.d_inner, mem.data() + sel[r] * c.d_inner,
                c.d_inner * sizeof(float));
  }
  for (int i = c.first_cross_layer; i < c.num_layers; ++i) {
    const LayerWeights& l = weights_.layers[i];
    cpu::LayerNorm(xs.data(), n, h, l.ln1_w.data(), l.ln1_b.data(), c.layer_norm_eps, u.data());
    if (l.kind == LayerKind::kGmu) {
      GmuForward(c, l.gmu, u.data(), ms.data(), n, o.data(), pool);
    } else {
      CrossAttentionForward(c, l.attn, cross, u.data(), o.data(), pool);
    }
    AddInPlace(xs.data(), o.data(), n * h);
    MlpResidual(c, l, xs.data(), n, pool);
  }
  cpu::LayerNorm(xs.data(), n, h, weights_.final_w.data(), weights_.final_b.data(),
                 c.layer_norm_eps, u.data());
  const size_t old = logits->size();
  logits->resize(old + n * c.vocab_size);
  cpu::Linear(weights_.lm_head, u.data(), n, logits->data() + old, pool);
  return absl::OkStatus();
}

absl::Status Model::Prefill(SequenceState& state, absl::Span<const int32_t> tokens, int64_t chunk,
                            std::vector<float>* last_logits) {
  if (tokens.empty()) return absl::InvalidArgumentError("prefill: no tokens");
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (chunk <= 0) chunk = n;
  // Validate every token before the first chunk touches the state.
  const ForwardSegment all{&state, tokens, LogitsMode::kNone};
  SAMBAY_RETURN_IF_ERROR(Validate({&all, 1}));
  last_logits->clear();
  for (int64_t b = 0; b < n; b += chunk) {
    const int64_t e = std::min(n, b + chunk);
    ForwardSegment seg{&state, tokens.subspan(b, e - b),
                       e == n ? LogitsMode::kLast : LogitsMode::kNone};
    SAMBAY_RETURN_IF_ERROR(Forward({&seg, 1}, last_logits));
  }
  return absl::OkStatus();
}

absl::Status Model::Score(SequenceState& state, absl::Span<const int32_t> tokens,
                          std::vector<float>* logits) {
  logits->clear();
  ForwardSegment seg{&state, tokens, LogitsMode::kAll};
  return Forward({&seg, 1}, logits);
}

absl::Status Model::DecodeStep(absl::Span<SequenceState* const> states,
                               absl::Span<const int32_t> tokens, std::vector<float>* logits) {
  if (states.size() != tokens.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("decode: ", states.size(), " states but ", tokens.size(), " tokens"));
  }
  std::vector<ForwardSegment> segs(states.size());
  for (size_t i = 0; i < states.size(); ++i) {
    segs[i] = {states[i], tokens.subspan(i, 1), LogitsMode::kLast};
  }
  logits->clear();
  return Forward(segs, logits);
}

}  // namespace sambay
