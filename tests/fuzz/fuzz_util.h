// Shared helpers of the libFuzzer targets in tests/fuzz/ (docs/reliability.md):
// where the tiny model and the o200k vocabulary are, a per-process scratch directory for the
// loaders that read files, splitting one input into several files, and the small model config
// the state-import target uses.
//
// Ownership: FuzzScratch owns its directory and removes it at exit. Thread-safety: none needed;
// a libFuzzer process runs its target on one thread.
#ifndef SAMBAY_TESTS_FUZZ_FUZZ_UTIL_H_
#define SAMBAY_TESTS_FUZZ_FUZZ_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/config.h"
#include "tokenizer/tokenizer.h"

namespace sambay::fuzz {

// Separates the files of a multi-file input (tokenizer_dir, checkpoint_index); also in the
// targets' dictionaries.
inline constexpr std::string_view kFileSeparator = "\n--8<--\n";

// The tiny model the build makes: $SAMBAY_FUZZ_MODEL, else <build dir>/models/tiny.
std::string TinyModelDir();
// The npm package's o200k_base.json: $SAMBAY_FUZZ_O200K, else the copy that
// scripts/install-deps.sh puts in third_party/npm. Empty when neither exists.
std::string O200kJsonPath();

// Aborts with `what` on stderr (a harness invariant or a checked property failed: a finding).
[[noreturn]] void Fail(const std::string& what);

// A private directory under $TMPDIR (default /tmp), removed when the process exits normally.
class FuzzScratch {
 public:
  FuzzScratch();
  ~FuzzScratch();
  FuzzScratch(const FuzzScratch&) = delete;
  FuzzScratch& operator=(const FuzzScratch&) = delete;

  const std::string& dir() const { return dir_; }
  // dir/name. Writes `data` there (replacing it); Fail()s when the write fails.
  std::string Write(const std::string& name, std::string_view data) const;
  // Removes dir/name if present.
  void Remove(const std::string& name) const;

 private:
  std::string dir_;
};

// Splits `data` at every kFileSeparator; always at least one part.
std::vector<std::string_view> SplitFiles(std::string_view data);

// Checks a tokenizer on `text`: encoding with and without specials never crashes; without
// specials, valid UTF-8 round-trips through Decode and through a StreamDecoder fed one id at a
// time; every id is below vocab_size; AppendTokenBytes near the vocabulary's ends and the
// Phi-4 chat format do not crash. Fail()s when a property does not hold.
void ExerciseTokenizer(const Tokenizer& tokenizer, std::string_view text);

// A small valid SambaY config (4 layers, hidden 16) so that whole states are a few KB.
const ModelConfig& MicroConfig();
// The 16-byte fingerprint the state-import target and its seeds use.
inline constexpr char kMicroFingerprint[] = "fuzzfingerprint0";

}  // namespace sambay::fuzz

#endif  // SAMBAY_TESTS_FUZZ_FUZZ_UTIL_H_
