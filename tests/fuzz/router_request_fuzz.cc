// libFuzzer target: the router's public request validation (router/request.h): protobuf bytes
// -> sambay.v1.GenerateRequest -> PrepareRequest (size limit, request id, text / token ids /
// chat prompt through the tokenizer, context, sampling, stopping), then StopMatcher over the
// prompt text with the request's stop strings.
//
// Input: a serialized GenerateRequest (bytes that do not parse are skipped). Model: the tiny
// model's config, tokenizer and stop ids (fuzz::TinyModelDir(); the build makes it), with the
// router's default limits. Properties of an accepted request: a non-empty prompt of in-vocabulary
// ids that fits the context with max_new_tokens >= 1; StopMatcher's output is the text up to
// the first stop string (all of it when none occurs), whatever the piece boundaries.
//
// Thread-safety: single-threaded (libFuzzer).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/config.h"
#include "router/request.h"
#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

namespace {

struct RouterSetup {
  std::unique_ptr<sambay::Tokenizer> tokenizer;
  sambay::RouterLimits limits;
};

const RouterSetup& Setup() {
  using namespace sambay;
  static const RouterSetup* setup = [] {
    auto* s = new RouterSetup();
    const std::string dir = fuzz::TinyModelDir();
    auto config = LoadModelConfig(dir);
    if (!config.ok()) fuzz::Fail("cannot load " + dir + ": " + config.status().ToString());
    auto tok = LoadTokenizer(dir);
    if (!tok.ok()) fuzz::Fail("cannot load the tokenizer: " + tok.status().ToString());
    auto eos = LoadStopTokenIds(dir, **tok);
    if (!eos.ok()) fuzz::Fail("cannot load the stop ids: " + eos.status().ToString());
    s->tokenizer = *std::move(tok);
    s->limits.vocab_size = config->vocab_size;
    s->limits.max_context = config->max_position_embeddings;
    s->limits.eos_ids = *eos;
    return s;
  }();
  return *setup;
}

// The text before the stop string that completes first, and whether one occurs (StopMatcher's
// rule, which makes its output independent of how the text is split into pieces).
std::string CutAtStop(const std::string& text, const std::vector<std::string>& stops,
                      bool* stopped) {
  // The stop that completes first in the whole text; on a tie, the one that starts earlier.
  size_t first = std::string::npos, first_end = std::string::npos;
  for (const std::string& s : stops) {
    const size_t at = text.find(s);
    if (at == std::string::npos) continue;
    if (at + s.size() < first_end || (at + s.size() == first_end && at < first)) {
      first = at;
      first_end = at + s.size();
    }
  }
  *stopped = first != std::string::npos;
  return *stopped ? text.substr(0, first) : text;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  Setup();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sambay;
  const RouterSetup& setup = Setup();
  sambay::v1::GenerateRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto prepared = PrepareRequest(req, *setup.tokenizer, setup.limits, /*random_seed=*/42);
  if (!prepared.ok()) {
    if (prepared.status().code() != absl::StatusCode::kInvalidArgument) {
      fuzz::Fail("PrepareRequest failed with a code other than INVALID_ARGUMENT: " +
                 prepared.status().ToString());
    }
    return 0;
  }
  const PreparedRequest& p = *prepared;
  if (p.prompt.empty()) fuzz::Fail("accepted an empty prompt");
  for (int32_t id : p.prompt) {
    if (id < 0 || id >= setup.limits.vocab_size) fuzz::Fail("accepted an out-of-vocabulary id");
  }
  for (int32_t id : p.stop_ids) {
    if (id < 0 || id >= setup.limits.vocab_size) fuzz::Fail("accepted an out-of-vocabulary stop");
  }
  if (p.max_new_tokens < 1 ||
      static_cast<int64_t>(p.prompt.size()) + p.max_new_tokens > setup.limits.max_context) {
    fuzz::Fail("accepted a request that does not fit the context");
  }
  if (!p.sampling.has_seed()) fuzz::Fail("the prepared sampling has no seed");

  // StopMatcher over the prompt text, in pieces of 1..7 bytes.
  if (req.prompt_case() != sambay::v1::GenerateRequest::kText) return 0;
  const std::string& text = req.text();
  StopMatcher matcher(p.stop_strings);
  std::string out;
  bool stopped = false;
  size_t step = 1;
  for (size_t off = 0; off < text.size() && !stopped; off += step, step = step % 7 + 1) {
    out += matcher.Push(text.substr(off, step), &stopped);
  }
  if (!stopped) out += matcher.Flush();
  bool expect_stopped = false;
  const std::string expected = CutAtStop(text, p.stop_strings, &expect_stopped);
  if (stopped != expect_stopped || out != expected) {
    fuzz::Fail("StopMatcher's output is not the text up to the first stop string");
  }
  return 0;
}
