// Differential attention for sliding-window, global and cross layers (docs/model-spec.md
// "Differential attention core" to "Cross-decoder differential attention").
//
// Layout: a K or V row holds kv_dim = G * head_dim floats, head-major. For pair i (0..H/2-1):
// stripe-1 query = head 2i, stripe-2 query = head 2i+1; with j = i / (H/G), stripe 1 uses key
// head 2j, stripe 2 key head 2j+1, and both use the 128-wide value [V head 2j | V head 2j+1]
// (one softmax per stripe, docs/model-spec.md "Engine notes"). The pair's output is
//   RMSNorm(O1 - lambda O2) * subln * (1 - lambda_init), written to out[i*2hd : (i+1)*2hd].
//
// Stateless; uses the pool (one call at a time per pool).
#ifndef SAMBAY_ENGINE_ATTENTION_H_
#define SAMBAY_ENGINE_ATTENTION_H_

#include "absl/types/span.h"
#include "common/thread_pool.h"
#include "engine/batch.h"
#include "engine/config.h"
#include "engine/weights.h"

namespace sambay {

// SWA or global layer over a batch: projects Q/K/V, stores K/V in each sequence's state
// (ring or blocks), attends, applies out_proj. u, out: [rows, hidden].
void SelfAttentionForward(const ModelConfig& c, int layer, const AttentionWeights& w,
                          absl::Span<const SegmentPlan> segs, const float* u, int64_t rows,
                          float* out, ThreadPool& pool);

// One row of the cross-decoder: the query at absolute position `pos` of `state`, which attends
// the global layer's K/V at positions 0..pos.
struct CrossRow {
  const SequenceState* state = nullptr;
  int64_t pos = 0;
};

// Cross layer: Q from u ([rows, hidden]), K/V from the global layer; out: [rows, hidden].
void CrossAttentionForward(const ModelConfig& c, const AttentionWeights& w,
                           absl::Span<const CrossRow> rows, const float* u, float* out,
                           ThreadPool& pool);

// The core for one query row: q [q_dim]; keys/values for the attended positions as row
// pointers (n of them); writes the normalized pair outputs, out [q_dim]. `scratch` >= n floats.
void DiffAttendRow(const ModelConfig& c, const AttentionWeights& w, const float* q,
                   const float* const* k_rows, const float* const* v_rows, int64_t n, int pair,
                   float* out, float* scratch);

}  // namespace sambay

#endif  // SAMBAY_ENGINE_ATTENTION_H_
