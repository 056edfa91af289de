// BpeTokenizer: the rank table, validation, the tiktoken merge loop, special-token scanning.
#include "tokenizer/bpe.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "tokenizer/pretokenize.h"

namespace sambay {
namespace {

constexpr uint32_t kNone = 0xFFFFFFFFu;  // "no token": larger than every rank
// Pre-tokens up to this many bytes merge in on-stack arrays with tiktoken's linear scan;
// longer ones (long words, whitespace runs) use a heap, O(n log n), with the same result.
constexpr size_t kStackPiece = 64;

// The first min(n, 8) bytes of p, little-endian, zero-padded; reads only p[0, n).
inline uint64_t LoadHead(const char* p, size_t n) {
  uint64_t v = 0;
  if (n >= 8) {
    std::memcpy(&v, p, 8);
  } else if (n >= 4) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + n - 4, 4);
    v = lo | (static_cast<uint64_t>(hi) << ((n - 4) * 8));  // overlapping bytes are equal
  } else if (n > 0) {
    const auto b = [p](size_t i) { return static_cast<uint64_t>(static_cast<uint8_t>(p[i])); };
    v = b(0) | (b(n / 2) << (8 * (n / 2))) | (b(n - 1) << (8 * (n - 1)));
  }
  return v;
}

inline uint64_t Mum(uint64_t a, uint64_t b) {
  const unsigned __int128 r = static_cast<unsigned __int128>(a) * b;
  return static_cast<uint64_t>(r) ^ static_cast<uint64_t>(r >> 64);
}

// The Bloom filter bits of a key with hash h (bits of h that neither the slot index, its low
// bits, nor the filter word, its top bits, use much).
inline uint64_t FilterBits(uint64_t h) {
  return (uint64_t{1} << ((h >> 24) & 63)) | (uint64_t{1} << ((h >> 30) & 63)) |
         (uint64_t{1} << ((h >> 36) & 63));
}

std::string Printable(std::string_view bytes) {
  return absl::StrCat("\"", absl::CHexEscape(absl::string_view(bytes.data(), bytes.size())), "\"");
}

// Length of the Unicode White_Space character starting at s[pos] (0 if none).
size_t WhitespaceAt(std::string_view s, size_t pos) {
  const auto u = [&](size_t i) { return static_cast<uint8_t>(s[pos + i]); };
  const size_t left = s.size() - pos;
  if (left == 0) return 0;
  const uint8_t c = u(0);
  if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return 1;
  if (left >= 2 && c == 0xC2 && (u(1) == 0x85 || u(1) == 0xA0)) return 2;
  if (left < 3) return 0;
  if (c == 0xE1 && u(1) == 0x9A && u(2) == 0x80) return 3;  // U+1680
  if (c == 0xE2 && u(1) == 0x80 && (u(2) <= 0x8A || u(2) == 0xA8 || u(2) == 0xA9 || u(2) == 0xAF) &&
      u(2) >= 0x80) {
    return 3;  // U+2000..200A, U+2028, U+2029, U+202F
  }
  if (c == 0xE2 && u(1) == 0x81 && u(2) == 0x9F) return 3;  // U+205F
  if (c == 0xE3 && u(1) == 0x80 && u(2) == 0x80) return 3;  // U+3000
  return 0;
}

// Length of the White_Space character ending at s[end - 1] (0 if none).
size_t WhitespaceBefore(std::string_view s, size_t end) {
  for (size_t len = 1; len <= 3 && len <= end; ++len) {
    if (WhitespaceAt(s.substr(0, end), end - len) == len) return len;
  }
  return 0;
}

// Checks every token's length, rank and id and every added token's text and id; sets the
// largest rank and id seen (-1 when none).
absl::Status CheckRanges(const std::string& who, const std::vector<BpeToken>& tokens,
                         const std::vector<AddedToken>& added, int32_t* max_rank, int32_t* max_id) {
  for (const BpeToken& tok : tokens) {
    if (tok.bytes.empty() || tok.bytes.size() > kMaxBpeTokenBytes) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": token with rank ", tok.rank, " has ",
                                                     tok.bytes.size(), " bytes (1..",
                                                     kMaxBpeTokenBytes, " allowed)"));
    }
    if (tok.rank < 0 || tok.rank > kMaxBpeId || tok.id < 0 || tok.id > kMaxBpeId) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": token ", Printable(tok.bytes),
                                                     " has rank ", tok.rank, " / id ", tok.id,
                                                     " outside 0..", kMaxBpeId));
    }
    *max_rank = std::max(*max_rank, tok.rank);
    *max_id = std::max(*max_id, tok.id);
  }
  for (const AddedToken& a : added) {
    if (a.text.empty() || a.id < 0 || a.id > kMaxBpeId || !ValidateUtf8(a.text).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": added token ", Printable(a.text),
                                                     " (id ", a.id,
                                                     ") is empty, not UTF-8 or out of range"));
    }
    *max_id = std::max(*max_id, a.id);
  }
  return absl::OkStatus();
}

