// sambay-run: single-process generate / score / info on a SambaY checkpoint, for debugging and
// golden checks.
//
//   sambay-run score    --model DIR --ids 3,14,15 --out FILE.npy
//   sambay-run generate --model DIR --ids 3,14,15 --max-new-tokens 16 [--temperature 0]
//                       [--seed S] [--prefill-chunk K] [--top-k --top-p --min-p ...]
//   sambay-run info     --model DIR
// generate prints the new ids space-separated on one line of stdout; everything else goes to
// stderr. Errors: one line on stderr, exit code 1.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/npy.h"
#include "common/status_macros.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "tools/cli_util.h"

ABSL_FLAG(std::string, model, "", "model directory (config.json + safetensors)");
ABSL_FLAG(std::string, ids, "", "prompt token ids, comma separated");
ABSL_FLAG(std::string, ids_file, "", "file with prompt token ids (commas or whitespace)");
ABSL_FLAG(std::string, out, "", "score: output .npy file for float32 logits [T, vocab]");
ABSL_FLAG(int64_t, max_new_tokens, 16, "generate: number of new tokens");
ABSL_FLAG(double, temperature, 0.0, "sampling temperature; 0 = greedy");
ABSL_FLAG(int32_t, top_k, 0, "top-k filter; 0 = off");
ABSL_FLAG(double, top_p, 1.0, "top-p (nucleus) filter in (0, 1]");
ABSL_FLAG(double, min_p, 0.0, "min-p filter in [0, 1]");
ABSL_FLAG(double, repetition_penalty, 1.0, "repetition penalty (> 0; 1 = off)");
ABSL_FLAG(double, presence_penalty, 0.0, "presence penalty (0 = off)");
ABSL_FLAG(uint64_t, seed, 0, "sampler seed");
ABSL_FLAG(int64_t, prefill_chunk, 0, "prefill chunk size in tokens; 0 = whole prompt");
ABSL_FLAG(std::string, stop_ids, "", "generate: stop after any of these token ids");
ABSL_FLAG(int32_t, threads, 0, "compute threads; 0 = all cores");

