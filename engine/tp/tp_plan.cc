#include "engine/tp/tp_plan.h"

#include "absl/strings/str_cat.h"

namespace sambay {

int TpPlan::DInnerOwner(int64_t ch) const {
  const int64_t per = ranks[0].d_inner1 - ranks[0].d_inner0;
  return static_cast<int>(ch / per);
}

absl::StatusOr<TpPlan> MakeTpPlan(const ModelConfig& c, int tp) {
  if (tp < 1 || tp > kMaxTpSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("tp: must be in [1, ", kMaxTpSize, "], got ", tp));
  }
  const std::string prefix = absl::StrCat("tp: cannot split this model over ", tp, " ranks: ");
  // Stripes stay whole: KV heads 2j and 2j+1 (and the query heads reading them) share a rank.
  const int64_t kv_pairs = c.num_kv_heads / 2;
  if (kv_pairs % tp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "num_key_value_heads ", c.num_kv_heads, " form ", kv_pairs,
                     " differential-attention KV pair(s) (KV heads 2j and 2j+1 stay on one rank), ",
                     kv_pairs, " is not divisible by ", tp));
  }
  if (c.d_inner % tp != 0) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "d_inner (Mamba/GMU channels) ",
                                                   c.d_inner, " is not divisible by ", tp));
  }
  if (c.intermediate_size % tp != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        prefix, "intermediate_size ", c.intermediate_size, " is not divisible by ", tp));
  }
  TpPlan plan;
  plan.tp = tp;
  const int64_t di = c.d_inner / tp;
  const int heads = c.num_heads / tp;
  const int kv_heads = c.num_kv_heads / tp;
  const int64_t ffn = c.intermediate_size / tp;
  for (int r = 0; r < tp; ++r) {
    TpRankSlice s;
    s.config = c;
    s.config.num_heads = heads;
    s.config.num_kv_heads = kv_heads;
    s.config.d_inner = di;
    s.config.intermediate_size = ffn;
    s.d_inner0 = r * di;
    s.d_inner1 = s.d_inner0 + di;
    s.q0 = r * heads * c.head_dim;
    s.q1 = s.q0 + heads * c.head_dim;
    s.kv0 = r * kv_heads * c.head_dim;
    s.kv1 = s.kv0 + kv_heads * c.head_dim;
    s.ffn0 = r * ffn;
    s.ffn1 = s.ffn0 + ffn;
    s.vocab0 = c.vocab_size * r / tp;
    s.vocab1 = c.vocab_size * (r + 1) / tp;
    plan.ranks.push_back(std::move(s));
  }
  return plan;
}

}  // namespace sambay