// The mergeable tokens indexed every way Create needs; the views point into the tokens.
struct TokenIndex {
  std::vector<int32_t> rank_to_id;                          // -1: no token
  std::vector<std::string_view> by_id;                      // empty: no token
  absl::flat_hash_map<std::string_view, int32_t> by_bytes;  // bytes -> rank
  std::vector<std::string_view> keys;                       // for BpeRankTable::Build
  std::vector<int32_t> values;
};

// rank -> id, id -> bytes; duplicates of ranks, ids and bytes are errors.
absl::Status IndexTokens(const std::string& who, const std::vector<BpeToken>& tokens,
                         int32_t max_rank, int32_t max_id, TokenIndex* ix) {
  ix->rank_to_id.assign(static_cast<size_t>(max_rank + 1), -1);
  ix->by_id.resize(static_cast<size_t>(max_id + 1));
  ix->by_bytes.reserve(tokens.size());
  ix->keys.reserve(tokens.size());
  ix->values.reserve(tokens.size());
  for (const BpeToken& tok : tokens) {
    if (ix->rank_to_id[tok.rank] >= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, ": duplicate rank ", tok.rank, " (token ", Printable(tok.bytes), ")"));
    }
    if (!ix->by_id[tok.id].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": duplicate id ", tok.id, " (tokens ",
                                                     Printable(ix->by_id[tok.id]), " and ",
                                                     Printable(tok.bytes), ")"));
    }
    auto [it, inserted] = ix->by_bytes.emplace(tok.bytes, tok.rank);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": duplicate token ",
                                                     Printable(tok.bytes), " (ranks ", it->second,
                                                     " and ", tok.rank, ")"));
    }
    ix->rank_to_id[tok.rank] = tok.id;
    ix->by_id[tok.id] = tok.bytes;
    ix->keys.push_back(tok.bytes);
    ix->values.push_back(tok.rank);
  }
  return absl::OkStatus();
}

// byte_rank[b] = the rank of the single byte b; every byte must be a token.
absl::Status FindByteRanks(const std::string& who,
                           const absl::flat_hash_map<std::string_view, int32_t>& by_bytes,
                           int32_t byte_rank[256]) {
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    auto it = by_bytes.find(std::string_view(&c, 1));
    if (it == by_bytes.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, ": byte 0x", absl::Hex(b, absl::kZeroPad2),
                       " is not a token (byte-level BPE needs all 256)"));
    }
    byte_rank[b] = it->second;
  }
  return absl::OkStatus();
}

// Added tokens: their own ids, or a mergeable id with the same bytes. Fills `specials` (text ->
// id); texts and ids must be distinct.
absl::Status IndexAddedTokens(const std::string& who, const std::vector<AddedToken>& added,
                              const std::vector<std::string_view>& by_id,
                              std::map<std::string, int32_t>* specials) {
  std::map<int32_t, std::string_view> added_ids;
  for (const AddedToken& a : added) {
    if (specials->count(a.text) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, ": added token ", Printable(a.text), " is listed twice"));
    }
    if (!by_id[a.id].empty() && by_id[a.id] != a.text) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": added token ", Printable(a.text),
                                                     " has id ", a.id, ", which is token ",
                                                     Printable(by_id[a.id])));
    }
    if (auto [it, ok] = added_ids.emplace(a.id, a.text); !ok) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": added tokens ", Printable(it->second),
                                                     " and ", Printable(a.text), " share id ",
                                                     a.id));
    }
    (*specials)[a.text] = a.id;
  }
  return absl::OkStatus();
}

// Concatenates the bytes of every id into `bytes`; id i is [offset[i], offset[i + 1]).
void BuildIdBytes(const std::vector<std::string_view>& by_id, std::vector<uint32_t>* offset,
                  std::string* bytes) {
  offset->resize(by_id.size() + 1);
  size_t total = 0;
  for (const auto& b : by_id) total += b.size();
  bytes->reserve(total);
  for (size_t i = 0; i < by_id.size(); ++i) {
    (*offset)[i] = static_cast<uint32_t>(bytes->size());
    bytes->append(by_id[i]);
  }
  (*offset)[by_id.size()] = static_cast<uint32_t>(bytes->size());
}

