// Log-probabilities of a sampled token and the top alternatives, from one row of raw logits
// (log softmax before penalties, temperature and truncation: vLLM's "raw" logprobs).
// Stateless; thread-safe.
#ifndef SAMBAY_WORKER_LOGPROBS_H_
#define SAMBAY_WORKER_LOGPROBS_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/types/span.h"

namespace sambay {

inline constexpr int kMaxTopLogprobs = 20;

struct TokenLogprobs {
  int32_t token = -1;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // most likely first; ties -> lower id first
};

// REQUIRES: 0 <= token < row.size(), 0 <= top_n <= kMaxTopLogprobs.
TokenLogprobs ComputeLogprobs(absl::Span<const float> row, int32_t token, int top_n);

}  // namespace sambay

#endif  // SAMBAY_WORKER_LOGPROBS_H_
