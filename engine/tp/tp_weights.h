// ShardWeights: one tensor-parallel rank's slice of the model weights (docs/design.md "Tensor
// parallelism", plan in engine/tp/tp_plan.h), cut at load time from the bound checkpoint weights.
//
//   column-parallel (rank's output rows): Mamba in_proj (its x rows and its z rows), dt_proj,
//     GMU in_proj, attention Wqkv + bias (its Q, K and V rows), MLP fc1 (gate and up rows);
//   row-parallel (rank's input columns; outputs are partial sums to all-reduce): Mamba x_proj
//     and out_proj, attention and GMU out_proj, MLP fc2;
//   per channel: conv1d weight/bias, dt bias, A, D (Mamba d_inner slice);
//   vocabulary-parallel: the LM head (rank's vocab rows);
//   replicated: embedding, layer norms, lambda / subln (per layer, shared by all heads).
// Matrices stay in their checkpoint dtype. A slice that is one contiguous row range is a view
// into the checkpoint mapping; others are copied into ModelWeights::owned. The attention
// out_proj bias of a shard is zero: the forward pass adds the logical bias once, after the
// all-reduce.
//
// Stateless function; the result borrows `full`'s checkpoint mapping (keep `full` alive).
#ifndef SAMBAY_ENGINE_TP_TP_WEIGHTS_H_
#define SAMBAY_ENGINE_TP_TP_WEIGHTS_H_

#include "engine/config.h"
#include "engine/tp/tp_plan.h"
#include "engine/weights.h"

namespace sambay {

// Rank `rank`'s shard of `full` (the weights of a model with `config`); its layer code runs with
// plan.ranks[rank].config. REQUIRES: plan == MakeTpPlan(config, plan.tp), 0 <= rank < plan.tp.
ModelWeights ShardWeights(const ModelConfig& config, const ModelWeights& full, const TpPlan& plan,
                          int rank);

}  // namespace sambay

#endif  // SAMBAY_ENGINE_TP_TP_WEIGHTS_H_
