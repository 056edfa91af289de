// TpPlan: how a tensor-parallel group of `tp` ranks splits a SambaY model (docs/design.md "Tensor
// parallelism", docs/tensor-parallel.md). Megatron-style: every rank keeps the whole residual
// stream [rows, hidden]; the inner dimensions are split into contiguous, equal rank slices:
//
//   d_inner        Mamba in_proj x and z rows, conv1d, dt_proj rows, A, D, x_proj columns,
//                  out_proj columns, conv/SSM state; GMU in_proj rows and out_proj columns
//                  (the layer-N/2 memory is already split the same way);
//   KV pairs       attention: the unit is one differential-attention KV pair (KV heads 2j and
//                  2j+1, used by stripes 1 and 2) with the H/G query pairs that read it, so
//                  stripes stay whole; Wqkv Q/K/V rows, out_proj columns, SWA and global K/V;
//   intermediate   MLP fc1 gate and up rows, fc2 columns;
//   vocabulary     the LM head rows (vocabulary-parallel; the logits are assembled by rank).
// A rank's slice of the model is itself a SambaY model with fewer heads / channels: `config`
// below, which the layer code runs unchanged.
//
// Value type; immutable after MakeTpPlan; thread-safe to share.
#ifndef SAMBAY_ENGINE_TP_TP_PLAN_H_
#define SAMBAY_ENGINE_TP_TP_PLAN_H_

#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"

namespace sambay {

inline constexpr int kMaxTpSize = 64;

// One rank's slice. Ranges are [begin, end) in the model's (logical) coordinates.
struct TpRankSlice {
  // The rank's shard model: num_heads, num_kv_heads, d_inner and intermediate_size are the
  // rank's; every other field (hidden_size, head_dim, vocab_size, layers, ...) is the model's.
  ModelConfig config;
  int64_t d_inner0 = 0, d_inner1 = 0;  // Mamba / GMU channels
  int64_t q0 = 0, q1 = 0;              // columns of the Q projection (q_dim)
  int64_t kv0 = 0, kv1 = 0;            // columns of K and of V (kv_dim)
  int64_t ffn0 = 0, ffn1 = 0;          // MLP intermediate channels
  int64_t vocab0 = 0, vocab1 = 0;      // LM-head rows (token ids)
};

struct TpPlan {
  int tp = 1;
  std::vector<TpRankSlice> ranks;  // tp entries

  // The rank whose d_inner slice holds channel `ch` (0 <= ch < d_inner).
  int DInnerOwner(int64_t ch) const;
};

// The plan for `tp` ranks. InvalidArgument naming the size that does not divide: tp outside
// [1, kMaxTpSize]; the num_key_value_heads / 2 differential-attention KV pairs, the d_inner
// channels or the intermediate_size channels not divisible by tp. The vocabulary may split
// unevenly (rank r gets ids [r V / tp, (r+1) V / tp)).
absl::StatusOr<TpPlan> MakeTpPlan(const ModelConfig& config, int tp);

}  // namespace sambay

#endif  // SAMBAY_ENGINE_TP_TP_PLAN_H_
