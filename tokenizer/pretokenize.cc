// The o200k_base pre-tokenizer as a hand-written scanner, and UTF-8 validation.
//
// The scanner walks the text once. At each piece start it evaluates the seven alternatives of
// the pattern (see pretokenize.h) in order and takes the first that matches; each alternative's
// backtracking is resolved in closed form:
//
//  A1 `P?U*W+C?`  (P = [^\r\n\p{L}\p{N}], U = [Lu Lt Lm Lo M], W = [Ll Lm Lo M], C the
//      contractions). From body start b, let [b, q) be the maximal U run. If the char at q is
//      in W (it can then only be Ll), W+ takes the maximal W run from q. Otherwise U* gives back
//      chars until W+ can start: the last char in [b, q) that is in both classes (Lm Lo M) ends
//      the match. With no such char the body fails. The optional P is tried first taken, then
//      not (only an M char is both in P and able to start the body).
//  A2 `P?U+W*C?`  The maximal U run from the body start, then the maximal W run.
//  A3 `\p{N}{1,3}`.
//  A4 ` ?[^\s\p{L}\p{N}]+[\r\n/]*`  Each quantifier maximal; nothing after them can fail.
//  A5 `\s*[\r\n]+`  Over the maximal whitespace run: up to and including its last \r or \n.
//  A6 `\s+(?!\S)`  The whole run at end of text, else the run less its last char (>= 1 left).
//  A7 `\s+`  The whole run (a single whitespace char before a non-space).
//
// (?i) in the contractions follows Rust `regex` simple case folding: 's also matches 'S and
// U+017F LATIN SMALL LETTER LONG S; the other letters have only their ASCII case pair.
#include "tokenizer/pretokenize.h"

#include <unicode/uchar.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sambay {
namespace {

// Character class bits.
constexpr uint8_t kUpper = 1;     // Lu, Lt
constexpr uint8_t kLower = 2;     // Ll
constexpr uint8_t kOtherL = 4;    // Lm, Lo
constexpr uint8_t kMark = 8;      // Mn, Mc, Me
constexpr uint8_t kNumber = 16;   // Nd, Nl, No
constexpr uint8_t kSpace = 32;    // White_Space
constexpr uint8_t kNewline = 64;  // \r, \n (also kSpace)

constexpr uint8_t kLetter = kUpper | kLower | kOtherL;
constexpr uint8_t kUClass = kUpper | kOtherL | kMark;         // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
constexpr uint8_t kWClass = kLower | kOtherL | kMark;         // [\p{Ll}\p{Lm}\p{Lo}\p{M}]
constexpr uint8_t kBoth = kOtherL | kMark;                    // in both U and W
constexpr uint8_t kNotPrefix = kNewline | kLetter | kNumber;  // complement of [^\r\n\p{L}\p{N}]
constexpr uint8_t kNotPunct = kSpace | kLetter | kNumber;     // complement of [^\s\p{L}\p{N}]

uint8_t ClassifyWithIcu(UChar32 c) {
  uint8_t bits = 0;
  switch (u_charType(c)) {
    case U_UPPERCASE_LETTER:
    case U_TITLECASE_LETTER:
      bits = kUpper;
      break;
    case U_LOWERCASE_LETTER:
      bits = kLower;
      break;
    case U_MODIFIER_LETTER:
    case U_OTHER_LETTER:
      bits = kOtherL;
      break;
    case U_NON_SPACING_MARK:
    case U_COMBINING_SPACING_MARK:
    case U_ENCLOSING_MARK:
      bits = kMark;
      break;
    case U_DECIMAL_DIGIT_NUMBER:
    case U_LETTER_NUMBER:
    case U_OTHER_NUMBER:
      bits = kNumber;
      break;
    default:
      break;
  }
  if (u_isUWhiteSpace(c)) bits |= kSpace;
  if (c == '\r' || c == '\n') bits |= kNewline;
  return bits;
}

// Classes of all BMP code points (the ASCII entries double as the ASCII fast path), built once.
struct BmpTable {
  std::array<uint8_t, 0x10000> bits;
  BmpTable() {
    for (UChar32 c = 0; c < 0x10000; ++c) bits[c] = ClassifyWithIcu(c);
  }
};

const BmpTable& Bmp() {
  static const BmpTable* const table = new BmpTable();
  return *table;
}

// One decoded code point of already-validated UTF-8.
struct Char {
  uint8_t cls;  // class bits
  uint8_t len;  // bytes
  uint32_t cp;
};

class Scanner {
 public:
  explicit Scanner(std::string_view text)
      : p_(reinterpret_cast<const uint8_t*>(text.data())), n_(text.size()), bmp_(Bmp().bits) {}

