// Random-weight SambaY checkpoints in the exact Hugging Face layout (config.json + safetensors),
// for tests (tiny shapes) and benchmarks (the real 3.8B shape).
//
// Deterministic: the bytes depend only on (config, seed, dtype), not on the thread count.
// Weights are scaled so activations and logits stay in a realistic range (not degenerate):
// embedding std 3/sqrt(hidden) (logit std ~3 through the tied head), Linear weights uniform
// with std 1/sqrt(fan_in) and residual writers (out_proj, fc2) 6/sqrt(fan_in) so the layers,
// not the current token's embedding, dominate the residual stream; Mamba's
// S4D-real A_log = log(1..d_state), dt bias = softplus^-1(dt) with dt log-uniform in
// [1e-3, 1e-1], lambda vectors std 0.1 (the paper's init), norms near 1.
//
// Stateless functions; thread-safe.
#ifndef SAMBAY_TOOLS_MODEL_MAKER_H_
#define SAMBAY_TOOLS_MODEL_MAKER_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/dtype.h"

namespace sambay {

// Presets: "tiny" (8 layers, hidden 128, vocab 320, window 16: the bundled test model) and
// "phi4-mini-flash" (the released 3.8B shape, docs/model-spec.md "config.json (HF
// checkpoint)").
absl::StatusOr<ModelConfig> PresetConfig(const std::string& name);

struct MakeModelOptions {
  uint64_t seed = 0;
  DType dtype = DType::kF32;
  int shards = 1;
  int threads = 0;  // 0 = all
};

// Writes dir/config.json and the weights (model.safetensors or shards + index). Models with a
// vocabulary of 261..4096 also get the byte tokenizer (tokenizer_config.json, added_tokens.json
// with <|endoftext|> 256, <|system|> 257, <|user|> 258, <|assistant|> 259, <|end|> 260) and a
// generation_config.json with eos_token_id [260, 256].
absl::Status MakeModel(const std::string& dir, const ModelConfig& config,
                       const MakeModelOptions& options);

}  // namespace sambay

#endif  // SAMBAY_TOOLS_MODEL_MAKER_H_
