// libFuzzer target: a model directory's tokenizer files through LoadTokenizer
// (tokenizer/tokenizer.h) and its stop tokens through LoadStopTokenIds (chat.h): the
// Hugging Face tokenizer.json loader, tokenizer_config.json (added_tokens_decoder, the byte
// tokenizer's class), added_tokens.json and generation_config.json.
//
// Input: up to four files separated by fuzz::kFileSeparator, in the order tokenizer.json,
// tokenizer_config.json, added_tokens.json, generation_config.json; an empty part means the
// file is absent (so the loader falls through to the byte tokenizer). A tokenizer that loads
// is exercised by fuzz::ExerciseTokenizer.
//
// Thread-safety: single-threaded (libFuzzer).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sambay;
  static const fuzz::FuzzScratch* scratch = new fuzz::FuzzScratch();
  static const char* const kNames[] = {"tokenizer.json", "tokenizer_config.json",
                                       "added_tokens.json", "generation_config.json"};
  const std::vector<std::string_view> parts =
      fuzz::SplitFiles(std::string_view(reinterpret_cast<const char*>(data), size));
  if (parts.size() > 4) return 0;
  for (size_t i = 0; i < 4; ++i) {
    if (i < parts.size() && !parts[i].empty()) {
      scratch->Write(kNames[i], parts[i]);
    } else {
      scratch->Remove(kNames[i]);
    }
  }
  auto tok = LoadTokenizer(scratch->dir());
  if (!tok.ok()) return 0;
  (void)LoadStopTokenIds(scratch->dir(), **tok);
  fuzz::ExerciseTokenizer(**tok, "Hello, world! <|end|> 12345 caf\xc3\xa9 \xf0\x9f\x98\x80\n\n");
  return 0;
}
