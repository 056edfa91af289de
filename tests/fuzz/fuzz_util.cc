// Shared helpers of the libFuzzer targets (fuzz_util.h). Single-threaded use only.
#include "tests/fuzz/fuzz_util.h"

#include <stdlib.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "tokenizer/chat.h"
#include "tokenizer/stream_decoder.h"

namespace sambay::fuzz {

std::string TinyModelDir() {
  if (const char* env = getenv("SAMBAY_FUZZ_MODEL"); env != nullptr && *env != '\0') return env;
  return std::string(SAMBAY_BUILD_DIR) + "/models/tiny";
}

std::string O200kJsonPath() {
  std::error_code ec;
  if (const char* env = getenv("SAMBAY_FUZZ_O200K"); env != nullptr && *env != '\0') {
    return std::filesystem::exists(env, ec) ? std::string(env) : std::string();
  }
  const std::string p = std::string(SAMBAY_SOURCE_DIR) +
                        "/third_party/npm/node_modules/tiktoken/encoders/o200k_base.json";
  return std::filesystem::exists(p, ec) ? p : std::string();
}

void Fail(const std::string& what) {
  fprintf(stderr, "sambay fuzz: %s\n", what.c_str());
  fflush(stderr);
  abort();
}

FuzzScratch::FuzzScratch() {
  const char* tmp = getenv("TMPDIR");
  std::string templ =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/sambay-fuzz-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) Fail("cannot create a scratch directory in $TMPDIR");
  dir_ = templ;
}

FuzzScratch::~FuzzScratch() {
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string FuzzScratch::Write(const std::string& name, std::string_view data) const {
  const std::string path = dir_ + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  out.close();
  if (!out) Fail("cannot write " + path);
  return path;
}

void FuzzScratch::Remove(const std::string& name) const {
  std::error_code ec;
  std::filesystem::remove(dir_ + "/" + name, ec);
}

std::vector<std::string_view> SplitFiles(std::string_view data) {
  std::vector<std::string_view> parts;
  for (;;) {
    const size_t at = data.find(kFileSeparator);
    if (at == std::string_view::npos) break;
    parts.push_back(data.substr(0, at));
    data.remove_prefix(at + kFileSeparator.size());
  }
  parts.push_back(data);
  return parts;
}

void ExerciseTokenizer(const Tokenizer& tokenizer, std::string_view text) {
  const int64_t vocab = tokenizer.vocab_size();
  for (bool allow_special : {false, true}) {
    auto ids = tokenizer.Encode(text, allow_special);
    if (!ids.ok()) continue;
    for (int32_t id : *ids) {
      if (id < 0 || id >= vocab) Fail("Encode returned an id outside [0, vocab_size)");
    }
    auto decoded = tokenizer.Decode(*ids);
    if (!decoded.ok()) Fail("Decode of Encode's ids failed: " + decoded.status().ToString());
    if (allow_special) continue;
    if (*decoded != text) Fail("Decode(Encode(text)) != text");
    StreamDecoder stream(tokenizer);
    std::string streamed;
    for (int32_t id : *ids) {
      auto piece = stream.Push(id);
      if (!piece.ok()) Fail("StreamDecoder::Push failed: " + piece.status().ToString());
      streamed += *piece;
    }
    streamed += stream.Finish();
    if (streamed != text) Fail("the StreamDecoder's pieces do not concatenate to the text");
  }
  std::string bytes;
  for (int64_t id : {int64_t{-1}, int64_t{0}, int64_t{255}, int64_t{256}, vocab - 1, vocab}) {
    if (id < INT32_MIN || id > INT32_MAX) continue;
    (void)tokenizer.AppendTokenBytes(static_cast<int32_t>(id), &bytes);
  }
  for (const auto& [special, id] : tokenizer.special_tokens()) {
    if (!tokenizer.SpecialTokenId(special).has_value()) Fail("a listed special has no id");
  }
  const ChatMessage msgs[] = {{"system", "s"}, {"user", std::string(text)}};
  (void)EncodeChat(tokenizer, msgs);
}

const ModelConfig& MicroConfig() {
  static const ModelConfig* config = [] {
    auto* c = new ModelConfig();
    c->vocab_size = 64;
    c->hidden_size = 16;
    c->intermediate_size = 32;
    c->num_layers = 4;
    c->num_heads = 4;
    c->num_kv_heads = 2;
    c->sliding_window = 3;
    c->d_state = 2;
    c->d_conv = 2;
    c->expand = 1;
    c->dt_rank = 2;
    c->max_position_embeddings = 256;
    if (absl::Status s = FinalizeModelConfig(*c, "fuzz micro config"); !s.ok()) {
      Fail(std::string(s.message()));
    }
    return c;
  }();
  return *config;
}

}  // namespace sambay::fuzz