// The rank of every two-byte token, indexed by (first byte << 8 | second byte); kNone if none.
void BuildPairRanks(const BpeRankTable& table, std::vector<uint32_t>* pair_rank) {
  pair_rank->assign(65536, kNone);
  for (int a = 0; a < 256; ++a) {
    for (int b = 0; b < 256; ++b) {
      const char pair[2] = {static_cast<char>(a), static_cast<char>(b)};
      const int32_t r = table.Find(pair, 2);
      if (r >= 0) (*pair_rank)[(a << 8) | b] = static_cast<uint32_t>(r);
    }
  }
}

// Added tokens by first byte, longest first (the first match at a position is the longest);
// first[b] is where the tokens starting with byte b begin (first[256] = added->size()).
void SortAddedTokens(std::vector<AddedToken>* added, uint32_t first[257]) {
  std::stable_sort(added->begin(), added->end(), [](const AddedToken& x, const AddedToken& y) {
    const uint8_t fx = static_cast<uint8_t>(x.text[0]);
    const uint8_t fy = static_cast<uint8_t>(y.text[0]);
    if (fx != fy) return fx < fy;
    return x.text.size() > y.text.size();
  });
  size_t k = 0;
  for (int b = 0; b <= 256; ++b) {
    while (k < added->size() && static_cast<uint8_t>((*added)[k].text[0]) < b) ++k;
    first[b] = static_cast<uint32_t>(k);
  }
}

}  // namespace

// ---- BpeRankTable --------------------------------------------------------------------------

uint64_t BpeRankTable::Hash(const char* key, size_t len) {
  uint64_t h = Mum(len ^ 0x9E3779B97F4A7C15ull, 0xA0761D6478BD642Full);
  size_t i = 0;
  for (; i + 8 <= len; i += 8) h = Mum(h ^ LoadHead(key + i, 8), 0xE7037ED1A0B428DBull);
  if (i < len) h = Mum(h ^ LoadHead(key + i, len - i), 0x8EBC6AF09C88C6E3ull);
  return h;
}

void BpeRankTable::Build(const std::vector<std::string_view>& keys,
                         const std::vector<int32_t>& values) {
  size_t cap = 16;
  while (cap < keys.size() * 5 / 2) cap <<= 1;  // load factor <= 0.4: short probe runs
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  arena_.clear();
  size_t total = 0;
  for (const auto& k : keys) total += k.size();
  arena_.reserve(total);
  filter_.assign(size_t{1} << kFilterWordBits, 0);
  for (size_t k = 0; k < keys.size(); ++k) {
    const std::string_view key = keys[k];
    const uint64_t h = Hash(key.data(), key.size());
    filter_[h >> (64 - kFilterWordBits)] |= FilterBits(h);
    Slot s;
    s.head = LoadHead(key.data(), key.size());
    s.offset = static_cast<uint32_t>(arena_.size());
    s.value_len = (static_cast<uint32_t>(values[k]) << 8) | static_cast<uint32_t>(key.size());
    arena_.append(key);
    uint64_t i = h & mask_;
    while ((slots_[i].value_len & 0xFF) != 0) i = (i + 1) & mask_;
    slots_[i] = s;
  }
}

int32_t BpeRankTable::Find(const char* key, size_t len) const {
  if (len == 0 || len > kMaxBpeTokenBytes || slots_.empty()) return -1;
  const uint64_t h = Hash(key, len);
  const uint64_t bits = FilterBits(h);
  if ((filter_[h >> (64 - kFilterWordBits)] & bits) != bits) return -1;
  const uint64_t head = LoadHead(key, len);
  uint64_t i = h & mask_;
  while (true) {
    const Slot& s = slots_[i];
    const uint32_t slen = s.value_len & 0xFF;
    if (slen == 0) return -1;
    if (slen == len && s.head == head &&
        (len <= 8 || std::memcmp(arena_.data() + s.offset + 8, key + 8, len - 8) == 0)) {
      return static_cast<int32_t>(s.value_len >> 8);
    }
    i = (i + 1) & mask_;
  }
}

