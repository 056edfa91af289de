// The Mamba-1 mixer (spec §3.2) over a batch of segments, updating each sequence's conv and SSM
// state. Stateless; uses the pool for GEMMs and per-channel work (one call at a time per pool).
#ifndef SAMBAY_ENGINE_MAMBA_H_
#define SAMBAY_ENGINE_MAMBA_H_

#include "absl/types/span.h"
#include "common/thread_pool.h"
#include "engine/batch.h"
#include "engine/config.h"
#include "engine/weights.h"

namespace sambay {

// u: [rows, hidden] (the LayerNorm output); out: [rows, hidden].
// memory: when non-null, receives the pre-gate scan output y (with the D skip), [rows, d_inner]:
// the GMU memory of the layer N/2 (spec §2).
void MambaForward(const ModelConfig& c, int layer, const MambaWeights& w,
                  absl::Span<const SegmentPlan> segs, const float* u, int64_t rows, float* out,
                  float* memory, ThreadPool& pool);

}  // namespace sambay

#endif  // SAMBAY_ENGINE_MAMBA_H_