namespace sambay {
namespace {

absl::StatusOr<std::vector<int32_t>> PromptIds() {
  const std::string ids = absl::GetFlag(FLAGS_ids);
  const std::string file = absl::GetFlag(FLAGS_ids_file);
  if (!ids.empty() && !file.empty()) {
    return absl::InvalidArgumentError("--ids and --ids-file are mutually exclusive");
  }
  std::vector<int32_t> out;
  if (!file.empty()) {
    SAMBAY_ASSIGN_OR_RETURN(out, ReadIdsFile(file));
  } else {
    SAMBAY_ASSIGN_OR_RETURN(out, ParseIds(ids, "--ids"));
  }
  if (out.empty()) return absl::InvalidArgumentError("--ids: at least one token id is required");
  return out;
}

absl::StatusOr<std::unique_ptr<Model>> LoadModel() {
  const std::string dir = absl::GetFlag(FLAGS_model);
  if (dir.empty()) return absl::InvalidArgumentError("--model: a model directory is required");
  LoadReport report;
  ModelOptions opts;
  opts.num_threads = absl::GetFlag(FLAGS_threads);
  std::unique_ptr<Model> model;
  SAMBAY_ASSIGN_OR_RETURN(model, Model::Load(dir, opts, &report));
  if (!report.unknown_tensors.empty()) {
    std::fprintf(stderr, "sambay-run: warning: %zu unknown tensors ignored: %s\n",
                 report.unknown_tensors.size(),
                 absl::StrJoin(report.unknown_tensors, ", ").c_str());
  }
  for (const std::string& w : report.warnings) {
    std::fprintf(stderr, "sambay-run: warning: %s\n", w.c_str());
  }
  return model;
}

absl::Status RunScore() {
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) return absl::InvalidArgumentError("--out: an output .npy path is required");
  std::vector<int32_t> ids;
  SAMBAY_ASSIGN_OR_RETURN(ids, PromptIds());
  std::unique_ptr<Model> model;
  SAMBAY_ASSIGN_OR_RETURN(model, LoadModel());
  auto state = model->NewState();
  std::vector<float> logits;
  SAMBAY_RETURN_IF_ERROR(model->Score(*state, ids, &logits));
  const int64_t t = static_cast<int64_t>(ids.size());
  SAMBAY_RETURN_IF_ERROR(WriteNpyF32(out, {t, model->config().vocab_size}, logits.data()));
  std::fprintf(stderr, "sambay-run: wrote logits [%lld, %lld] to %s\n", static_cast<long long>(t),
               static_cast<long long>(model->config().vocab_size), out.c_str());
  return absl::OkStatus();
}

absl::Status RunGenerate() {
  std::vector<int32_t> ids;
  SAMBAY_ASSIGN_OR_RETURN(ids, PromptIds());
  GenerateOptions g;
  g.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  g.prefill_chunk = absl::GetFlag(FLAGS_prefill_chunk);
  if (g.prefill_chunk < 0) {
    return absl::InvalidArgumentError("--prefill-chunk: must be >= 0");
  }
  g.sampling.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
  g.sampling.top_k = absl::GetFlag(FLAGS_top_k);
  g.sampling.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  g.sampling.min_p = static_cast<float>(absl::GetFlag(FLAGS_min_p));
  g.sampling.repetition_penalty = static_cast<float>(absl::GetFlag(FLAGS_repetition_penalty));
  g.sampling.presence_penalty = static_cast<float>(absl::GetFlag(FLAGS_presence_penalty));
  g.sampling.seed = absl::GetFlag(FLAGS_seed);
  SAMBAY_RETURN_IF_ERROR(ValidateSamplingParams(g.sampling));
  SAMBAY_ASSIGN_OR_RETURN(g.stop_token_ids, ParseIds(absl::GetFlag(FLAGS_stop_ids), "--stop-ids"));
  std::unique_ptr<Model> model;
  SAMBAY_ASSIGN_OR_RETURN(model, LoadModel());
  auto state = model->NewState();
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> out;
  SAMBAY_ASSIGN_OR_RETURN(out, Generate(*model, *state, ids, g));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s\n", absl::StrJoin(out, " ").c_str());
  std::fflush(stdout);
  std::fprintf(stderr, "sambay-run: %zu prompt + %zu new tokens in %.3f s (%d threads)\n",
               ids.size(), out.size(), secs, model->num_threads());
  return absl::OkStatus();
}

absl::Status RunInfo() {
  std::unique_ptr<Model> model;
  SAMBAY_ASSIGN_OR_RETURN(model, LoadModel());
  const ModelConfig& c = model->config();
  std::string schedule;
  for (int i = 0; i < c.num_layers; ++i) {
    absl::StrAppend(&schedule, i ? " " : "", i, ":", LayerKindName(c.layers[i]));
  }
  std::printf(
      "fingerprint %s\nlayers %d hidden %lld heads %d kv_heads %d head_dim %lld "
      "vocab %lld window %lld d_inner %lld d_state %lld dt_rank %lld\n"
      "schedule %s\nmatrix_bytes %lld\n",
      model->fingerprint().c_str(), c.num_layers, (long long)c.hidden_size, c.num_heads,
      c.num_kv_heads, (long long)c.head_dim, (long long)c.vocab_size, (long long)c.sliding_window,
      (long long)c.d_inner, (long long)c.d_state, (long long)c.dt_rank, schedule.c_str(),
      (long long)model->weights().matrix_bytes);
  return absl::OkStatus();
}

}  // namespace
}  // namespace sambay

int main(int argc, char** argv) {
  const std::vector<std::string> args = sambay::ParseFlags(
      argc, argv, "sambay-run score|generate|info --model DIR [--ids 3,14,15] [flags]");
  if (args.size() != 2) {
    return sambay::ReportError(
        "sambay-run",
        absl::InvalidArgumentError("usage: sambay-run score|generate|info --model DIR [flags]"));
  }
  const std::string cmd = args[1];
  absl::Status st;
  if (cmd == "score") {
    st = sambay::RunScore();
  } else if (cmd == "generate") {
    st = sambay::RunGenerate();
  } else if (cmd == "info") {
    st = sambay::RunInfo();
  } else {
    st = absl::InvalidArgumentError(
        absl::StrCat("unknown command \"", cmd, "\" (expected score, generate or info)"));
  }
  if (!st.ok()) return sambay::ReportError("sambay-run", st);
  return 0;
}