// ---- BpeTokenizer: construction ------------------------------------------------------------

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Create(std::string name,
                                                                   std::vector<BpeToken> tokens,
                                                                   std::vector<AddedToken> added) {
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  t->name_ = std::move(name);
  const std::string& who = t->name_;
  int32_t max_rank = -1, max_id = -1;
  SAMBAY_RETURN_IF_ERROR(CheckRanges(who, tokens, added, &max_rank, &max_id));
  TokenIndex ix;
  SAMBAY_RETURN_IF_ERROR(IndexTokens(who, tokens, max_rank, max_id, &ix));
  SAMBAY_RETURN_IF_ERROR(FindByteRanks(who, ix.by_bytes, t->byte_rank_));
  SAMBAY_RETURN_IF_ERROR(IndexAddedTokens(who, added, ix.by_id, &t->specials_));
  t->rank_to_id_ = std::move(ix.rank_to_id);
  for (const AddedToken& a : added) ix.by_id[a.id] = a.text;
  t->vocab_size_ = max_id + 1;
  BuildIdBytes(ix.by_id, &t->id_offset_, &t->id_bytes_);
  t->table_.Build(ix.keys, ix.values);
  BuildPairRanks(t->table_, &t->pair_rank_);
  t->added_ = std::move(added);
  SortAddedTokens(&t->added_, t->added_first_);
  return t;
}

// ---- BpeTokenizer: encoding ----------------------------------------------------------------

void BpeTokenizer::EncodePiece(std::string_view piece, std::vector<int32_t>* out) const {
  const char* p = piece.data();
  const size_t n = piece.size();
  if (n == 1) {
    out->push_back(rank_to_id_[byte_rank_[static_cast<uint8_t>(p[0])]]);
    return;
  }
  if (const int32_t whole = Rank(p, n); whole >= 0) {
    out->push_back(rank_to_id_[whole]);
    return;
  }
  if (n > kStackPiece) {
    EncodeLongPiece(piece, out);
    return;
  }
  // tiktoken's _byte_pair_merge: parts[i] starts at `start`, is token `tok`, and merging it with
  // parts[i + 1] would give token `pair` (kNone if that is no token). parts[count - 1] is the
  // end sentinel.
  struct Part {
    uint32_t start, pair, tok;
  };
  Part parts[kStackPiece + 1];
  const auto u8 = [p](size_t i) { return static_cast<uint8_t>(p[i]); };
  uint32_t best = kNone;
  size_t best_i = 0;
  for (size_t i = 0; i + 1 < n; ++i) {
    const uint32_t r = pair_rank_[(u8(i) << 8) | u8(i + 1)];
    parts[i] = {static_cast<uint32_t>(i), r, static_cast<uint32_t>(byte_rank_[u8(i)])};
    if (r < best) {
      best = r;
      best_i = i;
    }
  }
  parts[n - 1] = {static_cast<uint32_t>(n - 1), kNone,
                  static_cast<uint32_t>(byte_rank_[u8(n - 1)])};
  parts[n] = {static_cast<uint32_t>(n), kNone, kNone};
  size_t count = n + 1;
  // Rank of p[a, b), or kNone (spans here are >= 3 bytes: the pair table does not apply).
  const auto span_rank = [&](size_t a, size_t b) {
    return static_cast<uint32_t>(Rank(p + a, b - a));
  };
  while (best != kNone) {
    const size_t i = best_i;  // merge parts i and i + 1 (i + 2 < count: i + 1 is no sentinel)
    parts[i].tok = best;
    if (i > 0) parts[i - 1].pair = span_rank(parts[i - 1].start, parts[i + 2].start);
    parts[i].pair = i + 3 < count ? span_rank(parts[i].start, parts[i + 3].start) : kNone;
    std::memmove(&parts[i + 1], &parts[i + 2], (count - i - 2) * sizeof(Part));
    --count;
    best = kNone;
    for (size_t j = 0; j + 1 < count; ++j) {
      if (parts[j].pair < best) {
        best = parts[j].pair;
        best_i = j;
      }
    }
  }
  for (size_t j = 0; j + 1 < count; ++j) out->push_back(rank_to_id_[parts[j].tok]);
}

