#include "tools/model_maker.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/thread_pool.h"
#include "engine/checkpoint.h"
#include "engine/weights.h"

namespace sambay {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in [-1, 1), a pure function of (key, i): counter-based, so chunks can be filled in
// any order by any number of threads.
float UniformPm1(uint64_t key, uint64_t i) {
  const uint64_t r = SplitMix64(key ^ SplitMix64(i));
  return static_cast<float>(static_cast<double>(r >> 40) * (1.0 / 8388608.0) - 1.0);
}

enum class Init { kUniform, kOnePlus, kALog, kDtBias };

struct InitRule {
  Init kind = Init::kUniform;
  float scale = 0;  // uniform half-width
};

InitRule RuleFor(const std::string& name, const std::vector<int64_t>& shape, const ModelConfig& c) {
  const float sqrt3 = std::sqrt(3.0f);
  auto uniform_std = [&](double std) {
    return InitRule{Init::kUniform, static_cast<float>(std * sqrt3)};
  };
  const int64_t fan_in = shape.size() >= 2 ? shape.back() : 1;
  if (absl::EndsWith(name, "embed_tokens.weight"))
    return uniform_std(3.0 / std::sqrt(c.hidden_size));
  if (absl::EndsWith(name, "layernorm.weight") || absl::EndsWith(name, "subln.weight")) {
    return {Init::kOnePlus, 0.1f};
  }
  if (absl::EndsWith(name, "layernorm.bias")) return {Init::kUniform, 0.05f};
  if (absl::EndsWith(name, "A_log")) return {Init::kALog, 0};
  if (absl::EndsWith(name, "dt_proj.bias")) return {Init::kDtBias, 0};
  if (absl::EndsWith(name, "dt_proj.weight")) {
    return {Init::kUniform, static_cast<float>(1.0 / std::sqrt(c.dt_rank))};
  }
  if (absl::EndsWith(name, "attn.D")) return {Init::kOnePlus, 0.1f};
  if (absl::StrContains(name, "lambda_")) return uniform_std(0.1);
  if (absl::EndsWith(name, "conv1d.weight")) return uniform_std(1.0 / std::sqrt(c.d_conv));
  if (absl::EndsWith(name, "conv1d.bias")) return {Init::kUniform, 0.1f};
  if (absl::EndsWith(name, ".bias")) return {Init::kUniform, 0.02f};
  // Matrices: residual writers (out_proj, fc2) get half the scale.
  const bool writer = absl::EndsWith(name, "out_proj.weight") || absl::EndsWith(name, "fc2.weight");
  return uniform_std((writer ? 6.0 : 1.0) / std::sqrt(static_cast<double>(fan_in)));
}

float InitValue(const InitRule& rule, uint64_t key, int64_t i, const std::vector<int64_t>& shape) {
  const float u = UniformPm1(key, static_cast<uint64_t>(i));
  switch (rule.kind) {
    case Init::kUniform:
      return rule.scale * u;
    case Init::kOnePlus:
      return 1.0f + rule.scale * u;
    case Init::kALog:  // S4D-real: A[c, n] = -(n + 1)
      return std::log(static_cast<float>(i % shape.back() + 1));
    case Init::kDtBias: {
      const double lo = std::log(1e-3), hi = std::log(1e-1);
      const double dt = std::exp(lo + (hi - lo) * 0.5 * (u + 1.0));
      return static_cast<float>(dt + std::log(-std::expm1(-dt)));  // softplus^-1(dt)
    }
  }
  return 0;
}

std::string TorchDtype(DType t) {
  switch (t) {
    case DType::kF32:
      return "float32";
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
  }
  return "float32";
}

// The byte tokenizer of small models: 256 bytes, then the Phi-4 chat specials.
constexpr int64_t kByteVocab = 261;

absl::Status WriteByteTokenizer(const std::string& dir) {
  std::ofstream cfg(dir + "/tokenizer_config.json", std::ios::trunc);
  cfg << "{\n  \"tokenizer_class\": \"SambayByteTokenizer\"\n}\n";
  std::ofstream added(dir + "/added_tokens.json", std::ios::trunc);
  added << "{\n  \"<|endoftext|>\": 256,\n  \"<|system|>\": 257,\n  \"<|user|>\": 258,\n"
           "  \"<|assistant|>\": 259,\n  \"<|end|>\": 260\n}\n";
  std::ofstream gen(dir + "/generation_config.json", std::ios::trunc);
  gen << "{\n  \"eos_token_id\": [260, 256]\n}\n";
  cfg.close();
  added.close();
  gen.close();
  if (!cfg || !added || !gen) {
    return absl::DataLossError(absl::StrCat("cannot write tokenizer files in ", dir));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> PresetConfig(const std::string& name) {
  ModelConfig c;
  if (name == "tiny") {
    c.vocab_size = 320;
    c.hidden_size = 128;
    c.intermediate_size = 256;
    c.num_layers = 8;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.sliding_window = 16;
    c.d_state = 16;
    c.d_conv = 4;
    c.expand = 2;
    c.dt_rank = 8;
    c.max_position_embeddings = 4096;
  } else if (name == "phi4-mini-flash") {
    c.vocab_size = 200064;
    c.hidden_size = 2560;
    c.intermediate_size = 10240;
    c.num_layers = 32;
    c.num_heads = 40;
    c.num_kv_heads = 20;
    c.sliding_window = 512;
    c.d_state = 16;
    c.d_conv = 4;
    c.expand = 2;
    c.dt_rank = 160;
    c.max_position_embeddings = 262144;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--preset must be tiny or phi4-mini-flash, got \"", name, "\""));
  }
  c.layer_norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  SAMBAY_RETURN_IF_ERROR(FinalizeModelConfig(c, "preset " + name));
  return c;
}

absl::Status MakeModel(const std::string& dir, const ModelConfig& config,
                       const MakeModelOptions& options) {
  ModelConfig c = config;
  SAMBAY_RETURN_IF_ERROR(FinalizeModelConfig(c, "model config"));
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot create ", dir, ": ", ec.message()));

  const std::vector<TensorSpec> specs = ExpectedTensors(c);
  const int esize = DTypeSize(options.dtype);
  std::vector<std::unique_ptr<uint8_t[]>> buffers;
  std::vector<TensorToWrite> tensors;
  ThreadPool pool(options.threads);
  constexpr int64_t kChunk = 1 << 20;
  for (size_t ti = 0; ti < specs.size(); ++ti) {
    const TensorSpec& s = specs[ti];
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    buffers.emplace_back(new uint8_t[n * esize]);
    uint8_t* buf = buffers.back().get();
    const InitRule rule = RuleFor(s.name, s.shape, c);
    const uint64_t key = SplitMix64(options.seed * 0x100000001b3ull + ti + 1);
    pool.ParallelFor((n + kChunk - 1) / kChunk, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b * kChunk; i < std::min(n, e * kChunk); ++i) {
        const float v = InitValue(rule, key, i, s.shape);
        if (options.dtype == DType::kF32) {
          reinterpret_cast<float*>(buf)[i] = v;
        } else if (options.dtype == DType::kBF16) {
          reinterpret_cast<uint16_t*>(buf)[i] = F32ToBf16(v);
        } else {
          reinterpret_cast<uint16_t*>(buf)[i] = F32ToF16(v);
        }
      }
    });
    tensors.push_back({s.name, options.dtype, s.shape, buf});
  }
  SAMBAY_RETURN_IF_ERROR(WriteCheckpoint(dir, tensors, options.shards));

  std::string json = ModelConfigToJson(c);
  const std::string from = "\"torch_dtype\": \"bfloat16\"";
  if (auto pos = json.find(from); pos != std::string::npos) {
    json.replace(pos, from.size(), "\"torch_dtype\": \"" + TorchDtype(options.dtype) + "\"");
  }
  std::ofstream out(dir + "/config.json", std::ios::trunc);
  out << json;
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write config files in ", dir));
  if (c.vocab_size >= kByteVocab && c.vocab_size <= 4096) {
    SAMBAY_RETURN_IF_ERROR(WriteByteTokenizer(dir));
  }
  return absl::OkStatus();
}

}  // namespace sambay