  // The end (byte offset) of the piece starting at `s` < n.
  size_t PieceEnd(size_t s) const {
    const Char c = At(s);
    if (c.cls & kLetter) {
      size_t e = Body1(s);
      if (e == kFail) e = Body2(s);
      return e;
    }
    if (c.cls & kNumber) {
      size_t e = s + c.len;
      for (int k = 1; k < 3 && e < n_; ++k) {
        const Char d = At(e);
        if (!(d.cls & kNumber)) break;
        e += d.len;
      }
      return e;
    }
    if (!(c.cls & kNotPrefix)) {  // the optional prefix of A1/A2 can be taken
      const size_t b = s + c.len;
      size_t e = b < n_ ? Body1(b) : kFail;
      if (e == kFail && (c.cls & kUClass)) e = Body1(s);  // a mark: A1 without the prefix
      if (e == kFail && b < n_) e = Body2(b);
      if (e != kFail) return e;
    }
    // A4.
    size_t start = kFail;
    if (c.cp == ' ' && s + 1 < n_ && !(At(s + 1).cls & kNotPunct)) {
      start = s + 1;
    } else if (!(c.cls & kNotPunct)) {
      start = s;
    }
    if (start != kFail) {
      size_t e = start;
      while (e < n_) {
        const Char d = At(e);
        if (d.cls & kNotPunct) break;
        e += d.len;
      }
      while (e < n_ && (p_[e] == '\r' || p_[e] == '\n' || p_[e] == '/')) ++e;
      return e;
    }
    // A5-A7: c is whitespace.
    size_t e = s;
    size_t last_start = s;
    size_t after_newline = kFail;
    while (e < n_) {
      const Char d = At(e);
      if (!(d.cls & kSpace)) break;
      last_start = e;
      e += d.len;
      if (d.cls & kNewline) after_newline = e;
    }
    if (after_newline != kFail) return after_newline;  // A5
    if (e == n_) return e;                             // A6 at end of text
    if (last_start > s) return last_start;             // A6 backed off by one
    return e;                                          // A7
  }

 private:
  static constexpr size_t kFail = ~size_t{0};

  Char At(size_t i) const {
    const uint8_t b0 = p_[i];
    if (b0 < 0x80) return {bmp_[b0], 1, b0};
    uint32_t cp;
    uint8_t len;
    if (b0 < 0xE0) {
      cp = ((b0 & 0x1Fu) << 6) | (p_[i + 1] & 0x3Fu);
      len = 2;
    } else if (b0 < 0xF0) {
      cp = ((b0 & 0x0Fu) << 12) | ((p_[i + 1] & 0x3Fu) << 6) | (p_[i + 2] & 0x3Fu);
      len = 3;
    } else {
      cp = ((b0 & 0x07u) << 18) | ((p_[i + 1] & 0x3Fu) << 12) | ((p_[i + 2] & 0x3Fu) << 6) |
           (p_[i + 3] & 0x3Fu);
      len = 4;
      return {ClassifyWithIcu(static_cast<UChar32>(cp)), len, cp};
    }
    return {bmp_[cp], len, cp};
  }

