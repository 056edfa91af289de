// ForwardPass: the layer loop of one batched forward pass (docs/model-spec.md "Layer schedule"
// to "Prefill behaviour (YOCO)") over a whole model, or over one tensor-parallel rank's shard
// of it.
//
// YOCO: layers 0..N/2+1 run on every new token and update the states; the cross-decoder runs only
// on the rows whose logits are requested. With a TpRank, the weights and the states are the rank's
// slices (engine/tp/tp_plan.h, engine/tp/tp_weights.h) and the pass inserts the row-parallel
// all-reduces of docs/design.md "Tensor parallelism": Mamba x_proj output and out_proj, attention
// and GMU out_proj (then the logical out_proj bias is added), MLP fc2. Every rank then holds the
// same residual stream, and writes its vocabulary slice of the logits.
//
// Stateless; uses the pool (one call at a time per pool). Internal to the engine: Model is the
// public entry point.
#ifndef SAMBAY_ENGINE_FORWARD_H_
#define SAMBAY_ENGINE_FORWARD_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/thread_pool.h"
#include "engine/config.h"
#include "engine/model.h"
#include "engine/tp/communicator.h"
#include "engine/weights.h"

namespace sambay {

// What a tensor-parallel rank adds to a pass.
struct TpRank {
  Communicator* comm = nullptr;           // the rank's communicator (all-reduce, fp32)
  const ModelWeights* logical = nullptr;  // the unsharded weights: out_proj biases
  int64_t vocab0 = 0;                     // first token id of weights.lm_head's rows
};

// Runs `segments` (valid, distinct states of `config`'s layout) through the model and advances
// each state's num_tokens. Writes logits row-major at `logits`, row stride config.vocab_size,
// OutputRows(segments) rows, columns [tp->vocab0, tp->vocab0 + weights.lm_head.rows) (all
// columns without tp). Returns the first communicator error, if any (the outputs and states
// are then undefined).
absl::Status ForwardPass(const ModelConfig& config, const ModelWeights& weights, ThreadPool& pool,
                         absl::Span<const ForwardSegment> segments, float* logits,
                         const TpRank* tp = nullptr);

}  // namespace sambay

#endif  // SAMBAY_ENGINE_FORWARD_H_
