// SegmentPlan: where one sequence's tokens sit inside a batched forward pass.
//
// A forward pass concatenates the new tokens of every sequence in the batch into one
// [rows, hidden] activation matrix (so GEMMs run once for the whole batch); per-sequence ops
// (conv, scan, attention) walk the segments. Plain data; no ownership of the state.
#ifndef SAMBAY_ENGINE_BATCH_H_
#define SAMBAY_ENGINE_BATCH_H_

#include <cstdint>

#include "engine/state.h"

namespace sambay {

struct SegmentPlan {
  SequenceState* state = nullptr;
  int64_t row0 = 0;   // first row of this segment in the batch matrices
  int64_t len = 0;    // number of new tokens
  int64_t start = 0;  // absolute position of the first new token (= tokens consumed before)
};

}  // namespace sambay

#endif  // SAMBAY_ENGINE_BATCH_H_
