#include "engine/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace sambay {
namespace {

using nlohmann::json;

absl::Status FieldError(const std::string& source, const std::string& field,
                        const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", field, " ", what));
}

// Reads an integer field. Absent -> default (or an error when required).
absl::StatusOr<int64_t> GetInt(const json& j, const std::string& source, const char* field,
                               std::optional<int64_t> def) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    if (def) return *def;
    return FieldError(source, field, "is required");
  }
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_number_float()) {
    const double v = it->get<double>();
    if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9e15) {
      return static_cast<int64_t>(v);
    }
  }
  return FieldError(source, field, absl::StrCat("must be an integer, got ", it->dump()));
}

absl::StatusOr<double> GetDouble(const json& j, const std::string& source, const char* field,
                                 std::optional<double> def) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    if (def) return *def;
    return FieldError(source, field, "is required");
  }
  if (!it->is_number()) {
    return FieldError(source, field, absl::StrCat("must be a number, got ", it->dump()));
  }
  return it->get<double>();
}

absl::Status RequirePositive(const std::string& source, const char* field, int64_t v) {
  if (v <= 0) return FieldError(source, field, absl::StrCat("must be positive, got ", v));
  return absl::OkStatus();
}

// `sliding_window` is an int in the released config; some config revisions expand it into a
// per-layer list with nulls. Either way the schedule comes from the rules, so only the window
// size is read here (all non-null entries must agree).
absl::StatusOr<int64_t> GetSlidingWindow(const json& j, const std::string& source) {
  auto it = j.find("sliding_window");
  if (it == j.end() || it->is_null()) return FieldError(source, "sliding_window", "is required");
  if (!it->is_array()) return GetInt(j, source, "sliding_window", std::nullopt);
  int64_t w = 0;
  for (const json& e : *it) {
    if (e.is_null()) continue;
    if (!e.is_number_integer()) {
      return FieldError(source, "sliding_window",
                        absl::StrCat("has a non-integer entry ", e.dump()));
    }
    const int64_t v = e.get<int64_t>();
    if (w != 0 && v != w) {
      return FieldError(source, "sliding_window", "list entries disagree");
    }
    w = v;
  }
  if (w == 0) return FieldError(source, "sliding_window", "list has no window value");
  return w;
}

}  // namespace

const char* LayerKindName(LayerKind k) {
  switch (k) {
    case LayerKind::kMamba:
      return "mamba";
    case LayerKind::kSwa:
      return "swa";
    case LayerKind::kGlobal:
      return "global";
    case LayerKind::kGmu:
      return "gmu";
    case LayerKind::kCross:
      return "cross";
  }
  return "?";
}

double ModelConfig::LambdaInit(int layer) { return 0.8 - 0.6 * std::exp(-0.3 * layer); }

