// libFuzzer target: o200k byte-level BPE encode on arbitrary bytes (tokenizer/bpe.h,
// pretokenize.h), with the Phi-4 chat specials, then decode.
//
// Input: [flags byte][text bytes]. The text is encoded with and without special tokens
// (fuzz::ExerciseTokenizer: ids in range, valid UTF-8 round-trips through Decode and
// StreamDecoder, invalid UTF-8 is an error, never a crash). Flags bit 0: the text is also
// cut in two at the position the second byte names and encoded piecewise.
// Vocabulary: the npm package's o200k_base.json (fuzz::O200kJsonPath, loaded once, about 1 s);
// without it the target falls back to the tiny model's byte tokenizer and says so.
//
// Thread-safety: single-threaded (libFuzzer).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/bpe.h"
#include "tokenizer/tokenizer.h"

namespace {

const sambay::Tokenizer& LoadOnce() {
  using namespace sambay;
  static const Tokenizer* tok = [] {
    const std::string o200k = fuzz::O200kJsonPath();
    absl::StatusOr<std::unique_ptr<Tokenizer>> t;
    if (!o200k.empty()) {
      // The Phi-4 chat markers, as a Phi-4 model directory adds them.
      t = bpe_internal::LoadTiktokenJsonWith(o200k, {{"<|system|>", 200022},
                                                     {"<|end|>", 200020},
                                                     {"<|user|>", 200021},
                                                     {"<|assistant|>", 200019}});
    } else {
      fprintf(stderr, "fuzz_bpe_encode: no o200k_base.json; using the tiny model's tokenizer\n");
      t = LoadTokenizer(fuzz::TinyModelDir());
    }
    if (!t.ok()) fuzz::Fail("cannot load the tokenizer: " + t.status().ToString());
    return t->release();
  }();
  return *tok;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  LoadOnce();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sambay;
  if (size < 1) return 0;
  const Tokenizer& tok = LoadOnce();
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  fuzz::ExerciseTokenizer(tok, text);
  if ((data[0] & 1) != 0 && !text.empty()) {
    const size_t cut = static_cast<uint8_t>(text[0]) % (text.size() + 1);
    (void)tok.Encode(text.substr(0, cut), false);
    (void)tok.Encode(text.substr(cut), true);
  }
  return 0;
}
