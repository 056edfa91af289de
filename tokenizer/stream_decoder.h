// StreamDecoder: turns tokens, one at a time, into text pieces that are always valid UTF-8.
//
// Bytes of a multi-byte character split across tokens are held back until the character is
// complete; the concatenation of all pieces (Push... then Finish) equals the full decode. An
// invalid byte sequence (which a model can produce) is emitted as U+FFFD, the replacement
// character, once it can no longer become valid, so pieces stay valid UTF-8; Finish flushes a
// trailing incomplete sequence the same way. For a token stream whose bytes are valid UTF-8 the
// pieces concatenate to exactly Tokenizer::Decode(ids).
//
// Ownership: borrows the tokenizer (must outlive the decoder). Thread-safety: none; one per
// sequence.
#ifndef SAMBAY_TOKENIZER_STREAM_DECODER_H_
#define SAMBAY_TOKENIZER_STREAM_DECODER_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "tokenizer/tokenizer.h"

namespace sambay {

class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer) : tok_(tokenizer) {}

  // The text completed by `id` (possibly empty). NotFound for an id with no token: the
  // caller decides whether to skip it.
  absl::StatusOr<std::string> Push(int32_t id);
  // Whatever is still held back, with an incomplete final sequence as U+FFFD.
  std::string Finish();

 private:
  std::string Drain(bool final);

  const Tokenizer& tok_;
  std::string pending_;
};

}  // namespace sambay

#endif  // SAMBAY_TOKENIZER_STREAM_DECODER_H_
