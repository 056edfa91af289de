#include "engine/generate.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace sambay {

namespace {

absl::Status CheckOptions(const GenerateOptions& options) {
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens: must be >= 0, got ", options.max_new_tokens));
  }
  return ValidateSamplingParams(options.sampling);
}

// Samples from `logits`, then decodes until a stop token or max_new_tokens; appends to `out`.
absl::Status SampleLoop(Model& model, SequenceState& state, Sampler& sampler,
                        std::vector<int32_t>& history, std::vector<float>& logits,
                        const GenerateOptions& options,
                        const std::function<void(int32_t)>& on_token, std::vector<int32_t>& out) {
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
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> Generate(Model& model, SequenceState& state,
                                              absl::Span<const int32_t> prompt,
                                              const GenerateOptions& options,
                                              const std::function<void(int32_t)>& on_token) {
  if (prompt.empty()) return absl::InvalidArgumentError("prompt: must not be empty");
  SAMBAY_RETURN_IF_ERROR(CheckOptions(options));
  std::vector<int32_t> out;
  if (options.max_new_tokens == 0) return out;
  Sampler sampler(options.sampling);
  std::vector<int32_t> history(prompt.begin(), prompt.end());
  std::vector<float> logits;
  SAMBAY_RETURN_IF_ERROR(model.Prefill(state, prompt, options.prefill_chunk, &logits));
  SAMBAY_RETURN_IF_ERROR(
      SampleLoop(model, state, sampler, history, logits, options, on_token, out));
  return out;
}

absl::StatusOr<std::vector<int32_t>> ContinueGeneration(
    Model& model, SequenceState& state, absl::Span<const int32_t> history,
    const GenerateOptions& options, const std::function<void(int32_t)>& on_token) {
  SAMBAY_RETURN_IF_ERROR(CheckOptions(options));
  if (state.last_token < 0 || state.last_token >= model.config().vocab_size) {
    return absl::FailedPreconditionError(
        absl::StrCat("state has no pending sampled token (last_token ", state.last_token, ")"));
  }
  if (history.empty() || history.back() != state.last_token) {
    return absl::InvalidArgumentError("history: must end with the state's last_token");
  }
  std::vector<int32_t> out;
  if (options.max_new_tokens == 0) return out;
  Sampler sampler(options.sampling);
  sampler.set_rng_state(state.rng_state);
  std::vector<int32_t> hist(history.begin(), history.end());
  std::vector<float> logits;
  SequenceState* states[1] = {&state};
  const int32_t tok = state.last_token;
  SAMBAY_RETURN_IF_ERROR(model.DecodeStep(states, {&tok, 1}, &logits));
  SAMBAY_RETURN_IF_ERROR(SampleLoop(model, state, sampler, hist, logits, options, on_token, out));
  return out;
}

}  // namespace sambay
