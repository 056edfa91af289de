// The Mamba-1 mixer (docs/model-spec.md "Mamba-1 mixer") over a batch of segments, updating each
// sequence's conv and SSM state. Stateless; uses the pool for GEMMs and per-channel work (one call
// at a time per pool).
#ifndef SAMBAY_ENGINE_MAMBA_H_
#define SAMBAY_ENGINE_MAMBA_H_

#include <functional>

#include "absl/types/span.h"
#include "common/thread_pool.h"
#include "engine/batch.h"
#include "engine/config.h"
#include "engine/weights.h"

namespace sambay {

// u: [rows, hidden] (the LayerNorm output); out: [rows, hidden].
// memory: when non-null, receives the pre-gate scan output y (with the D skip), [rows, d_inner]:
// the GMU memory of the layer N/2 (docs/model-spec.md "Layer schedule").
// Tensor parallelism: a rank holding a d_inner slice (engine/tp/tp_plan.h) gets a partial sum out
// of x_proj; `reduce_xdbl`, when set, is called on x_dbl [rows, x_proj_dim] right after x_proj (the
// rank's all-reduce). `out` is then also a partial sum, for the caller to reduce.
void MambaForward(const ModelConfig& c, int layer, const MambaWeights& w,
                  absl::Span<const SegmentPlan> segs, const float* u, int64_t rows, float* out,
                  float* memory, ThreadPool& pool,
                  const std::function<void(float* data, int64_t count)>& reduce_xdbl = nullptr);

}  // namespace sambay

#endif  // SAMBAY_ENGINE_MAMBA_H_
