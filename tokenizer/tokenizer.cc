// Tokenizer::Decode, LoadTokenizer's detection of a model directory's tokenizer, and the
// added-token helpers the BPE loaders share. Stateless; thread-safe.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tokenizer/bpe.h"

namespace sambay {

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string out;
  out.reserve(ids.size() * 4);
  for (int32_t id : ids) SAMBAY_RETURN_IF_ERROR(AppendTokenBytes(id, &out));
  return out;
}

namespace bpe_internal {
namespace {

bool FileExists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

absl::StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  std::string text;
  SAMBAY_ASSIGN_OR_RETURN(text, ReadFile(path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  return j;
}

bool BoolField(const nlohmann::json& obj, const char* key) {
  return obj.contains(key) && obj[key].is_boolean() && obj[key].get<bool>();
}

}  // namespace

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return std::move(ss).str();
}

absl::Status MergeAddedToken(const AddedToken& token, const std::string& source,
                             std::vector<AddedToken>* added) {
  for (const AddedToken& a : *added) {
    if (a.text == token.text && a.id == token.id) return absl::OkStatus();
    if (a.text == token.text || a.id == token.id) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": added token \"", token.text,
                                                     "\" = ", token.id, " conflicts with \"",
                                                     a.text, "\" = ", a.id));
    }
  }
  added->push_back(token);
  return absl::OkStatus();
}

absl::Status ReadDirAddedTokens(const std::string& dir, std::vector<AddedToken>* added) {
  const std::string config_path = dir + "/tokenizer_config.json";
  if (FileExists(config_path)) {
    nlohmann::json cfg;
    SAMBAY_ASSIGN_OR_RETURN(cfg, ReadJson(config_path));
    if (cfg.is_object() && cfg.contains("added_tokens_decoder")) {
      const nlohmann::json& dec = cfg["added_tokens_decoder"];
      if (!dec.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(config_path, ": added_tokens_decoder is not an object"));
      }
      for (const auto& [key, v] : dec.items()) {
        int32_t id = 0;
        if (!absl::SimpleAtoi(key, &id) || id < 0 || id > kMaxBpeId || !v.is_object() ||
            !v.contains("content") || !v["content"].is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(config_path, ": bad added_tokens_decoder entry \"", key, "\""));
        }
        AddedToken t{v["content"].get<std::string>(), id, BoolField(v, "lstrip"),
                     BoolField(v, "rstrip")};
        SAMBAY_RETURN_IF_ERROR(MergeAddedToken(t, config_path, added));
      }
    }
  }
  const std::string added_path = dir + "/added_tokens.json";
  if (FileExists(added_path)) {
    nlohmann::json j;
    SAMBAY_ASSIGN_OR_RETURN(j, ReadJson(added_path));
    if (!j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(added_path, ": expected {text: id}"));
    }
    for (const auto& [text, v] : j.items()) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > kMaxBpeId) {
        return absl::InvalidArgumentError(
            absl::StrCat(added_path, ": \"", text, "\" has no valid id"));
      }
      // Keep the strip flags a tokenizer_config.json entry gave the same token.
      AddedToken t{text, static_cast<int32_t>(v.get<int64_t>())};
      for (const AddedToken& a : *added) {
        if (a.text == t.text && a.id == t.id) t = a;
      }
      SAMBAY_RETURN_IF_ERROR(MergeAddedToken(t, added_path, added));
    }
  }
  return absl::OkStatus();
}

}  // namespace bpe_internal

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir) {
  using bpe_internal::FileExists;
  const std::string& dir = model_dir;
  if (FileExists(dir + "/tokenizer.json")) return LoadHfTokenizer(dir);
  std::vector<AddedToken> added;
  if (FileExists(dir + "/o200k_base.json")) {
    SAMBAY_RETURN_IF_ERROR(bpe_internal::ReadDirAddedTokens(dir, &added));
    return bpe_internal::LoadTiktokenJsonWith(dir + "/o200k_base.json", std::move(added));
  }
  std::vector<std::string> rank_files;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".tiktoken" && FileExists(e.path().string())) {
      rank_files.push_back(e.path().string());
    }
  }
  if (rank_files.size() > 1) {
    std::sort(rank_files.begin(), rank_files.end());
    return absl::InvalidArgumentError(absl::StrCat("more than one .tiktoken file in ", dir, ": ",
                                                   rank_files[0], ", ", rank_files[1]));
  }
  if (rank_files.size() == 1) {
    SAMBAY_RETURN_IF_ERROR(bpe_internal::ReadDirAddedTokens(dir, &added));
    return bpe_internal::LoadTiktokenRanksWith(rank_files[0], std::move(added));
  }
  const std::string config_path = dir + "/tokenizer_config.json";
  if (FileExists(config_path)) {
    nlohmann::json cfg;
    SAMBAY_ASSIGN_OR_RETURN(cfg, bpe_internal::ReadJson(config_path));
    if (cfg.is_object() && cfg.contains("tokenizer_class") &&
        cfg["tokenizer_class"] == "SambayByteTokenizer") {
      SAMBAY_RETURN_IF_ERROR(bpe_internal::ReadDirAddedTokens(dir, &added));
      std::map<std::string, int32_t> specials;
      for (const AddedToken& a : added) {
        if (a.id < 256) {
          return absl::InvalidArgumentError(absl::StrCat(dir, ": byte tokenizer special \"", a.text,
                                                         "\" has id ", a.id, " (< 256)"));
        }
        specials[a.text] = a.id;
      }
      return MakeByteTokenizer(specials);
    }
  }
  return absl::NotFoundError(
      absl::StrCat("no tokenizer in ", dir,
                   " (looked for tokenizer.json, o200k_base.json, *.tiktoken, and "
                   "tokenizer_config.json with tokenizer_class SambayByteTokenizer)"));
}

}  // namespace sambay
