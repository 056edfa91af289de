// Pre-tokenization of the o200k_base family (Phi-4-mini tokenizer), and UTF-8 validation.
//
// SplitO200k reproduces, exactly, the regex `pat_str` of tiktoken's o200k_base:
//   [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//  |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//  |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
// with leftmost-first alternation and greedy quantifiers with backtracking, as the regex
// engines tiktoken uses evaluate it, including the `\s+(?!\S)` look-ahead that RE2 cannot
// express. It is a hand-written scanner over Unicode general categories (ICU).
//
// Stateless; thread-safe.
#ifndef SAMBAY_TOKENIZER_PRETOKENIZE_H_
#define SAMBAY_TOKENIZER_PRETOKENIZE_H_

#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace sambay {

// OK iff `text` is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF); otherwise
// InvalidArgument naming the byte offset of the first bad sequence.
absl::Status ValidateUtf8(std::string_view text);

// Appends the pre-tokens of `text` (views into it, in order, covering it exactly) to `pieces`.
// InvalidArgument on invalid UTF-8.
absl::Status SplitO200k(std::string_view text, std::vector<std::string_view>* pieces);

}  // namespace sambay

#endif  // SAMBAY_TOKENIZER_PRETOKENIZE_H_
