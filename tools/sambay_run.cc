// sambay-run: single-process generate / score / info on a SambaY checkpoint, for debugging and
// golden checks.
//
//   sambay-run score    --model DIR --ids 3,14,15 --out FILE.npy
//   sambay-run generate --model DIR --ids 3,14,15 --max-new-tokens 16 [--temperature 0]
//                       [--seed S] [--prefill-chunk K] [--top-k --top-p --min-p ...]
//   sambay-run generate --model DIR --prompt "text" | --chat "text" [--system "text"]
//   sambay-run tokenize --model DIR --prompt "text" | --chat "text"
//   sambay-run info     --model DIR
// Every command that runs the model takes --threads N and --tp N (tensor parallelism over N
// rank threads; the ids are those of --tp 1 up to float rounding, docs/tensor-parallel.md).
// generate with --ids prints the new ids space-separated on one line of stdout; with --prompt
// or --chat it streams the generated text (stopping at the model's stop tokens unless
// --ignore-eos). Everything else goes to stderr. Errors: one line on stderr, exit code 1.
#include <chrono>
#include <cstdio>
#include <set>
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
#include "tokenizer/chat.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"
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
ABSL_FLAG(double, frequency_penalty, 0.0, "frequency penalty, per occurrence (0 = off)");
ABSL_FLAG(uint64_t, seed, 0, "sampler seed");
ABSL_FLAG(int64_t, prefill_chunk, 0, "prefill chunk size in tokens; 0 = whole prompt");
ABSL_FLAG(std::string, stop_ids, "", "generate: stop after any of these token ids");
ABSL_FLAG(std::string, prompt, "",
          "prompt text, encoded with the model's tokenizer (special-token text allowed)");
ABSL_FLAG(std::string, chat, "", "a user message, formatted with the Phi-4 chat layout");
ABSL_FLAG(std::string, system, "", "with --chat: an optional system message");
ABSL_FLAG(bool, ignore_eos, false,
          "generate with --prompt/--chat: do not stop at the model's stop tokens");
ABSL_FLAG(int32_t, threads, 0, "compute threads; 0 = all cores (shared by the TP ranks)");
ABSL_FLAG(int32_t, tp, 1,
          "tensor-parallel ranks (threads of this process, in-process all-reduce); 1 = off");

