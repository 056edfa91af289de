// LoadHfTokenizer: a Hugging Face tokenizer.json of the byte-level BPE kind whose pre-tokenizer is
// the o200k Split (the tiktoken -> HF conversion of Phi-4-mini), encoded with BpeTokenizer.
//
// Merge priority. HF BPE merges the adjacent *pair of symbols* with the lowest merge index;
// tiktoken merges the adjacent pair whose *concatenation* has the lowest rank. We run the
// tiktoken algorithm with rank(token) = 256 + index of the first merge producing it (single
// bytes: their byte value). This is exact for tokenizers converted from tiktoken, whose merges
// are listed in the order of the resulting tokens' ranks (each token's merge is the split BPE
// finds with lower ranks only), so the order of multi-byte ranks is preserved. For an arbitrary
// HF BPE it can differ where a token is reachable from two different splits. Multi-byte vocab
// tokens that no merge produces rank after every merged token (in id order). A piece that is
// itself a token maps to it directly (tiktoken, and HF with ignore_merges).
//
// Added tokens (tokenizer.json "added_tokens", tokenizer_config.json "added_tokens_decoder",
// added_tokens.json) are matched with allow_special, special or not; lstrip/rstrip are honoured,
// single_word and normalized are ignored. Vocab entries that repeat an added token are left to it.
//
// Stateless; thread-safe.
#include <algorithm>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tokenizer/bpe.h"
#include "tokenizer/tokenizer.h"

namespace sambay {
namespace {

using nlohmann::json;

// GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100.. in byte order. cp_to_byte inverts it (-1: not a byte-level character).
struct ByteLevelMap {
  int16_t cp_to_byte[256 + 68];
  constexpr ByteLevelMap() : cp_to_byte() {
    for (int16_t& v : cp_to_byte) v = -1;
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      cp_to_byte[printable ? b : next++] = static_cast<int16_t>(b);
    }
  }
};
constexpr ByteLevelMap kByteLevel;

// The bytes of a byte-level token string; false if it holds a character outside the mapping.
bool ByteLevelDecode(std::string_view s, std::string* out) {
  out->clear();
  for (size_t i = 0; i < s.size();) {
    const uint8_t c = static_cast<uint8_t>(s[i]);
    uint32_t cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size() &&
               (static_cast<uint8_t>(s[i + 1]) & 0xC0) == 0x80) {
      cp = ((c & 0x1Fu) << 6) | (static_cast<uint8_t>(s[i + 1]) & 0x3Fu);
      i += 2;
    } else {
      return false;  // 3- and 4-byte characters are all outside the mapping
    }
    if (cp >= 256 + 68 || kByteLevel.cp_to_byte[cp] < 0) return false;
    out->push_back(static_cast<char>(kByteLevel.cp_to_byte[cp]));
  }
  return !out->empty();
}

std::string Snippet(const json& j) {
  std::string s = j.dump();
  if (s.size() > 160) s = s.substr(0, 160) + "...";
  return s;
}

// obj[key] if it is a string, else "" (json::value throws on a wrong type).
std::string Str(const json& obj, const char* key) {
  return obj.is_object() && obj.contains(key) && obj[key].is_string() ? obj[key].get<std::string>()
                                                                      : std::string();
}
bool Bool(const json& obj, const char* key) {
  return obj.contains(key) && obj[key].is_boolean() && obj[key].get<bool>();
}

bool IsFalseOrAbsent(const json& obj, const char* key) {
  return !obj.contains(key) || obj[key].is_null() ||
         (obj[key].is_boolean() && !obj[key].get<bool>());
}
bool IsEmptyOrAbsent(const json& obj, const char* key) {
  return !obj.contains(key) || obj[key].is_null() || (obj[key].is_string() && obj[key] == "");
}

// Sequence[Split(o200k regex, Isolated), ByteLevel(use_regex = false, no prefix space)].
absl::Status CheckPreTokenizer(const json& root, const std::string& path) {
  const auto unsupported = [&](const json& what) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": unsupported pre-tokenizer ", Snippet(what),
                     " (only Split with the o200k_base regex + ByteLevel(use_regex=false))"));
  };
  if (!root.contains("pre_tokenizer")) return unsupported(nullptr);
  const json& pt = root["pre_tokenizer"];
  if (!pt.is_object() || Str(pt, "type") != "Sequence" || !pt.contains("pretokenizers") ||
      !pt["pretokenizers"].is_array() || pt["pretokenizers"].size() != 2) {
    return unsupported(pt);
  }
  const json& split = pt["pretokenizers"][0];
  const json& bl = pt["pretokenizers"][1];
  if (!split.is_object() || Str(split, "type") != "Split" || !split.contains("pattern") ||
      !split["pattern"].is_object() || !split["pattern"].contains("Regex") ||
      split["pattern"]["Regex"] != bpe_internal::kO200kPattern ||
      Str(split, "behavior") != "Isolated" || !IsFalseOrAbsent(split, "invert")) {
    return unsupported(split);
  }
  // ByteLevel's use_regex defaults to true (its own GPT-2 split), add_prefix_space to true.
  if (!bl.is_object() || Str(bl, "type") != "ByteLevel" || !bl.contains("use_regex") ||
      bl["use_regex"] != false || !bl.contains("add_prefix_space") ||
      bl["add_prefix_space"] != false) {
    return unsupported(bl);
  }
  return absl::OkStatus();
}

