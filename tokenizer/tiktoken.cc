// Loaders of tiktoken vocabularies: the npm `tiktoken` package's JSON (encoders/o200k_base.json)
// and `.tiktoken` rank files. Both give rank == id. Every malformed input is an error status
// naming the file and line; nothing here throws or aborts.
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tokenizer/bpe.h"
#include "tokenizer/tokenizer.h"

namespace sambay {
namespace bpe_internal {

const char kO200kPattern[] =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

}  // namespace bpe_internal

namespace {

using bpe_internal::kO200kPattern;

struct Base64Table {
  int8_t v[256];
  constexpr Base64Table() : v() {
    for (int i = 0; i < 256; ++i) v[i] = -1;
    const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) v[static_cast<uint8_t>(a[i])] = static_cast<int8_t>(i);
  }
};
constexpr Base64Table kBase64;

// Strict standard base64 (RFC 4648 alphabet, '=' padding, zero trailing bits), as Rust's
// base64 STANDARD engine that tiktoken uses accepts it.
bool DecodeBase64(std::string_view in, std::string* out) {
  const size_t n = in.size();
  if (n == 0 || n % 4 != 0) return false;
  size_t pad = 0;
  if (in[n - 1] == '=') pad = in[n - 2] == '=' ? 2 : 1;
  out->clear();
  for (size_t i = 0; i < n; i += 4) {
    const bool last = i + 4 == n;
    uint32_t v = 0;
    for (size_t k = 0; k < 4; ++k) {
      int d = 0;
      if (!(last && k >= 4 - pad)) {
        d = kBase64.v[static_cast<uint8_t>(in[i + k])];
        if (d < 0) return false;
      }
      v = (v << 6) | static_cast<uint32_t>(d);
    }
    out->push_back(static_cast<char>(v >> 16));
    if (last && pad == 2) return (v & 0xF000) == 0;
    out->push_back(static_cast<char>((v >> 8) & 0xFF));
    if (last && pad == 1) return (v & 0xC0) == 0;
    out->push_back(static_cast<char>(v & 0xFF));
  }
  return true;
}

// The fields of `s` between `sep` characters (n separators -> n + 1 fields).
std::vector<std::string_view> SplitBy(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    const size_t p = s.find(sep, start);
    out.push_back(
        s.substr(start, p == std::string_view::npos ? std::string_view::npos : p - start));
    if (p == std::string_view::npos) return out;
    start = p + 1;
  }
}

// A non-negative decimal number <= kMaxBpeId, digits only.
bool ParseRank(std::string_view s, int32_t* out) {
  if (s.empty() || s.size() > 8) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  if (v > kMaxBpeId) return false;
  *out = static_cast<int32_t>(v);
  return true;
}

// Rank-file text: lines "<base64 token> <rank>", or "! <first rank> <base64> <base64> ..." (the
// npm package's compact form: consecutive ranks). Empty lines are skipped; a trailing '\r' is
// dropped. `where` names the source in errors.
absl::Status ParseRanks(std::string_view text, const std::string& where,
                        std::vector<BpeToken>* tokens) {
  size_t line_no = 0;
  std::string bytes;
  for (std::string_view line : SplitBy(text, '\n')) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const std::vector<std::string_view> f = SplitBy(line, ' ');
    const auto bad = [&](std::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": line ", line_no, ": ", std::string(what)));
    };
    if (f[0] == "!") {
      int32_t first = 0;
      if (f.size() < 2 || !ParseRank(f[1], &first)) return bad("bad rank after '!'");
      for (size_t k = 2; k < f.size(); ++k) {
        if (!DecodeBase64(f[k], &bytes)) {
          return bad(absl::StrCat("bad base64 token #", k - 2, " \"",
                                  std::string(f[k].substr(0, 40)), "\""));
        }
        const int64_t rank = static_cast<int64_t>(first) + static_cast<int64_t>(k - 2);
        if (rank > kMaxBpeId) return bad("rank too large");
        tokens->push_back({bytes, static_cast<int32_t>(rank), static_cast<int32_t>(rank)});
      }
      continue;
    }
    int32_t rank = 0;
    if (f.size() != 2) return bad("expected \"<base64 token> <rank>\"");
    if (!DecodeBase64(f[0], &bytes)) {
      return bad(absl::StrCat("bad base64 token \"", std::string(f[0].substr(0, 40)), "\""));
    }
    if (!ParseRank(f[1], &rank)) {
      return bad(absl::StrCat("bad rank \"", std::string(f[1].substr(0, 20)), "\""));
    }
    tokens->push_back({bytes, rank, rank});
  }
  if (tokens->empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": no tokens"));
  return absl::OkStatus();
}

