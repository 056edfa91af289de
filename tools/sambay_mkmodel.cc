// sambay-mkmodel: writes a random-weight SambaY checkpoint in the exact Hugging Face layout.
//
//   sambay-mkmodel --out DIR --preset tiny|phi4-mini-flash [--layers N --hidden H ...]
//                  --seed S --dtype f32|bf16|f16 [--shards N]
// Overrides apply on top of the preset and are validated like a config.json.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "tools/cli_util.h"
#include "tools/model_maker.h"

ABSL_FLAG(std::string, out, "", "output directory");
ABSL_FLAG(std::string, preset, "tiny", "tiny | phi4-mini-flash");
ABSL_FLAG(int32_t, layers, 0, "num_hidden_layers override (multiple of 4)");
ABSL_FLAG(int64_t, hidden, 0, "hidden_size override");
ABSL_FLAG(int32_t, heads, 0, "num_attention_heads override");
ABSL_FLAG(int32_t, kv_heads, 0, "num_key_value_heads override");
ABSL_FLAG(int64_t, intermediate, 0, "intermediate_size override");
ABSL_FLAG(int64_t, vocab, 0, "vocab_size override");
ABSL_FLAG(int64_t, window, 0, "sliding_window override");
ABSL_FLAG(int64_t, d_state, 0, "mamba_d_state override");
ABSL_FLAG(uint64_t, seed, 0, "random seed");
ABSL_FLAG(std::string, dtype, "f32", "f32 | bf16 | f16");
ABSL_FLAG(int32_t, shards, 1, "number of safetensors files (>1 writes an index)");
ABSL_FLAG(int32_t, threads, 0, "threads; 0 = all cores");

namespace sambay {
namespace {

absl::Status Run() {
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) return absl::InvalidArgumentError("--out: an output directory is required");
  ModelConfig c;
  SAMBAY_ASSIGN_OR_RETURN(c, PresetConfig(absl::GetFlag(FLAGS_preset)));
  const int64_t hidden_before = c.hidden_size;
  if (absl::GetFlag(FLAGS_layers)) c.num_layers = absl::GetFlag(FLAGS_layers);
  if (absl::GetFlag(FLAGS_hidden)) c.hidden_size = absl::GetFlag(FLAGS_hidden);
  if (absl::GetFlag(FLAGS_heads)) c.num_heads = absl::GetFlag(FLAGS_heads);
  if (absl::GetFlag(FLAGS_kv_heads)) c.num_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  if (absl::GetFlag(FLAGS_intermediate)) c.intermediate_size = absl::GetFlag(FLAGS_intermediate);
  if (absl::GetFlag(FLAGS_vocab)) c.vocab_size = absl::GetFlag(FLAGS_vocab);
  if (absl::GetFlag(FLAGS_window)) c.sliding_window = absl::GetFlag(FLAGS_window);
  if (absl::GetFlag(FLAGS_d_state)) c.d_state = absl::GetFlag(FLAGS_d_state);
  if (c.hidden_size != hidden_before) c.dt_rank = (c.hidden_size + 15) / 16;  // "auto"
  MakeModelOptions o;
  o.seed = absl::GetFlag(FLAGS_seed);
  o.shards = absl::GetFlag(FLAGS_shards);
  o.threads = absl::GetFlag(FLAGS_threads);
  const std::string dt = absl::GetFlag(FLAGS_dtype);
  if (dt == "f32") {
    o.dtype = DType::kF32;
  } else if (dt == "bf16") {
    o.dtype = DType::kBF16;
  } else if (dt == "f16") {
    o.dtype = DType::kF16;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype: must be f32, bf16 or f16, got \"", dt, "\""));
  }
  SAMBAY_RETURN_IF_ERROR(MakeModel(out, c, o));
  std::fprintf(stderr,
               "sambay-mkmodel: wrote %s (%d layers, hidden %lld, vocab %lld, %s, %d file(s))\n",
               out.c_str(), c.num_layers, static_cast<long long>(c.hidden_size),
               static_cast<long long>(c.vocab_size), dt.c_str(), o.shards);
  return absl::OkStatus();
}

}  // namespace
}  // namespace sambay

int main(int argc, char** argv) {
  const std::vector<std::string> args = sambay::ParseFlags(
      argc, argv,
      "sambay-mkmodel --out DIR --preset tiny|phi4-mini-flash --seed S --dtype f32|bf16");
  if (args.size() != 1) {
    return sambay::ReportError("sambay-mkmodel",
                               absl::InvalidArgumentError("unexpected positional arguments"));
  }
  absl::Status st = sambay::Run();
  if (!st.ok()) return sambay::ReportError("sambay-mkmodel", st);
  return 0;
}