absl::Status CheckModel(const json& root, const std::string& path) {
  if (root.contains("normalizer") && !root["normalizer"].is_null()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": unsupported normalizer ", Snippet(root["normalizer"])));
  }
  if (!root.contains("model") || !root["model"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no \"model\" object"));
  }
  const json& m = root["model"];
  if (Str(m, "type") != "BPE") {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": unsupported model type ", Snippet(m.contains("type") ? m["type"] : json())));
  }
  if (!IsFalseOrAbsent(m, "byte_fallback") || !IsEmptyOrAbsent(m, "continuing_subword_prefix") ||
      !IsEmptyOrAbsent(m, "end_of_word_suffix") ||
      !(IsFalseOrAbsent(m, "dropout") || m["dropout"] == 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": unsupported BPE options (byte_fallback, subword prefix/suffix or dropout)"));
  }
  if (!m.contains("vocab") || !m["vocab"].is_object() || !m.contains("merges") ||
      !m["merges"].is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": model needs a \"vocab\" object and a \"merges\" array"));
  }
  return absl::OkStatus();
}

// Reads and parses tokenizer.json; InvalidArgument unless it is a JSON object.
absl::StatusOr<json> ReadTokenizerJson(const std::string& path) {
  std::string text;
  SAMBAY_ASSIGN_OR_RETURN(text, bpe_internal::ReadFile(path));
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  text.clear();
  text.shrink_to_fit();
  if (root.is_discarded())
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  if (!root.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": not an object"));
  return root;
}

// Merges tokenizer.json's own "added_tokens" into `added`.
absl::Status ReadJsonAddedTokens(const json& root, const std::string& path,
                                 std::vector<AddedToken>* added) {
  if (!root.contains("added_tokens")) return absl::OkStatus();
  const json& at = root["added_tokens"];
  if (!at.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": added_tokens is not an array"));
  }
  for (const json& e : at) {
    if (!e.is_object() || !e.contains("id") || !e["id"].is_number_integer() ||
        e["id"].get<int64_t>() < 0 || e["id"].get<int64_t>() > kMaxBpeId ||
        !e.contains("content") || !e["content"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": bad added_tokens entry ", Snippet(e)));
    }
    AddedToken t{e["content"].get<std::string>(), static_cast<int32_t>(e["id"].get<int64_t>()),
                 Bool(e, "lstrip"), Bool(e, "rstrip")};
    SAMBAY_RETURN_IF_ERROR(bpe_internal::MergeAddedToken(t, path, added));
  }
  return absl::OkStatus();
}

// The mergeable tokens read from the vocabulary, before their ranks are final.
struct Vocab {
  std::vector<BpeToken> tokens;                    // rank -1 until a merge produces it
  std::vector<bool> is_added;                      // tokens[i] repeats an added token
  absl::flat_hash_map<std::string, size_t> index;  // bytes -> tokens[]
};

// Vocabulary: byte-level strings -> bytes, ids from the file. Some files also list their added
// tokens in the vocab (same id and text): those stay added tokens only, as HF treats them, unless
// a merge produces them. Single bytes get their byte value as rank.
absl::Status ReadVocab(const json& vocab, const std::vector<AddedToken>& added,
                       const std::string& path, Vocab* out) {
  absl::flat_hash_map<std::string, int32_t> added_ids;
  for (const AddedToken& a : added) added_ids[a.text] = a.id;
  std::vector<BpeToken>& tokens = out->tokens;
  tokens.reserve(vocab.size());
  out->index.reserve(vocab.size());
  std::string bytes;
  for (const auto& [s, v] : vocab.items()) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > kMaxBpeId) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": vocab token ", json(s).dump(), " has no valid id"));
    }
    const bool byte_level = ByteLevelDecode(s, &bytes);
    auto added_it = added_ids.find(byte_level ? bytes : s);
    const bool added_here = added_it != added_ids.end() && added_it->second == v.get<int64_t>();
    if (!byte_level) {
      if (added_here) continue;
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": vocab token ", json(s).dump(), " is not byte-level"));
    }
    out->is_added.push_back(added_here);
    if (!out->index.emplace(bytes, tokens.size()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": vocab has two strings for the bytes of ", json(s).dump()));
    }
    tokens.push_back({bytes, -1, static_cast<int32_t>(v.get<int64_t>())});
  }
  for (BpeToken& t : tokens) {
    if (t.bytes.size() == 1) t.rank = static_cast<uint8_t>(t.bytes[0]);
  }
  return absl::OkStatus();
}

