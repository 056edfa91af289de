// Single-sequence generation: prefill (chunked) then decode steps with a Sampler.
// The reference path that sambay-run, the golden tests and later the worker agree on.
//
// Stateless function; uses the model (see Model's thread-safety).
#ifndef SAMBAY_ENGINE_GENERATE_H_
#define SAMBAY_ENGINE_GENERATE_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model.h"
#include "engine/sampler.h"

namespace sambay {

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  int64_t prefill_chunk = 0;            // 0 = whole prompt in one forward
  SamplingParams sampling;              // temperature 0 = greedy
  std::vector<int32_t> stop_token_ids;  // generation ends after emitting one of these
};

// Returns the new token ids. `on_token` (optional) is called with each token as it is sampled.
// On return `state` holds the sequence after the last emitted token was sampled (that token
// is in state.last_token, not yet consumed), with the sampler's RNG state saved.
absl::StatusOr<std::vector<int32_t>> Generate(Model& model, SequenceState& state,
                                              absl::Span<const int32_t> prompt,
                                              const GenerateOptions& options,
                                              const std::function<void(int32_t)>& on_token = {});

// Continues a sequence whose state holds a sampled but not yet consumed `state.last_token`
// (e.g. a state imported from another worker, or left by Generate): consumes it, then samples
// up to max_new_tokens more, with the sampler's RNG restored from state.rng_state, so the
// tokens equal those of an uninterrupted Generate with the same options. `history` = every
// token so far, prompt and generated, including last_token (used by the penalties).
// options.prefill_chunk is unused.
absl::StatusOr<std::vector<int32_t>> ContinueGeneration(
    Model& model, SequenceState& state, absl::Span<const int32_t> history,
    const GenerateOptions& options, const std::function<void(int32_t)>& on_token = {});

}  // namespace sambay

#endif  // SAMBAY_ENGINE_GENERATE_H_
