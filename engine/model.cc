#include "engine/model.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "engine/cpu/linear.h"
#include "engine/forward.h"
#include "engine/state_io.h"
#include "engine/tp/tp_group.h"

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

}  // namespace

Model::Model() = default;
Model::~Model() = default;

int Model::tp_size() const { return tp_ ? tp_->plan().tp : 1; }

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir,
                                                   const ModelOptions& options,
                                                   LoadReport* report) {
  LoadReport local;
  if (report == nullptr) report = &local;
  std::unique_ptr<Model> m(new Model());
  SAMBAY_ASSIGN_OR_RETURN(m->config_, LoadModelConfig(dir));
  // The TP split is checked before the (large) checkpoint is opened.
  TpPlan plan;
  SAMBAY_ASSIGN_OR_RETURN(plan, MakeTpPlan(m->config_, options.tp));
  std::unique_ptr<Checkpoint> ck;
  SAMBAY_ASSIGN_OR_RETURN(ck, Checkpoint::Open(dir));
  m->fingerprint_ = Fingerprint(m->config_, *ck);
  SAMBAY_ASSIGN_OR_RETURN(m->weights_, BindWeights(m->config_, std::move(ck), report));
  if (plan.tp == 1) {
    auto pool = std::make_unique<ThreadPool>(options.num_threads);
    m->num_threads_ = pool->num_threads();
    m->pool_ = std::move(pool);  // not shared yet: no other thread can see `m`
    cpu::SetBlasThreads(m->num_threads_);
  } else {
    m->tp_ =
        std::make_unique<TpGroup>(m->config_, m->weights_, std::move(plan), options.num_threads);
    m->num_threads_ = m->tp_->threads_per_rank() * m->tp_->plan().tp;
    // Every rank calls BLAS at the same time: each gets its share.
    cpu::SetBlasThreads(m->tp_->threads_per_rank());
  }
  return m;
}

std::unique_ptr<SequenceState> Model::NewState() const {
  if (tp_) return std::make_unique<SequenceState>(config_, tp_->plan());
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
  MutexLock lock(&mu_);
  const int tp = tp_size();
  const size_t shards = tp == 1 ? 0 : static_cast<size_t>(tp);
  for (const ForwardSegment& s : segments) {
    if (s.state->shards.size() != shards) {
      SAMBAY_RETURN_IF_ERROR(ReshardState(config_, tp, *s.state));
    }
  }
  const size_t old = logits->size();
  logits->resize(old + OutputRows(segments) * config_.vocab_size);
  if (tp_) return tp_->Forward(segments, logits->data() + old);
  return ForwardPass(config_, weights_, *pool_, segments, logits->data() + old);
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
