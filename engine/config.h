// ModelConfig: the numeric fields of a phi4flash `config.json` and the layer schedule derived
// from them (docs/model-spec.md "config.json (HF checkpoint)" and "Layer schedule"). Per-layer
// lists in the file (layer_types, layers_block_type, a list `sliding_window`) are not trusted:
// the schedule comes from the rules in docs/model-spec.md "Layer schedule".
//
// Value type; immutable after parsing; thread-safe to share.
#ifndef SAMBAY_ENGINE_CONFIG_H_
#define SAMBAY_ENGINE_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sambay {

enum class LayerKind : uint8_t {
  kMamba,   // Mamba-1 mixer (self-decoder); the one at index N/2 also produces the GMU memory
  kSwa,     // sliding-window differential attention (self-decoder)
  kGlobal,  // full causal differential attention; owns the only long K/V cache (index N/2+1)
  kGmu,     // gated memory unit (cross-decoder)
  kCross,   // cross differential attention over the global layer's K/V (cross-decoder)
};

const char* LayerKindName(LayerKind k);

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int64_t sliding_window = 0;
  double layer_norm_eps = 1e-5;
  int64_t d_state = 0;
  int64_t d_conv = 0;
  int64_t expand = 0;
  int64_t dt_rank = 0;
  bool tie_word_embeddings = true;
  int64_t max_position_embeddings = 0;

  // Derived.
  int64_t head_dim = 0;  // hidden_size / num_heads
  int64_t d_inner = 0;   // expand * hidden_size
  std::vector<LayerKind> layers;
  int memory_layer = 0;       // N/2: the Mamba layer whose pre-gate scan output feeds the GMUs
  int global_layer = 0;       // N/2 + 1
  int first_cross_layer = 0;  // N/2 + 2: layers from here run on the output rows only

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  int64_t x_proj_dim() const { return dt_rank + 2 * d_state; }
  // lambda_init(l) = 0.8 - 0.6 exp(-0.3 l) (docs/model-spec.md "Differential attention core").
  static double LambdaInit(int layer);
};

// Parses and validates config.json text. Errors are InvalidArgument naming the field, e.g.
// "config.json: num_key_value_heads must be even, got 3". `source` names the file in messages.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source = "config.json");
// Reads dir/config.json.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);
// Fills derived fields and validates every constraint; used by the parser and by tools that
// build configs in code (sambay-mkmodel).
absl::Status FinalizeModelConfig(ModelConfig& c, const std::string& source = "config");
// The config.json text for `c` (HF layout, model_type phi4flash), for sambay-mkmodel.
std::string ModelConfigToJson(const ModelConfig& c);

}  // namespace sambay

#endif  // SAMBAY_ENGINE_CONFIG_H_
