// libFuzzer target: the npm tiktoken JSON vocabulary loader (LoadTiktokenJson,
// tokenizer/tokenizer.h): {"pat_str": ..., "special_tokens": {...}, "bpe_ranks": "..."}.
//
// Input: the file's text. A vocabulary that loads is exercised by fuzz::ExerciseTokenizer on a
// fixed sample (round trips through Decode and StreamDecoder).
//
// Thread-safety: single-threaded (libFuzzer).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sambay;
  static const fuzz::FuzzScratch* scratch = new fuzz::FuzzScratch();
  const std::string path = scratch->Write(
      "o200k_base.json", std::string_view(reinterpret_cast<const char*>(data), size));
  auto tok = LoadTiktokenJson(path);
  if (!tok.ok()) return 0;
  fuzz::ExerciseTokenizer(**tok,
                          "Hello, world! <|endoftext|> 12345 caf\xc3\xa9 \xf0\x9f\x98\x80\n\n");
  return 0;
}