absl::Status FinalizeModelConfig(ModelConfig& c, const std::string& source) {
  SAMBAY_RETURN_IF_ERROR(RequirePositive(source, "vocab_size", c.vocab_size));
  SAMBAY_RETURN_IF_ERROR(RequirePositive(source, "hidden_size", c.hidden_size));
  SAMBAY_RETURN_IF_ERROR(RequirePositive(source, "intermediate_size", c.intermediate_size));
  SAMBAY_RETURN_IF_ERROR(RequirePositive(source, "num_hidden_layers", c.num_layers));
  SAMBAY_RETURN_IF_ERROR(RequirePositive(source, "num_attention_heads", c.num_heads));
  SAMBAY_RETURN_IF_ERROR(RequirePositive(source, "num_key_value_heads", c.num_kv_heads));
  SAMBAY_RETURN_IF_ERROR(RequirePositive(source, "sliding_window", c.sliding_window));
  SAMBAY_RETURN_IF_ERROR(RequirePositive(source, "mamba_d_state", c.d_state));
  SAMBAY_RETURN_IF_ERROR(RequirePositive(source, "mamba_d_conv", c.d_conv));
  SAMBAY_RETURN_IF_ERROR(RequirePositive(source, "mamba_expand", c.expand));
  SAMBAY_RETURN_IF_ERROR(RequirePositive(source, "mamba_dt_rank", c.dt_rank));
  // Generous upper bounds so arithmetic on sizes cannot overflow.
  if (c.vocab_size > (1 << 24)) return FieldError(source, "vocab_size", "is too large");
  if (c.hidden_size > (1 << 16)) return FieldError(source, "hidden_size", "is too large");
  if (c.intermediate_size > (1 << 20)) {
    return FieldError(source, "intermediate_size", "is too large");
  }
  if (c.num_layers > 1024) return FieldError(source, "num_hidden_layers", "is too large");
  if (c.d_state > 1024) return FieldError(source, "mamba_d_state", "is too large");
  if (c.d_conv > 64) return FieldError(source, "mamba_d_conv", "is too large");
  if (c.expand > 16) return FieldError(source, "mamba_expand", "is too large");
  if (c.sliding_window > (1 << 24)) return FieldError(source, "sliding_window", "is too large");
  if (!(c.layer_norm_eps > 0) || !std::isfinite(c.layer_norm_eps)) {
    return FieldError(source, "layer_norm_eps", "must be a positive finite number");
  }
  if (c.num_layers % 4 != 0) {
    return FieldError(
        source, "num_hidden_layers",
        absl::StrCat("must be a multiple of 4 (SambaY schedule), got ", c.num_layers));
  }
  if (c.num_heads % 2 != 0) {
    return FieldError(source, "num_attention_heads",
                      absl::StrCat("must be even (differential attention), got ", c.num_heads));
  }
  if (c.num_kv_heads % 2 != 0) {
    return FieldError(source, "num_key_value_heads",
                      absl::StrCat("must be even (differential attention), got ", c.num_kv_heads));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return FieldError(
        source, "num_key_value_heads",
        absl::StrCat("must divide num_attention_heads (", c.num_heads, "), got ", c.num_kv_heads));
  }
  if (c.hidden_size % c.num_heads != 0) {
    return FieldError(source, "hidden_size",
                      absl::StrCat("must be divisible by num_attention_heads (", c.num_heads,
                                   "), got ", c.hidden_size));
  }
  if (c.d_conv < 2) return FieldError(source, "mamba_d_conv", "must be at least 2");
  c.head_dim = c.hidden_size / c.num_heads;
  c.d_inner = c.expand * c.hidden_size;
  const int n = c.num_layers;
  const int half = n / 2;
  c.memory_layer = half;
  c.global_layer = half + 1;
  c.first_cross_layer = half + 2;
  c.layers.assign(n, LayerKind::kMamba);
  for (int i = 0; i < n; ++i) {
    const bool mamba_slot = i % 2 == 0;
    if (i < c.first_cross_layer) {
      if (mamba_slot) {
        c.layers[i] = LayerKind::kMamba;
      } else {
        c.layers[i] = i < half ? LayerKind::kSwa : LayerKind::kGlobal;
      }
    } else {
      c.layers[i] = mamba_slot ? LayerKind::kGmu : LayerKind::kCross;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(source, ": invalid JSON"));
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": top level must be a JSON object"));
  }
  auto mt = j.find("model_type");
  if (mt == j.end() || !mt->is_string()) {
    return FieldError(source, "model_type", "is required and must be a string");
  }
  if (mt->get<std::string>() != "phi4flash") {
    return FieldError(source, "model_type",
                      absl::StrCat("must be \"phi4flash\", got ", mt->dump()));
  }
  if (auto a = j.find("architectures"); a != j.end() && !a->is_null()) {
    bool found = false;
    if (a->is_array()) {
      for (const json& e : *a)
        found |= e.is_string() && e.get<std::string>() == "Phi4FlashForCausalLM";
    }
    if (!found) {
      return FieldError(source, "architectures",
                        absl::StrCat("must contain \"Phi4FlashForCausalLM\", got ", a->dump()));
    }
  }
  if (auto a = j.find("hidden_act"); a != j.end() && !a->is_null()) {
    if (!a->is_string() || a->get<std::string>() != "silu") {
      return FieldError(source, "hidden_act", absl::StrCat("must be \"silu\", got ", a->dump()));
    }
  }
  ModelConfig c;
  SAMBAY_ASSIGN_OR_RETURN(c.vocab_size, GetInt(j, source, "vocab_size", std::nullopt));
  SAMBAY_ASSIGN_OR_RETURN(c.hidden_size, GetInt(j, source, "hidden_size", std::nullopt));
  SAMBAY_ASSIGN_OR_RETURN(c.intermediate_size,
                          GetInt(j, source, "intermediate_size", std::nullopt));
  int64_t v;
  SAMBAY_ASSIGN_OR_RETURN(v, GetInt(j, source, "num_hidden_layers", std::nullopt));
  if (v > 1024 || v < 0) return FieldError(source, "num_hidden_layers", "is out of range");
  c.num_layers = static_cast<int>(v);
  SAMBAY_ASSIGN_OR_RETURN(v, GetInt(j, source, "num_attention_heads", std::nullopt));
  if (v > 4096 || v < 0) return FieldError(source, "num_attention_heads", "is out of range");
  c.num_heads = static_cast<int>(v);
  SAMBAY_ASSIGN_OR_RETURN(v, GetInt(j, source, "num_key_value_heads", c.num_heads));
  if (v > 4096 || v < 0) return FieldError(source, "num_key_value_heads", "is out of range");
  c.num_kv_heads = static_cast<int>(v);
  SAMBAY_ASSIGN_OR_RETURN(c.sliding_window, GetSlidingWindow(j, source));
  SAMBAY_ASSIGN_OR_RETURN(c.layer_norm_eps, GetDouble(j, source, "layer_norm_eps", 1e-5));
  SAMBAY_ASSIGN_OR_RETURN(c.d_state, GetInt(j, source, "mamba_d_state", 16));
  SAMBAY_ASSIGN_OR_RETURN(c.d_conv, GetInt(j, source, "mamba_d_conv", 4));
  SAMBAY_ASSIGN_OR_RETURN(c.expand, GetInt(j, source, "mamba_expand", 2));
  SAMBAY_ASSIGN_OR_RETURN(c.max_position_embeddings,
                          GetInt(j, source, "max_position_embeddings", 262144));
  int64_t mb_per_layer;
  SAMBAY_ASSIGN_OR_RETURN(mb_per_layer, GetInt(j, source, "mb_per_layer", 2));
  if (mb_per_layer != 2) {
    return FieldError(source, "mb_per_layer",
                      absl::StrCat("must be 2 (SambaY schedule), got ", mb_per_layer));
  }
  auto dr = j.find("mamba_dt_rank");
  if (dr == j.end() || dr->is_null() || (dr->is_string() && dr->get<std::string>() == "auto")) {
    if (c.hidden_size > 0) c.dt_rank = (c.hidden_size + 15) / 16;  // ceil(hidden / 16)
  } else {
    SAMBAY_ASSIGN_OR_RETURN(c.dt_rank, GetInt(j, source, "mamba_dt_rank", std::nullopt));
  }
  if (auto t = j.find("tie_word_embeddings"); t != j.end() && !t->is_null()) {
    if (!t->is_boolean()) {
      return FieldError(source, "tie_word_embeddings",
                        absl::StrCat("must be a boolean, got ", t->dump()));
    }
    c.tie_word_embeddings = t->get<bool>();
  }
  SAMBAY_RETURN_IF_ERROR(FinalizeModelConfig(c, source));
  if (auto hd = j.find("head_dim"); hd != j.end() && !hd->is_null()) {
    if (!hd->is_number_integer() || hd->get<int64_t>() != c.head_dim) {
      return FieldError(source, "head_dim",
                        absl::StrCat("must equal hidden_size / num_attention_heads (", c.head_dim,
                                     "), got ", hd->dump()));
    }
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseModelConfig(ss.str(), path);
}

std::string ModelConfigToJson(const ModelConfig& c) {
  json j;
  j["architectures"] = {"Phi4FlashForCausalLM"};
  j["model_type"] = "phi4flash";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["sliding_window"] = c.sliding_window;
  j["hidden_act"] = "silu";
  j["layer_norm_eps"] = c.layer_norm_eps;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["mb_per_layer"] = 2;
  j["mamba_d_state"] = c.d_state;
  j["mamba_d_conv"] = c.d_conv;
  j["mamba_expand"] = c.expand;
  j["mamba_dt_rank"] = c.dt_rank;
  j["mamba_conv_bias"] = true;
  j["mamba_proj_bias"] = false;
  j["rope_theta"] = 10000.0;
  j["pad_token_id"] = 0;
  j["bos_token_id"] = 1;
  j["eos_token_id"] = 2;
  j["torch_dtype"] = "bfloat16";
  return j.dump(2) + "\n";
}

}  // namespace sambay