// The two parts of merge k: an "a b" string or an ["a", "b"] pair. The views point into `m`.
absl::Status SplitMerge(const json& m, size_t k, const std::string& path, std::string_view* a,
                        std::string_view* b) {
  if (m.is_string()) {
    const std::string& s = m.get_ref<const std::string&>();
    const size_t sp = s.find(' ');
    if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": merge ", k, " ", Snippet(m), " is not \"a b\""));
    }
    *a = std::string_view(s).substr(0, sp);
    *b = std::string_view(s).substr(sp + 1);
  } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
    *a = m[0].get_ref<const std::string&>();
    *b = m[1].get_ref<const std::string&>();
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": merge ", k, " ", Snippet(m), " is not \"a b\" or [a, b]"));
  }
  return absl::OkStatus();
}

// Merges: "a b" strings or ["a", "b"] pairs; rank = 256 + index of the first producing merge.
absl::Status ApplyMerges(const json& merges, const std::string& path, Vocab* vocab) {
  std::string left, right;
  for (size_t k = 0; k < merges.size(); ++k) {
    const json& m = merges[k];
    std::string_view a, b;
    SAMBAY_RETURN_IF_ERROR(SplitMerge(m, k, path, &a, &b));
    if (!ByteLevelDecode(a, &left) || !ByteLevelDecode(b, &right) || !vocab->index.contains(left) ||
        !vocab->index.contains(right)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": merge ", k, " ", Snippet(m), " has a part not in the vocab"));
    }
    auto it = vocab->index.find(left + right);
    if (it == vocab->index.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": merge ", k, " ", Snippet(m), " makes a token not in the vocab"));
    }
    BpeToken& t = vocab->tokens[it->second];
    if (t.rank < 0) t.rank = static_cast<int32_t>(256 + k);
  }
  return absl::OkStatus();
}

// Unmerged multi-byte tokens: after all merges, in id order; unmerged added tokens are dropped
// (vocab->index no longer matches vocab->tokens afterwards).
void RankUnmerged(size_t num_merges, Vocab* vocab) {
  std::vector<BpeToken>& tokens = vocab->tokens;
  size_t kept = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i].rank < 0 && vocab->is_added[i]) continue;
    if (kept != i) tokens[kept] = std::move(tokens[i]);
    ++kept;
  }
  tokens.resize(kept);
  std::vector<BpeToken*> unmerged;
  for (BpeToken& t : tokens) {
    if (t.rank < 0) unmerged.push_back(&t);
  }
  std::sort(unmerged.begin(), unmerged.end(),
            [](const BpeToken* x, const BpeToken* y) { return x->id < y->id; });
  for (size_t i = 0; i < unmerged.size(); ++i) {
    unmerged[i]->rank = static_cast<int32_t>(256 + num_merges + i);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& dir) {
  const std::string path = dir + "/tokenizer.json";
  SAMBAY_ASSIGN_OR_RETURN(const json root, ReadTokenizerJson(path));
  SAMBAY_RETURN_IF_ERROR(CheckModel(root, path));
  SAMBAY_RETURN_IF_ERROR(CheckPreTokenizer(root, path));
  const json& model = root["model"];

  // Added tokens: tokenizer.json's own, then tokenizer_config.json's and added_tokens.json.
  std::vector<AddedToken> added;
  SAMBAY_RETURN_IF_ERROR(ReadJsonAddedTokens(root, path, &added));
  SAMBAY_RETURN_IF_ERROR(bpe_internal::ReadDirAddedTokens(dir, &added));

  Vocab vocab;
  SAMBAY_RETURN_IF_ERROR(ReadVocab(model["vocab"], added, path, &vocab));
  const json& merges = model["merges"];
  SAMBAY_RETURN_IF_ERROR(ApplyMerges(merges, path, &vocab));
  RankUnmerged(merges.size(), &vocab);

  auto t =
      BpeTokenizer::Create("huggingface tokenizer.json", std::move(vocab.tokens), std::move(added));
  if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", t.status().message()));
  return std::unique_ptr<Tokenizer>(std::move(*t));
}

}  // namespace sambay
