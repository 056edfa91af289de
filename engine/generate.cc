#include "engine/generate.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace sambay {

absl::StatusOr<std::vector<int32_t>> Generate(Model& model, SequenceState& state,
                                              absl::Span<const int32_t> prompt,
                                              const GenerateOptions& options,
                                              const std::function<void(int32_t)>& on_token) {
  if (prompt.empty()) return absl::InvalidArgumentError("prompt: must not be empty");
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens: must be >= 0, got ", options.max_new_tokens));
  }
  SAMBAY_RETURN_IF_ERROR(ValidateSamplingParams(options.sampling));
  std::vector<int32_t> out;
  if (options.max_new_tokens == 0) return out;
  Sampler sampler(options.sampling);
  std::vector<int32_t> history(prompt.begin(), prompt.end());
  std::vector<float> logits;
  SAMBAY_RETURN_IF_ERROR(model.Prefill(state, prompt, options.prefill_chunk, &logits));
  const int64_t vocab = model.config().vocab_size;
  SequenceState* states[1] = {&state};
  for (;;) {
    const int32_t tok = sampler.Sample(absl::MakeConstSpan(logits.data(), vocab), history);
    out.push_back(tok);
    history.push_back(tok);
    state.last_token = tok;
    state.rng_state = sampler.rng_state();
    if (on_token) on_token(tok);
    const bool stop = std::find(options.stop_token_ids.begin(), options.stop_token_ids.end(),
                                tok) != options.stop_token_ids.end();
    if (stop || static_cast<int64_t>(out.size()) >= options.max_new_tokens) break;
    SAMBAY_RETURN_IF_ERROR(model.DecodeStep(states, {&tok, 1}, &logits));
  }
  return out;
}

}  // namespace sambay
