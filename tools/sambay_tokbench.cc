// sambay-tokbench: encode throughput of our o200k tokenizer (one thread) beside the npm
// `tiktoken` package's (WASM, one Node process) on the same text, in the same run.
//
//   sambay-tokbench [--tiktoken-dir third_party/npm/node_modules/tiktoken] [--text FILE]
//                   [--seconds 3]
// Without --text, the text is tests/data/tokenizer/corpus.json's entries joined, repeated to
// at least 4 MB. Both sides encode ordinary text (no special tokens). Also checks that both
// produce the same number of tokens. Prints a Markdown table.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tokenizer/tokenizer.h"
#include "tools/cli_util.h"

ABSL_FLAG(std::string, tiktoken_dir, "third_party/npm/node_modules/tiktoken",
          "the npm tiktoken package directory (holds encoders/o200k_base.json)");
ABSL_FLAG(std::string, text, "", "text file to encode (default: the test corpus, repeated)");
ABSL_FLAG(double, seconds, 3.0, "time budget per side");

namespace sambay {
namespace {

absl::StatusOr<std::string> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status Run() {
  const std::string dir = absl::GetFlag(FLAGS_tiktoken_dir);
  std::unique_ptr<Tokenizer> tok;
  SAMBAY_ASSIGN_OR_RETURN(tok, LoadTiktokenJson(dir + "/encoders/o200k_base.json"));
  std::string text_path = absl::GetFlag(FLAGS_text);
  std::string text;
  if (text_path.empty()) {
    std::string corpus;
    SAMBAY_ASSIGN_OR_RETURN(corpus, ReadAll("tests/data/tokenizer/corpus.json"));
    const nlohmann::json j = nlohmann::json::parse(corpus, nullptr, false);
    if (!j.is_array()) return absl::InvalidArgumentError("corpus.json: expected a JSON array");
    std::string joined;
    for (const auto& e : j) {
      if (e.is_string()) joined += e.get<std::string>() + "\n";
      if (e.is_object() && e.contains("text")) joined += e["text"].get<std::string>() + "\n";
    }
    while (text.size() < (4u << 20)) text += joined;
    text_path = "/tmp/sambay_tokbench_text.txt";
    std::ofstream(text_path, std::ios::binary) << text;
  } else {
    SAMBAY_ASSIGN_OR_RETURN(text, ReadAll(text_path));
  }
  const double budget = absl::GetFlag(FLAGS_seconds);
  // Ours, one thread.
  auto ids = tok->Encode(text, /*allow_special=*/false);  // warm-up
  if (!ids.ok()) return ids.status();
  int reps = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double secs = 0;
  while (secs < budget) {
    ids = tok->Encode(text, false);
    ++reps;
    secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const double ours = text.size() * reps / secs / 1e6;
  // The npm package, in Node.
  const std::string abs_dir = std::filesystem::absolute(dir).string();
  const std::string cmd =
      absl::StrCat("SAMBAY_TIKTOKEN_DIR='", abs_dir, "' node tools/tokenizer/bench_reference.mjs '",
                   text_path, "' ", budget);
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return absl::UnavailableError("cannot run node");
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  if (pclose(p) != 0) return absl::UnavailableError(absl::StrCat("node failed: ", out));
  const nlohmann::json ref = nlohmann::json::parse(out, nullptr, false);
  if (!ref.is_object()) return absl::UnavailableError(absl::StrCat("bad node output: ", out));
  const double theirs = ref["mb_per_s"].get<double>();
  std::printf("text: %zu bytes (%s)\n\n", text.size(), text_path.c_str());
  std::printf("| encoder | MB/s (one core) | tokens |\n|---|---|---|\n");
  std::printf("| sambay (C++) | %.1f | %zu |\n", ours, ids->size());
  std::printf("| npm tiktoken %s (WASM) | %.1f | %lld |\n", "1.0.22", theirs,
              static_cast<long long>(ref["tokens"].get<int64_t>()));
  std::printf(
      "\nratio sambay / tiktoken: %.2fx; token counts %s\n", ours / theirs,
      static_cast<int64_t>(ids->size()) == ref["tokens"].get<int64_t>() ? "equal" : "DIFFER");
  return absl::OkStatus();
}

}  // namespace
}  // namespace sambay

int main(int argc, char** argv) {
  sambay::ParseFlags(argc, argv, "sambay-tokbench [--text FILE] [--tiktoken-dir DIR]");
  absl::Status st = sambay::Run();
  if (!st.ok()) return sambay::ReportError("sambay-tokbench", st);
  return 0;
}
