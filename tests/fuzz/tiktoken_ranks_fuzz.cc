// libFuzzer target: the tiktoken rank-file loader (LoadTiktokenRanks,
// tokenizer/tokenizer.h): "<base64 token> <rank>" lines and the "! <first> <tokens...>"
// compact form, with two fixed special tokens.
//
// Input: the file's text. A vocabulary that loads is exercised by fuzz::ExerciseTokenizer.
//
// Thread-safety: single-threaded (libFuzzer).
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sambay;
  static const fuzz::FuzzScratch* scratch = new fuzz::FuzzScratch();
  static const std::map<std::string, int32_t> kSpecials = {{"<|endoftext|>", 1000},
                                                           {"<|end|>", 1001}};
  const std::string path =
      scratch->Write("vocab.tiktoken", std::string_view(reinterpret_cast<const char*>(data), size));
  auto tok = LoadTiktokenRanks(path, kSpecials);
  if (!tok.ok()) return 0;
  fuzz::ExerciseTokenizer(**tok, "Hello, world! <|end|> 12345 caf\xc3\xa9 \xf0\x9f\x98\x80\n\n");
  return 0;
}
