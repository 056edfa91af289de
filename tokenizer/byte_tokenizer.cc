// The byte tokenizer of the tiny test models: ids 0..255 are the bytes themselves, then a few
// special tokens. Encoding needs no merges: every byte is a token.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"

namespace sambay {
namespace {

class ByteTokenizer : public Tokenizer {
 public:
  explicit ByteTokenizer(const std::map<std::string, int32_t>& specials) : specials_(specials) {
    for (const auto& [text, id] : specials_) {
      by_id_[id] = text;
      vocab_ = std::max<int64_t>(vocab_, id + 1);
    }
  }

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool allow_special) const override {
    SAMBAY_RETURN_IF_ERROR(ValidateUtf8(text));
    std::vector<int32_t> ids;
    ids.reserve(text.size());
    size_t i = 0;
    while (i < text.size()) {
      if (allow_special && text[i] == '<') {
        // Longest special token starting here.
        size_t best_len = 0;
        int32_t best_id = -1;
        for (const auto& [s, id] : specials_) {
          if (s.size() > best_len && text.substr(i, s.size()) == s) {
            best_len = s.size();
            best_id = id;
          }
        }
        if (best_len > 0) {
          ids.push_back(best_id);
          i += best_len;
          continue;
        }
      }
      ids.push_back(static_cast<unsigned char>(text[i]));
      ++i;
    }
    return ids;
  }

  absl::Status AppendTokenBytes(int32_t id, std::string* out) const override {
    if (id >= 0 && id < 256) {
      out->push_back(static_cast<char>(id));
      return absl::OkStatus();
    }
    auto it = by_id_.find(id);
    if (it == by_id_.end()) {
      return absl::NotFoundError(
          absl::StrCat("token id ", id, " has no text in the byte tokenizer"));
    }
    out->append(it->second);
    return absl::OkStatus();
  }

  std::optional<int32_t> SpecialTokenId(std::string_view text) const override {
    auto it = specials_.find(std::string(text));
    if (it == specials_.end()) return std::nullopt;
    return it->second;
  }
  const std::map<std::string, int32_t>& special_tokens() const override { return specials_; }
  int64_t vocab_size() const override { return vocab_; }
  std::string name() const override { return "byte-level"; }

 private:
  std::map<std::string, int32_t> specials_;
  std::map<int32_t, std::string> by_id_;
  int64_t vocab_ = 256;
};

}  // namespace

std::unique_ptr<Tokenizer> MakeByteTokenizer(const std::map<std::string, int32_t>& specials) {
  return std::make_unique<ByteTokenizer>(specials);
}

}  // namespace sambay
