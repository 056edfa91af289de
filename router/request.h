// Request preparation for the router: validates a public GenerateRequest before any worker is
// touched (INVALID_ARGUMENT naming the field), turns its prompt into token ids, applies the
// defaults, and matches stop strings on the streamed text. The chat encoding is shared with
// Tokenize, so both accept and refuse the same messages with the same errors.
//
// Stateless functions; StopMatcher is a value type used by one request (not thread-safe).
#ifndef SAMBAY_ROUTER_REQUEST_H_
#define SAMBAY_ROUTER_REQUEST_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sambay/v1/generate.pb.h"
#include "tokenizer/tokenizer.h"

namespace sambay {

// What the router knows about the served model and its own limits.
struct RouterLimits {
  int64_t vocab_size = 0;
  int64_t max_context = 0;
  std::vector<int32_t> eos_ids;          // generation_config.json
  int64_t default_max_new_tokens = 256;  // when the request leaves it 0
  int64_t max_new_tokens_limit = 32768;
  int64_t max_request_bytes = 4 << 20;
  int max_stop_strings = 16;
  int max_stop_string_bytes = 256;
};

struct PreparedRequest {
  std::string request_id;
  std::vector<int32_t> prompt;
  sambay::v1::SamplingParams sampling;  // seed always set
  int64_t max_new_tokens = 0;           // total new tokens, >= 1
  std::vector<int32_t> stop_ids;        // user stop ids + EOS unless ignore_eos
  std::vector<std::string> stop_strings;
  bool logprobs = false;
  int top_logprobs = 0;
  // Who made it, for logs and Abort: "key:NAME" with API keys, else the peer (set on admission).
  std::string owner;
};

// `random_seed` is used when the request has no seed (the router picks one so a migrated
// sequence keeps its random stream).
absl::StatusOr<PreparedRequest> PrepareRequest(const sambay::v1::GenerateRequest& request,
                                               const Tokenizer& tokenizer,
                                               const RouterLimits& limits, uint64_t random_seed);

// A chat prompt as ids (the chat format of tokenizer/chat.h). Roles system, user, assistant
// and tool; at least one message. Errors name the field under `field` (e.g. "chat"):
// INVALID_ARGUMENT "chat.messages[i].role: ..." for an unknown role or one whose marker token the
// model's tokenizer lacks, "chat.messages: must not be empty", "chat.messages[i].content: ...".
absl::StatusOr<std::vector<int32_t>> EncodeChatPrompt(const Tokenizer& tokenizer,
                                                      const sambay::v1::Chat& chat,
                                                      const std::string& field);

// Bytes of prompt text to tokenize (text, or every chat message's role and content); 0 for a
// token-id prompt. The service tokenizes large prompts off its streaming threads.
size_t PromptTextBytes(const sambay::v1::GenerateRequest& request);

// Validates sampling values (names "sampling.<field>").
absl::Status ValidateSampling(const sambay::v1::SamplingParams& s);

// Finds stop strings in streamed text. Text that could still be the start of a stop string is
// held back until it is known not to be. The cut is before the stop string that completes first
// (on a tie, the one that starts earlier), so the output does not depend on how the text was
// split into pieces.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  // Adds `piece`; returns the text that can be sent now. Sets *stopped when a stop string
  // appeared: the returned text then ends just before it, and later input is ignored.
  std::string Push(const std::string& piece, bool* stopped);
  // The held-back text (at the end of the stream).
  std::string Flush();

 private:
  std::vector<std::string> stops_;
  size_t longest_ = 0;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_REQUEST_H_
