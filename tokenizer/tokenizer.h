// Tokenizer: text <-> token ids for a model directory.
//
// Implementations: byte-level BPE of the tiktoken o200k family (loaded from the npm `tiktoken`
// package's o200k_base.json, a base64 `.tiktoken` rank file, or a Hugging Face tokenizer.json),
// and a plain byte tokenizer (256 bytes + a few specials) for the tiny test models.
//
// Ownership: immutable after loading. Thread-safety: all methods are const and thread-safe.
#ifndef SAMBAY_TOKENIZER_TOKENIZER_H_
#define SAMBAY_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace sambay {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Encodes UTF-8 text. With allow_special, the text of a special/added token (e.g.
  // "<|user|>") is encoded as that token; otherwise it is encoded as ordinary text.
  // InvalidArgument on invalid UTF-8 (naming the byte offset).
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                                      bool allow_special) const = 0;

  // Appends the bytes of token `id` (a special token's text for specials). NotFound for an id
  // with no token (outside the tokenizer's vocabulary, e.g. the model's padding ids).
  virtual absl::Status AppendTokenBytes(int32_t id, std::string* out) const = 0;

  // The concatenated bytes of `ids` (may be invalid UTF-8 if cut mid-character).
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const;

  // The id of a special/added token given its text, if any.
  virtual std::optional<int32_t> SpecialTokenId(std::string_view text) const = 0;
  // All special/added tokens, text -> id.
  virtual const std::map<std::string, int32_t>& special_tokens() const = 0;

  // One more than the largest id that has a token.
  virtual int64_t vocab_size() const = 0;
  // e.g. "tiktoken o200k_base", "huggingface tokenizer.json", "byte-level".
  virtual std::string name() const = 0;
};

// Loads a tiktoken vocabulary in the npm package's JSON form (`o200k_base.json`:
// {"pat_str": ..., "special_tokens": {text: id}, "bpe_ranks": "<base64 token> <rank> ..."}).
// The pattern must be the o200k pattern (else InvalidArgument: only that pre-tokenizer exists).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTiktokenJson(const std::string& path);

// Loads a tiktoken rank file (one "<base64 token> <rank>" per line) with the o200k pattern and
// the given special tokens.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTiktokenRanks(
    const std::string& path, const std::map<std::string, int32_t>& special_tokens);

// Loads dir/tokenizer.json (model type BPE, ByteLevel, with the o200k Split pre-tokenizer),
// plus dir/tokenizer_config.json's added_tokens_decoder and dir/added_tokens.json when present.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& dir);

// The byte tokenizer: ids 0..255 are bytes; `special_tokens` are extra ids (>= 256).
std::unique_ptr<Tokenizer> MakeByteTokenizer(const std::map<std::string, int32_t>& special_tokens);

// Finds the tokenizer of a model directory: tokenizer.json, else o200k_base.json or a
// *.tiktoken file (+ added_tokens.json), else a byte tokenizer declared by
// tokenizer_config.json {"tokenizer_class": "SambayByteTokenizer"} (+ added_tokens.json).
// NotFound naming the directory when none is there.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir);

}  // namespace sambay

#endif  // SAMBAY_TOKENIZER_TOKENIZER_H_