namespace sambay {
namespace {

bool TextPrompt() {
  return !absl::GetFlag(FLAGS_prompt).empty() || !absl::GetFlag(FLAGS_chat).empty();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadModelTokenizer() {
  const std::string dir = absl::GetFlag(FLAGS_model);
  if (dir.empty()) return absl::InvalidArgumentError("--model: a model directory is required");
  return LoadTokenizer(dir);
}

// Prompt ids from exactly one of --ids, --ids-file, --prompt, --chat. `tok` is needed (and
// loaded by the caller) only for the text forms.
absl::StatusOr<std::vector<int32_t>> PromptIds(const Tokenizer* tok) {
  const std::string ids = absl::GetFlag(FLAGS_ids);
  const std::string file = absl::GetFlag(FLAGS_ids_file);
  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  const std::string chat = absl::GetFlag(FLAGS_chat);
  const int given = !ids.empty() + !file.empty() + !prompt.empty() + !chat.empty();
  if (given != 1) {
    return absl::InvalidArgumentError(
        "exactly one of --ids, --ids-file, --prompt or --chat is required");
  }
  std::vector<int32_t> out;
  if (!file.empty()) {
    SAMBAY_ASSIGN_OR_RETURN(out, ReadIdsFile(file));
  } else if (!ids.empty()) {
    SAMBAY_ASSIGN_OR_RETURN(out, ParseIds(ids, "--ids"));
  } else if (!prompt.empty()) {
    auto enc = tok->Encode(prompt, /*allow_special=*/true);
    if (!enc.ok())
      return absl::InvalidArgumentError(absl::StrCat("--prompt: ", enc.status().message()));
    out = std::move(*enc);
  } else {
    std::vector<ChatMessage> messages;
    if (!absl::GetFlag(FLAGS_system).empty()) {
      messages.push_back({"system", absl::GetFlag(FLAGS_system)});
    }
    messages.push_back({"user", chat});
    SAMBAY_ASSIGN_OR_RETURN(out, EncodeChat(*tok, messages));
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
  opts.tp = absl::GetFlag(FLAGS_tp);
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
  std::unique_ptr<Tokenizer> tok;
  if (TextPrompt()) {
    SAMBAY_ASSIGN_OR_RETURN(tok, LoadModelTokenizer());
  }
  std::vector<int32_t> ids;
  SAMBAY_ASSIGN_OR_RETURN(ids, PromptIds(tok.get()));
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
  const bool text = TextPrompt();
  std::unique_ptr<Tokenizer> tok;
  if (text) {
    SAMBAY_ASSIGN_OR_RETURN(tok, LoadModelTokenizer());
  }
  std::vector<int32_t> ids;
  SAMBAY_ASSIGN_OR_RETURN(ids, PromptIds(tok.get()));
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
  g.sampling.frequency_penalty = static_cast<float>(absl::GetFlag(FLAGS_frequency_penalty));
  g.sampling.seed = absl::GetFlag(FLAGS_seed);
  SAMBAY_RETURN_IF_ERROR(ValidateSamplingParams(g.sampling));
  SAMBAY_ASSIGN_OR_RETURN(g.stop_token_ids, ParseIds(absl::GetFlag(FLAGS_stop_ids), "--stop-ids"));
  if (text && !absl::GetFlag(FLAGS_ignore_eos)) {
    std::vector<int32_t> stops;
    SAMBAY_ASSIGN_OR_RETURN(stops, LoadStopTokenIds(absl::GetFlag(FLAGS_model), *tok));
    g.stop_token_ids.insert(g.stop_token_ids.end(), stops.begin(), stops.end());
  }
  std::unique_ptr<Model> model;
  SAMBAY_ASSIGN_OR_RETURN(model, LoadModel());
  auto state = model->NewState();
  // Text output streams as tokens arrive; special tokens (stop markers) are not printed, and
  // ids without text (the model's padding ids) are skipped and counted.
  std::unique_ptr<StreamDecoder> detok;
  if (text) detok = std::make_unique<StreamDecoder>(*tok);
  int64_t no_text = 0;
  std::set<int32_t> special_ids;
  if (text) {
    for (const auto& [s, id] : tok->special_tokens()) special_ids.insert(id);
  }
  auto on_token = [&](int32_t id) {
    if (!detok || special_ids.count(id)) return;
    auto piece = detok->Push(id);
    if (!piece.ok()) {
      ++no_text;
      return;
    }
    std::fwrite(piece->data(), 1, piece->size(), stdout);
    std::fflush(stdout);
  };
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> out;
  SAMBAY_ASSIGN_OR_RETURN(out, Generate(*model, *state, ids, g, on_token));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (detok) {
    const std::string rest = detok->Finish();
    std::printf("%s\n", rest.c_str());
  } else {
    std::printf("%s\n", absl::StrJoin(out, " ").c_str());
  }
  std::fflush(stdout);
  if (no_text > 0) {
    std::fprintf(stderr, "sambay-run: warning: %lld generated ids have no text in the tokenizer\n",
                 static_cast<long long>(no_text));
  }
  std::fprintf(stderr, "sambay-run: %zu prompt + %zu new tokens in %.3f s (%d threads, tp %d)\n",
               ids.size(), out.size(), secs, model->num_threads(), model->tp_size());
  return absl::OkStatus();
}

// Prints the prompt's ids (--prompt or --chat) on one line.
absl::Status RunTokenize() {
  std::unique_ptr<Tokenizer> tok;
  SAMBAY_ASSIGN_OR_RETURN(tok, LoadModelTokenizer());
  std::vector<int32_t> ids;
  SAMBAY_ASSIGN_OR_RETURN(ids, PromptIds(tok.get()));
  std::printf("%s\n", absl::StrJoin(ids, " ").c_str());
  std::fprintf(stderr, "sambay-run: %zu tokens (%s)\n", ids.size(), tok->name().c_str());
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
      "schedule %s\nmatrix_bytes %lld\ntp %d\n",
      model->fingerprint().c_str(), c.num_layers, (long long)c.hidden_size, c.num_heads,
      c.num_kv_heads, (long long)c.head_dim, (long long)c.vocab_size, (long long)c.sliding_window,
      (long long)c.d_inner, (long long)c.d_state, (long long)c.dt_rank, schedule.c_str(),
      (long long)model->weights().matrix_bytes, model->tp_size());
  return absl::OkStatus();
}

}  // namespace
}  // namespace sambay

int main(int argc, char** argv) {
  const std::vector<std::string> args =
      sambay::ParseFlags(argc, argv,
                         "sambay-run score|generate|tokenize|info --model DIR [--ids 3,14,15 | "
                         "--prompt TEXT | --chat TEXT] [flags]");
  if (args.size() != 2) {
    return sambay::ReportError(
        "sambay-run", absl::InvalidArgumentError(
                          "usage: sambay-run score|generate|tokenize|info --model DIR [flags]"));
  }
  const std::string cmd = args[1];
  absl::Status st;
  if (cmd == "score") {
    st = sambay::RunScore();
  } else if (cmd == "generate") {
    st = sambay::RunGenerate();
  } else if (cmd == "tokenize") {
    st = sambay::RunTokenize();
  } else if (cmd == "info") {
    st = sambay::RunInfo();
  } else {
    st = absl::InvalidArgumentError(
        absl::StrCat("unknown command \"", cmd, "\" (expected score, generate, tokenize or info)"));
  }
  if (!st.ok()) return sambay::ReportError("sambay-run", st);
  return 0;
}
