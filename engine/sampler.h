// Sampler: turns one row of logits into a token id, reproducibly.
//
// Order of operations (the vLLM / HF order): repetition penalty (on tokens in `history`:
// logit > 0 ? logit / p : logit * p), then frequency penalty (logit -= frequency_penalty * count,
// count = the token's occurrences in history), then presence penalty (logit -= presence_penalty
// for each distinct token in history), then temperature (temperature == 0 means greedy argmax, ties
// -> lowest id), then top-k, top-p (smallest set whose probability reaches top_p), min-p (drop
// tokens with p < min_p * p_max), renormalize, draw one token with the RNG.
//
// The RNG is xoshiro256** seeded from `seed` with splitmix64; its 4x64-bit state is exported
// and imported with the sequence state so a sequence continues identically on another worker.
// One draw (one 53-bit uniform double) is consumed per sampled token, greedy or not.
//
// Ownership: value type. Thread-safety: none; one Sampler per sequence.
#ifndef SAMBAY_ENGINE_SAMPLER_H_
#define SAMBAY_ENGINE_SAMPLER_H_

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace sambay {

struct SamplingParams {
  float temperature = 0.0f;         // 0 = greedy; must be finite and >= 0
  int32_t top_k = 0;                // 0 = off; must be >= 0
  float top_p = 1.0f;               // in (0, 1]
  float min_p = 0.0f;               // in [0, 1]
  float repetition_penalty = 1.0f;  // > 0; 1 = off
  float presence_penalty = 0.0f;    // finite; 0 = off
  float frequency_penalty = 0.0f;   // finite; 0 = off
  uint64_t seed = 0;
};

// InvalidArgument naming the field (e.g. "top_p must be in (0, 1], got 1.5").
absl::Status ValidateSamplingParams(const SamplingParams& p);

using RngState = std::array<uint64_t, 4>;

// The token Sampler::Sample returns at temperature 0 without penalties: the first maximum of
// `logits` (NaN never wins; 0 when every value is NaN or -inf). Sample also takes one draw.
int32_t GreedyToken(absl::Span<const float> logits);

namespace sampler_internal {
// A token under consideration: its logit, later its unnormalized probability.
struct Candidate {
  float value;
  int32_t id;
};
}  // namespace sampler_internal

class Sampler {
 public:
  // REQUIRES: ValidateSamplingParams(params).ok().
  explicit Sampler(const SamplingParams& params);

  const SamplingParams& params() const { return params_; }

  // Samples from `logits` (one row, size = vocab). `history` = token ids seen so far
  // (prompt + generated), used by the penalties. `logits` is not modified.
  int32_t Sample(absl::Span<const float> logits, absl::Span<const int32_t> history);

  const RngState& rng_state() const { return rng_; }
  void set_rng_state(const RngState& s) { rng_ = s; }
  // Skips `draws` draws, as if that many tokens had been sampled (a migrated sequence resumes
  // its random stream where it stopped).
  void Advance(uint64_t draws) {
    for (uint64_t i = 0; i < draws; ++i) NextU64();
  }

 private:
  uint64_t NextU64();
  double NextUniform();  // [0, 1)
  // The logits with the penalties applied: `logits` itself when none apply, else scratch_.
  const float* Penalize(absl::Span<const float> logits, absl::Span<const int32_t> history);
  // Adds each in-vocabulary token of `history` to counts_ (sized n, all zero before).
  void CountHistory(size_t n, absl::Span<const int32_t> history);
  // Draws among the +inf entries of l[0, n) (uniform, after top-k / top-p / min-p); -1 if none
  // is drawn.
  int32_t SampleInfinite(const float* l, size_t n, float min_w, double u);

  SamplingParams params_;
  RngState rng_;
  // Reused buffers (no allocation per token once warm): penalized logits, then per-token weights
  // (vocab-sized); per-block sums and maxima of the weights; top-k candidates; the top-p set;
  // occurrences per token for the frequency penalty (vocab-sized once used, zero between calls).
  std::vector<float> scratch_;
  std::vector<double> block_sums_;
  std::vector<float> block_max_;
  std::vector<sampler_internal::Candidate> candidates_;
  std::vector<sampler_internal::Candidate> selected_;
  std::vector<uint32_t> counts_;
};

}  // namespace sambay

#endif  // SAMBAY_ENGINE_SAMPLER_H_