void BpeTokenizer::EncodeLongPiece(std::string_view piece, std::vector<int32_t>* out) const {
  // The same merges as the linear scan: at each step the valid (pair rank, start) minimum,
  // i.e. the lowest rank, leftmost on ties. Parts are linked by start offset; nxt[s] == 0
  // marks a part merged into its left neighbour; heap entries are checked against pair[s].
  const char* p = piece.data();
  const uint32_t n = static_cast<uint32_t>(piece.size());
  const auto u8 = [p](size_t i) { return static_cast<uint8_t>(p[i]); };
  std::vector<uint32_t> nxt(n), prv(n), pair(n), tok(n);
  std::vector<uint64_t> heap;
  heap.reserve(n);
  for (uint32_t s = 0; s < n; ++s) {
    nxt[s] = s + 1;
    prv[s] = s - 1;  // wraps for s == 0; never read then
    tok[s] = static_cast<uint32_t>(byte_rank_[u8(s)]);
    pair[s] = s + 1 < n ? pair_rank_[(u8(s) << 8) | u8(s + 1)] : kNone;
    if (pair[s] != kNone) heap.push_back((static_cast<uint64_t>(pair[s]) << 32) | s);
  }
  const auto cmp = std::greater<uint64_t>();
  std::make_heap(heap.begin(), heap.end(), cmp);
  const auto push = [&](uint32_t s) {
    if (pair[s] == kNone) return;
    heap.push_back((static_cast<uint64_t>(pair[s]) << 32) | s);
    std::push_heap(heap.begin(), heap.end(), cmp);
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), cmp);
    const uint64_t e = heap.back();
    heap.pop_back();
    const uint32_t s = static_cast<uint32_t>(e), r = static_cast<uint32_t>(e >> 32);
    if (nxt[s] == 0 || pair[s] != r) continue;  // stale
    const uint32_t t = nxt[s], v = nxt[t];      // t is merged into s; v is the next part (or n)
    tok[s] = r;
    nxt[t] = 0;
    nxt[s] = v;
    if (v < n) prv[v] = s;
    pair[s] = v < n ? static_cast<uint32_t>(Rank(p + s, nxt[v] - s)) : kNone;
    push(s);
    if (s > 0) {
      const uint32_t q = prv[s];
      pair[q] = static_cast<uint32_t>(Rank(p + q, v - q));
      push(q);
    }
  }
  for (uint32_t s = 0; s < n; s = nxt[s]) out->push_back(rank_to_id_[tok[s]]);
}

absl::Status BpeTokenizer::EncodeOrdinary(std::string_view text,
                                          std::vector<std::string_view>* pieces,
                                          std::vector<int32_t>* out) const {
  pieces->clear();
  SAMBAY_RETURN_IF_ERROR(SplitO200k(text, pieces));
  for (std::string_view piece : *pieces) EncodePiece(piece, out);
  return absl::OkStatus();
}

const AddedToken* BpeTokenizer::MatchAdded(std::string_view text, size_t pos) const {
  const uint8_t b = static_cast<uint8_t>(text[pos]);
  const std::string_view rest = text.substr(pos);
  for (uint32_t k = added_first_[b]; k < added_first_[b + 1]; ++k) {
    const std::string& s = added_[k].text;
    if (rest.size() >= s.size() && std::memcmp(rest.data(), s.data(), s.size()) == 0) {
      return &added_[k];
    }
  }
  return nullptr;
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::Encode(std::string_view text,
                                                          bool allow_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  std::vector<std::string_view> pieces;
  absl::Status st;
  if (!allow_special || added_.empty()) {
    st = EncodeOrdinary(text, &pieces, &ids);
  } else {
    size_t seg = 0;  // start of the ordinary text not yet encoded
    for (size_t pos = 0; pos < text.size() && st.ok(); ++pos) {
      const uint8_t b = static_cast<uint8_t>(text[pos]);
      if (added_first_[b] == added_first_[b + 1]) continue;
      const AddedToken* a = MatchAdded(text, pos);
      if (a == nullptr) continue;
      size_t start = pos, end = pos + a->text.size();
      if (a->lstrip) {
        while (size_t w = WhitespaceBefore(text.substr(0, start), start)) {
          if (start - w < seg) break;
          start -= w;
        }
      }
      if (a->rstrip) {
        while (size_t w = WhitespaceAt(text, end)) end += w;
      }
      st = EncodeOrdinary(text.substr(seg, start - seg), &pieces, &ids);
      ids.push_back(a->id);
      seg = end;
      pos = end - 1;
    }
    if (st.ok() && seg < text.size()) st = EncodeOrdinary(text.substr(seg), &pieces, &ids);
  }
  if (!st.ok()) {
    // Report the offset in the whole text, not in the segment that failed.
    SAMBAY_RETURN_IF_ERROR(ValidateUtf8(text));
    return st;
  }
  return ids;
}

// ---- BpeTokenizer: decoding and lookups ----------------------------------------------------

absl::Status BpeTokenizer::AppendTokenBytes(int32_t id, std::string* out) const {
  if (id >= 0 && id < vocab_size_) {
    const uint32_t a = id_offset_[id], b = id_offset_[id + 1];
    if (b > a) {
      out->append(id_bytes_.data() + a, b - a);
      return absl::OkStatus();
    }
  }
  return absl::NotFoundError(absl::StrCat("token id ", id, " has no token in ", name_,
                                          " (vocabulary size ", vocab_size_, ")"));
}

std::optional<int32_t> BpeTokenizer::SpecialTokenId(std::string_view text) const {
  auto it = specials_.find(std::string(text));
  if (it == specials_.end()) return std::nullopt;
  return it->second;
}

}  // namespace sambay