std::string TiktokenName(const std::string& path) {
  return absl::StrCat("tiktoken ", std::filesystem::path(path).stem().string());
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Build(const std::string& path,
                                                 std::vector<BpeToken> tokens,
                                                 std::vector<AddedToken> added) {
  auto t = BpeTokenizer::Create(TiktokenName(path), std::move(tokens), std::move(added));
  if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", t.status().message()));
  return std::unique_ptr<Tokenizer>(std::move(*t));
}

}  // namespace

namespace bpe_internal {

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTiktokenJsonWith(const std::string& path,
                                                                std::vector<AddedToken> extra) {
  std::string text;
  SAMBAY_ASSIGN_OR_RETURN(text, ReadFile(path));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  if (!j.is_object() || !j.contains("pat_str") || !j["pat_str"].is_string() ||
      !j.contains("bpe_ranks") || !j["bpe_ranks"].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": expected an object with string fields \"pat_str\" and \"bpe_ranks\""));
  }
  const std::string& pat = j["pat_str"].get_ref<const std::string&>();
  if (pat != kO200kPattern) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": unsupported pat_str \"", pat.substr(0, 80), pat.size() > 80 ? "...\"" : "\"",
        " (only the o200k_base pattern is implemented)"));
  }
  std::vector<AddedToken> added;
  if (j.contains("special_tokens")) {
    const nlohmann::json& sp = j["special_tokens"];
    if (!sp.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": \"special_tokens\" is not an object"));
    }
    for (const auto& [k, v] : sp.items()) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > kMaxBpeId) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": special token \"", k, "\" has no valid id"));
      }
      SAMBAY_RETURN_IF_ERROR(
          MergeAddedToken({k, static_cast<int32_t>(v.get<int64_t>())}, path, &added));
    }
  }
  for (const AddedToken& a : extra) SAMBAY_RETURN_IF_ERROR(MergeAddedToken(a, path, &added));
  std::vector<BpeToken> tokens;
  tokens.reserve(200000);
  SAMBAY_RETURN_IF_ERROR(ParseRanks(j["bpe_ranks"].get_ref<const std::string&>(),
                                    absl::StrCat(path, ": bpe_ranks"), &tokens));
  return Build(path, std::move(tokens), std::move(added));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTiktokenRanksWith(const std::string& path,
                                                                 std::vector<AddedToken> added) {
  std::string text;
  SAMBAY_ASSIGN_OR_RETURN(text, ReadFile(path));
  std::vector<BpeToken> tokens;
  SAMBAY_RETURN_IF_ERROR(ParseRanks(text, path, &tokens));
  return Build(path, std::move(tokens), std::move(added));
}

}  // namespace bpe_internal

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTiktokenJson(const std::string& path) {
  return bpe_internal::LoadTiktokenJsonWith(path, {});
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTiktokenRanks(
    const std::string& path, const std::map<std::string, int32_t>& special_tokens) {
  std::vector<AddedToken> added;
  for (const auto& [text, id] : special_tokens) added.push_back({text, id});
  return bpe_internal::LoadTiktokenRanksWith(path, std::move(added));
}

}  // namespace sambay
