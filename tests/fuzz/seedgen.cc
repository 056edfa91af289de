// fuzz_seedgen: writes the generated seed corpora of the libFuzzer targets (tests/fuzz/corpus/,
// run by tests/fuzz/gen_corpus.sh). Usage: fuzz_seedgen OUT_DIR [TOKENIZER_CORPUS_JSON].
// Writes OUT_DIR/<target>/<name> for every target, from the engine's own writers (ExportState,
// WriteSafetensors, WriteCheckpoint, ModelConfigToJson), small vocabularies, serialized
// requests and, for BPE encode, texts from tests/data/tokenizer/corpus.json. Deterministic.
//
// Single-threaded tool; errors end it with exit code 1.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/checkpoint.h"
#include "engine/config.h"
#include "engine/safetensors.h"
#include "engine/state_io.h"
#include "nlohmann/json.hpp"
#include "sambay/v1/generate.pb.h"
#include "sambay/v1/worker.pb.h"
#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/bpe.h"
#include "tools/model_maker.h"

namespace sambay::fuzz {
namespace {

namespace pb = sambay::v1;
namespace fs = std::filesystem;

std::string g_out;

void Put(const std::string& target, const std::string& name, const std::string& bytes) {
  const fs::path dir = fs::path(g_out) / target;
  fs::create_directories(dir);
  std::ofstream f(dir / name, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) Fail("cannot write " + (dir / name).string());
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) Fail("cannot read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

template <typename T>
T OrDie(absl::StatusOr<T> v) {
  if (!v.ok()) Fail(v.status().ToString());
  return *std::move(v);
}

// ---- state_import ------------------------------------------------------------------------

std::unique_ptr<SequenceState> RandomState(const ModelConfig& c, int64_t n, uint32_t seed) {
  auto s = std::make_unique<SequenceState>(c);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const auto fill = [&](std::vector<float>& v) {
    for (float& x : v) x = u(rng);
  };
  for (auto& m : s->mamba) fill(m.conv), fill(m.ssm);
  for (auto& r : s->swa) fill(r.k), fill(r.v);
  s->global.Resize(n);
  for (int64_t p = 0; p < n; ++p) {
    for (int64_t j = 0; j < c.kv_dim(); ++j) s->global.k(p)[j] = u(rng), s->global.v(p)[j] = u(rng);
  }
  s->num_tokens = n;
  s->last_token = n == 0 ? -1 : 7;
  s->rng_state = {11, 22, 33, static_cast<uint64_t>(n)};
  return s;
}

void StateSeeds() {
  const ModelConfig& c = MicroConfig();
  for (int64_t n : {0, 1, 2, 5}) {
    auto state = RandomState(c, n, static_cast<uint32_t>(n + 1));
    const auto chunks = OrDie(ExportState(c, kMicroFingerprint, *state, 512));
    std::string logical, raw;
    for (const std::string& ch : chunks) {
      logical.append(ch, kStateChunkHeaderBytes);
      raw += ch;
    }
    // mode: bits 3-4 = token limit index 3 (64 tokens); cut byte 40 = 321-byte chunks.
    const uint8_t limit = 3 << 3;
    Put("state_import", absl::StrCat("framed_n", n), std::string{char(limit), char(40)} + logical);
    Put("state_import", absl::StrCat("framed_small_n", n),
        std::string{char(limit), char(2)} + logical);
    Put("state_import", absl::StrCat("raw_n", n), std::string{char(limit | 1), char(0)} + raw);
    Put("state_import", absl::StrCat("import_tp2_n", n),
        std::string{char(limit | 2 | 4), char(255)} + logical);
  }
}

// ---- safetensors and checkpoint_index ----------------------------------------------------

void SafetensorsSeeds(const std::string& tmp) {
  const std::vector<float> f32 = {1, 2, 3, 4, 5, 6};
  const std::vector<uint16_t> half = {0x3f80, 0x4000, 0x4040, 0x4080};
  const std::vector<TensorToWrite> tensors = {
      {"model.embed_tokens.weight", DType::kF32, {2, 3}, f32.data()},
      {"model.norm.weight", DType::kBF16, {4}, half.data()},
      {"lm_head.bias", DType::kF16, {2, 2}, half.data()},
      {"scalar", DType::kF32, {}, f32.data()},
  };
  const std::string one = tmp + "/one.safetensors";
  if (!WriteSafetensors(one, tensors, {{"format", "pt"}}).ok()) Fail("WriteSafetensors");
  Put("safetensors", "four_tensors", ReadAll(one));
  if (!WriteSafetensors(one, {tensors[0]}, {}).ok()) Fail("WriteSafetensors");
  Put("safetensors", "one_tensor", ReadAll(one));
  if (!WriteSafetensors(one, {}, {{"k", "v"}}).ok()) Fail("WriteSafetensors");
  Put("safetensors", "empty", ReadAll(one));

  for (int shards : {1, 2, 3}) {
    const std::string dir = absl::StrCat(tmp, "/ckpt", shards);
    fs::create_directories(dir);
    if (!WriteCheckpoint(dir, tensors, shards).ok()) Fail("WriteCheckpoint");
    if (shards == 1) continue;  // no index for one file
    std::string joined = ReadAll(dir + "/model.safetensors.index.json");
    for (int k = 1; k <= shards; ++k) {
      char name[64];
      snprintf(name, sizeof(name), "/model-%05d-of-%05d.safetensors", k, shards);
      joined += std::string(kFileSeparator) + ReadAll(dir + name);
    }
    Put("checkpoint_index", absl::StrCat("shards", shards), joined);
  }
}

// ---- model_config ------------------------------------------------------------------------

void ConfigSeeds(const std::string& tiny_dir) {
  Put("model_config", "tiny", ModelConfigToJson(OrDie(PresetConfig("tiny"))));
  Put("model_config", "phi4_mini_flash", ModelConfigToJson(OrDie(PresetConfig("phi4-mini-flash"))));
  Put("model_config", "micro", ModelConfigToJson(MicroConfig()));
  std::error_code ec;
  if (fs::exists(tiny_dir + "/config.json", ec)) {
    Put("model_config", "tiny_model_dir", ReadAll(tiny_dir + "/config.json"));
  }
}

// ---- tokenizers ----------------------------------------------------------------------------

// A small vocabulary: the 256 bytes (ranks 0..255), then a few merges.
std::vector<std::string> SmallVocab() {
  std::vector<std::string> v;
  for (int b = 0; b < 256; ++b) v.push_back(std::string(1, static_cast<char>(b)));
  for (const char* m : {"he", "ll", "llo", "hello", " w", " wor", " world", "in", "ing", "\n\n",
                        "12", "123", "caf", "\xc3\xa9", " <", "|>"}) {
    v.push_back(m);
  }
  return v;
}

std::string RankLines(const std::vector<std::string>& vocab) {
  std::string s;
  for (size_t i = 0; i < vocab.size(); ++i) {
    absl::StrAppend(&s, absl::Base64Escape(vocab[i]), " ", i, "\n");
  }
  return s;
}

std::string RankCompact(const std::vector<std::string>& vocab) {
  std::string s = "! 0";
  for (const std::string& t : vocab) absl::StrAppend(&s, " ", absl::Base64Escape(t));
  return s + "\n";
}

std::string Gpt2Bytes(const std::string& bytes) {
  // GPT-2 bytes_to_unicode, as tokenizer.json spells byte-level tokens.
  std::map<int, int> b2u;
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    b2u[b] = printable ? b : next++;
  }
  std::string out;
  for (unsigned char ch : bytes) {
    const int cp = b2u[ch];
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  return out;
}

std::string SmallHfJson() {
  nlohmann::json vocab = nlohmann::json::object();
  const std::vector<std::string> v = SmallVocab();
  for (int b = 0; b < 256; ++b) vocab[Gpt2Bytes(v[b])] = b;
  nlohmann::json merges = nlohmann::json::array();
  int id = 256;
  for (const auto& [a, b] : std::vector<std::pair<std::string, std::string>>{{"h", "e"},
                                                                             {"l", "l"},
                                                                             {"ll", "o"},
                                                                             {"he", "llo"},
                                                                             {" ", "w"},
                                                                             {"i", "n"},
                                                                             {"in", "g"}}) {
    vocab[Gpt2Bytes(a + b)] = id++;
    if (id % 2 == 0) {
      merges.push_back(Gpt2Bytes(a) + " " + Gpt2Bytes(b));
    } else {
      merges.push_back(nlohmann::json::array({Gpt2Bytes(a), Gpt2Bytes(b)}));
    }
  }
  vocab["<|end|>"] = 300;
  nlohmann::json split = {{"type", "Split"},
                          {"pattern", {{"Regex", std::string(bpe_internal::kO200kPattern)}}},
                          {"behavior", "Isolated"},
                          {"invert", false}};
  nlohmann::json bl = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  nlohmann::json root = {
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {split, bl}}}},
      {"added_tokens",
       {{{"id", 300}, {"content", "<|end|>"}, {"special", true}, {"rstrip", true}},
        {{"id", 301}, {"content", "<|user|>"}, {"special", false}, {"lstrip", true}}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
  return root.dump();
}

void TokenizerSeeds(const std::string& tiny_dir) {
  const std::vector<std::string> v = SmallVocab();
  nlohmann::json tj = {{"pat_str", std::string(bpe_internal::kO200kPattern)},
                       {"special_tokens", {{"<|endoftext|>", 1000}, {"<|end|>", 1001}}},
                       {"bpe_ranks", RankCompact(v)}};
  Put("tiktoken_json", "small_compact", tj.dump());
  tj["bpe_ranks"] = RankLines(v);
  Put("tiktoken_json", "small_lines", tj.dump());
  Put("tiktoken_ranks", "small_lines", RankLines(v));
  Put("tiktoken_ranks", "small_compact", RankCompact(v));

  const std::string sep(kFileSeparator);
  const std::string hf = SmallHfJson();
  Put("tokenizer_dir", "hf_only", hf);
  Put("tokenizer_dir", "hf_with_added",
      hf + sep +
          R"({"added_tokens_decoder": {"302": {"content": "<|assistant|>", "lstrip": false, "rstrip": false}}})" +
          sep + R"({"<|system|>": 303})" + sep + R"({"eos_token_id": [300, 302]})");
  std::error_code ec;
  if (fs::exists(tiny_dir + "/tokenizer_config.json", ec)) {
    Put("tokenizer_dir", "tiny_byte_tokenizer",
        sep + ReadAll(tiny_dir + "/tokenizer_config.json") + sep +
            ReadAll(tiny_dir + "/added_tokens.json") + sep +
            ReadAll(tiny_dir + "/generation_config.json"));
  }
  Put("tokenizer_dir", "byte_tokenizer_int_eos",
      sep + R"({"tokenizer_class": "SambayByteTokenizer"})" + sep +
          R"({"<|end|>": 260, "<|user|>": 258, "<|assistant|>": 259, "<|system|>": 257})" + sep +
          R"({"eos_token_id": 260})");
}

void BpeSeeds(const std::string& corpus_json) {
  std::vector<std::string> texts = {
      "Hello, world!", "<|user|>Hi<|end|><|assistant|>", "  \n\n\t 12345 3.14159 don't I'M",
      "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80", std::string("a\x00\x80\xff b", 6)};
  std::error_code ec;
  if (!corpus_json.empty() && fs::exists(corpus_json, ec)) {
    const nlohmann::json j = nlohmann::json::parse(ReadAll(corpus_json), nullptr, false);
    // corpus.json: an array of strings or of objects with a "text" field; take small ones.
    const std::function<void(const nlohmann::json&)> walk = [&](const nlohmann::json& n) {
      if (n.is_string()) {
        const std::string& s = n.get_ref<const std::string&>();
        if (!s.empty() && s.size() <= 2000 && texts.size() < 60) texts.push_back(s);
      } else if (n.is_array() || n.is_object()) {
        for (const auto& x : n) walk(x);
      }
    };
    if (!j.is_discarded()) walk(j);
  }
  for (size_t i = 0; i < texts.size(); ++i) {
    Put("bpe_encode", absl::StrCat("text", i), std::string(1, static_cast<char>(i % 2)) + texts[i]);
  }
}

// ---- requests ------------------------------------------------------------------------------

void RequestSeeds() {
  pb::GenerateRequest text;
  text.set_request_id("req-1");
  text.set_text("The quick brown fox");
  text.mutable_stopping()->set_max_new_tokens(16);
  text.mutable_stopping()->add_stop_strings("fox");
  text.mutable_stopping()->add_stop_strings("\xc3\xa9t\xc3\xa9");
  Put("router_request", "text", text.SerializeAsString());
  pb::GenerateRequest ids;
  for (uint32_t id : {3u, 14u, 15u, 92u, 260u}) ids.mutable_token_ids()->add_ids(id);
  ids.mutable_sampling()->set_temperature(0.7f);
  ids.mutable_sampling()->set_top_k(40);
  ids.mutable_sampling()->set_top_p(0.9f);
  ids.mutable_sampling()->set_min_p(0.05f);
  ids.mutable_sampling()->set_repetition_penalty(1.1f);
  ids.mutable_sampling()->set_presence_penalty(0.5f);
  ids.mutable_sampling()->set_seed(1234);
  ids.mutable_stopping()->add_stop_token_ids(256);
  ids.mutable_stopping()->set_ignore_eos(true);
  ids.set_return_logprobs(true);
  ids.set_top_logprobs(5);
  Put("router_request", "token_ids_sampling", ids.SerializeAsString());
  pb::GenerateRequest chat;
  auto* m = chat.mutable_chat()->add_messages();
  m->set_role("system");
  m->set_content("You are terse.");
  m = chat.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Hi <|end|> there");
  Put("router_request", "chat", chat.SerializeAsString());

  pb::PrefillRequest pre;
  pre.set_request_id("req-2");
  for (uint32_t id : {1u, 2u, 3u}) pre.add_token_ids(id);
  pre.mutable_sampling()->set_temperature(1.0f);
  pre.set_rng_draws(2);
  pre.set_return_logprobs(true);
  pre.set_top_logprobs(3);
  pre.mutable_destination()->set_address("127.0.0.1:50052");
  pre.mutable_destination()->set_handle("handle-abc");
  Put("worker_request", "prefill", std::string(1, '\0') + pre.SerializeAsString());
  pb::DecodeRequest imported;
  imported.set_handle("handle-abc");
  imported.set_prompt_tokens(3);
  for (uint32_t id : {1u, 2u, 3u}) imported.add_history(id);
  imported.mutable_sampling()->set_repetition_penalty(1.2f);
  imported.set_max_new_tokens(32);
  imported.add_stop_token_ids(260);
  Put("worker_request", "decode_handle", std::string(1, '\1') + imported.SerializeAsString());
  pb::DecodeRequest local;
  for (uint32_t id : {5u, 6u}) local.mutable_local_prompt()->add_ids(id);
  local.set_rng_draws(1);
  local.set_max_new_tokens(8);
  local.set_top_logprobs(2);
  Put("worker_request", "decode_local", std::string(1, '\1') + local.SerializeAsString());
}

}  // namespace
}  // namespace sambay::fuzz

int main(int argc, char** argv) {
  using namespace sambay::fuzz;
  if (argc < 2) {
    fprintf(stderr, "usage: fuzz_seedgen OUT_DIR [TOKENIZER_CORPUS_JSON]\n");
    return 1;
  }
  g_out = argv[1];
  const std::string tmp = g_out + "/.tmp";
  std::filesystem::create_directories(tmp);
  const std::string tiny = TinyModelDir();
  StateSeeds();
  SafetensorsSeeds(tmp);
  ConfigSeeds(tiny);
  TokenizerSeeds(tiny);
  BpeSeeds(argc > 2 ? argv[2] : "");
  RequestSeeds();
  std::filesystem::remove_all(tmp);
  return 0;
}