  // The end of the maximal run from `i` of chars whose class intersects `mask`.
  size_t Run(size_t i, uint8_t mask) const {
    while (i < n_) {
      if (p_[i] < 0x80) {
        if (!(bmp_[p_[i]] & mask)) break;
        ++i;
        continue;
      }
      const Char d = At(i);
      if (!(d.cls & mask)) break;
      i += d.len;
    }
    return i;
  }

  // `U*W+C?` from b: the match end, or kFail.
  size_t Body1(size_t b) const {
    size_t i = b;
    size_t after_both = kFail;  // end of the last char of the U run that is also in W
    while (i < n_) {
      const Char d = At(i);
      if (!(d.cls & kUClass)) break;
      i += d.len;
      if (d.cls & kBoth) after_both = i;
    }
    if (i < n_ && (At(i).cls & kLower)) return Contraction(Run(i, kWClass));
    if (after_both == kFail) return kFail;
    return Contraction(after_both);
  }

  // `U+W*C?` from b: the match end, or kFail.
  size_t Body2(size_t b) const {
    if (!(At(b).cls & kUClass)) return kFail;
    return Contraction(Run(Run(b, kUClass), kWClass));
  }

  // e extended by an optional (?i:'s|'t|'re|'ve|'m|'ll|'d) at e.
  size_t Contraction(size_t e) const {
    if (e + 1 >= n_ || p_[e] != '\'') return e;
    const uint8_t a = p_[e + 1] | 0x20;  // ASCII lower case for letters
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return e + 2;
    if (p_[e + 1] == 0xC5 && e + 2 < n_ && p_[e + 2] == 0xBF) return e + 3;  // U+017F
    if (e + 2 >= n_) return e;
    const uint8_t b = p_[e + 2] | 0x20;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return e + 3;
    return e;
  }

  const uint8_t* p_;
  size_t n_;
  const std::array<uint8_t, 0x10000>& bmp_;
};

absl::Status Utf8Error(size_t offset, const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat("invalid UTF-8 at byte offset ", offset, ": ", what));
}

}  // namespace

absl::Status ValidateUtf8(std::string_view text) {
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    const uint8_t b0 = p[i];
    if (b0 < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b0 < 0xC2) {
      if (b0 < 0xC0) return Utf8Error(i, "unexpected continuation byte");
      return Utf8Error(i, "overlong 2-byte sequence");
    } else if (b0 < 0xE0) {
      len = 2;
    } else if (b0 < 0xF0) {
      len = 3;
      if (b0 == 0xE0) lo = 0xA0;  // no overlongs
      if (b0 == 0xED) hi = 0x9F;  // no surrogates
    } else if (b0 < 0xF5) {
      len = 4;
      if (b0 == 0xF0) lo = 0x90;  // no overlongs
      if (b0 == 0xF4) hi = 0x8F;  // <= U+10FFFF
    } else {
      return Utf8Error(i, absl::StrFormat("invalid lead byte 0x%02X", b0));
    }
    for (size_t k = 1; k < len; ++k) {
      if (i + k >= n) return Utf8Error(i, "truncated sequence at end of text");
      const uint8_t b = p[i + k];
      if (b < 0x80 || b > 0xBF) return Utf8Error(i, "truncated sequence");
      if (k == 1 && (b < lo || b > hi)) {
        if (b0 == 0xED) return Utf8Error(i, "surrogate code point");
        if (b0 == 0xF4) return Utf8Error(i, "code point above U+10FFFF");
        return Utf8Error(i, "overlong sequence");
      }
    }
    i += len;
  }
  return absl::OkStatus();
}

absl::Status SplitO200k(std::string_view text, std::vector<std::string_view>* pieces) {
  if (absl::Status st = ValidateUtf8(text); !st.ok()) return st;
  const Scanner scanner(text);
  size_t s = 0;
  while (s < text.size()) {
    const size_t e = scanner.PieceEnd(s);
    pieces->push_back(text.substr(s, e - s));
    s = e;
  }
  return absl::OkStatus();
}

}  // namespace sambay
