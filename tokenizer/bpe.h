// Byte-level BPE of the tiktoken kind, over the o200k pre-tokenizer (SplitO200k).
//
// Encoding follows tiktoken exactly: the text is cut into pre-tokens; a pre-token that is itself
// a token maps to it directly; otherwise, starting from single bytes, the adjacent pair whose
// concatenation has the lowest rank is merged (the leftmost pair on ties) until no adjacent
// pair's concatenation is a token. Ranks order merges; ids are what Encode returns (for tiktoken
// files rank == id; a Hugging Face tokenizer.json gives ranks from its merges list).
//
// With allow_special, added tokens (specials and the non-special added tokens of a
// tokenizer.json) are found in the text first, leftmost and then longest, and the text between
// them is encoded as above; without it, their text is ordinary text.
//
// Ownership: BpeTokenizer owns all its tables; immutable after Create. Thread-safety: every
// method is const and safe to call from many threads at once (no caches, no shared scratch).
#ifndef SAMBAY_TOKENIZER_BPE_H_
#define SAMBAY_TOKENIZER_BPE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "tokenizer/tokenizer.h"

namespace sambay {

// One mergeable token: its bytes, its merge priority (lower merges first) and its id.
struct BpeToken {
  std::string bytes;
  int32_t rank = 0;
  int32_t id = 0;
};

// A token matched verbatim in the text when special tokens are allowed.
struct AddedToken {
  std::string text;
  int32_t id = 0;
  // Hugging Face flags: the match also swallows the whitespace before (lstrip) or after
  // (rstrip) it. False for tiktoken specials.
  bool lstrip = false;
  bool rstrip = false;
};

// Largest id / rank a BpeTokenizer accepts (they are packed into 24 bits).
inline constexpr int32_t kMaxBpeId = (1 << 24) - 1;
// Longest mergeable token, in bytes.
inline constexpr size_t kMaxBpeTokenBytes = 255;

// Byte string -> rank, open addressing with linear probing. Keys live in one arena; each slot
// holds the key's first 8 bytes inline, so a probe rarely touches the arena. Most lookups of
// the merge loop miss; a 256 KiB Bloom filter (cache-resident, unlike the 8 MiB of slots for
// o200k) answers most misses without touching the slots.
class BpeRankTable {
 public:
  BpeRankTable() = default;
  // Builds the table; `keys[i]` gets value `values[i]` (0 <= value <= kMaxBpeId, keys of
  // 1..kMaxBpeTokenBytes bytes, distinct: the caller checks).
  void Build(const std::vector<std::string_view>& keys, const std::vector<int32_t>& values);
  // The value of `key`, or -1.
  int32_t Find(const char* key, size_t len) const;

 private:
  struct Slot {
    uint64_t head = 0;       // first min(len, 8) bytes, zero-padded
    uint32_t offset = 0;     // of the key in arena_
    uint32_t value_len = 0;  // value << 8 | len; 0 = empty
  };
  static uint64_t Hash(const char* key, size_t len);

  static constexpr int kFilterWordBits = 15;  // 2^15 64-bit words = 256 KiB

  std::vector<Slot> slots_;
  uint64_t mask_ = 0;
  std::vector<uint64_t> filter_;  // 3 bits per key, all in the word h >> (64 - kFilterWordBits)
  std::string arena_;
};

class BpeTokenizer final : public Tokenizer {
 public:
  // Validates and builds. `tokens`: every single byte must be a token; bytes, ranks and ids
  // distinct, 0 <= rank, id <= kMaxBpeId. `added`: distinct non-empty texts; an added token may
  // share its id with a mergeable token only when their bytes are equal. InvalidArgument with
  // details otherwise.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Create(std::string name,
                                                              std::vector<BpeToken> tokens,
                                                              std::vector<AddedToken> added);

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool allow_special) const override;
  absl::Status AppendTokenBytes(int32_t id, std::string* out) const override;
  std::optional<int32_t> SpecialTokenId(std::string_view text) const override;
  const std::map<std::string, int32_t>& special_tokens() const override { return specials_; }
  int64_t vocab_size() const override { return vocab_size_; }
  std::string name() const override { return name_; }

  // The number of mergeable tokens (without added tokens).
  size_t num_mergeable() const { return rank_to_id_.size(); }

 private:
  BpeTokenizer() = default;

  // Appends the ids of ordinary text (no specials); InvalidArgument on invalid UTF-8.
  absl::Status EncodeOrdinary(std::string_view text, std::vector<std::string_view>* pieces,
                              std::vector<int32_t>* out) const;
  // Appends the ids of one pre-token.
  void EncodePiece(std::string_view piece, std::vector<int32_t>* out) const;
  // The merge loop for pieces longer than the on-stack limit (a heap, same result).
  void EncodeLongPiece(std::string_view piece, std::vector<int32_t>* out) const;
  int32_t Rank(const char* p, size_t n) const { return table_.Find(p, n); }
  // The added token that matches at text[pos] (longest), or nullptr.
  const AddedToken* MatchAdded(std::string_view text, size_t pos) const;

  std::string name_;
  BpeRankTable table_;               // token bytes -> rank
  std::vector<int32_t> rank_to_id_;  // rank -> id (-1: no token)
  int32_t byte_rank_[256] = {};      // single byte -> rank
  // id -> bytes: [id_offset_[id], id_offset_[id + 1]) in id_bytes_; empty = no token.
  std::vector<uint32_t> id_offset_;
  std::string id_bytes_;
  int64_t vocab_size_ = 0;

  std::vector<uint32_t> pair_rank_;  // (first byte << 8 | second byte) -> rank, or kNone

  std::vector<AddedToken> added_;            // sorted by first byte, then longest first
  uint32_t added_first_[257] = {};           // added_ range per first byte: [f[b], f[b + 1])
  std::map<std::string, int32_t> specials_;  // text -> id, all added tokens
};

// Loader helpers shared by tiktoken.cc, hf_tokenizer.cc and tokenizer.cc.
namespace bpe_internal {

// The o200k_base `pat_str`, as tiktoken (and tokenizer.json Split pre-tokenizers converted from
// it) spell it: the only pre-tokenizer implemented (SplitO200k).
extern const char kO200kPattern[];

// The whole file; NotFound when it cannot be opened.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Adds `token` to `added` unless the same text with the same id is there; InvalidArgument
// (naming `source`) when the text is there with another id or the id with another text.
absl::Status MergeAddedToken(const AddedToken& token, const std::string& source,
                             std::vector<AddedToken>* added);

// Merges the added tokens of a model directory into `added`: dir/tokenizer_config.json's
// "added_tokens_decoder" ({"id": {"content": ..., "lstrip": ..., "rstrip": ...}}) and
// dir/added_tokens.json ({text: id}); each file is optional. InvalidArgument on bad files.
absl::Status ReadDirAddedTokens(const std::string& dir, std::vector<AddedToken>* added);

// LoadTiktokenJson / LoadTiktokenRanks with added tokens beyond the file's own.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTiktokenJsonWith(const std::string& path,
                                                                std::vector<AddedToken> extra);
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTiktokenRanksWith(const std::string& path,
                                                                 std::vector<AddedToken> added);

}  // namespace bpe_internal
}  // namespace sambay

#endif  // SAMBAY_TOKENIZER_BPE_H_
