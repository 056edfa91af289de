// The Phi-4 chat format and the stop tokens of a model directory.
//
// Layout (Phi-4-mini family, docs/model-spec.md "Tokenizer and prompt format"): every message
// is "<|role|>" content "<|end|>", roles system, user, assistant, tool; a generation prompt
// "<|assistant|>" follows the last message.
//   <|system|>You are...<|end|><|user|>Hi<|end|><|assistant|>
// Markers are encoded as their special-token ids; message content is encoded as plain text, so
// a user typing "<|end|>" cannot inject a control token.
//
// Stateless; thread-safe.
#ifndef SAMBAY_TOKENIZER_CHAT_H_
#define SAMBAY_TOKENIZER_CHAT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "tokenizer/tokenizer.h"

namespace sambay {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "tool"
  std::string content;
};

// The prompt as text (for display and logs).
absl::StatusOr<std::string> FormatChat(absl::Span<const ChatMessage> messages,
                                       bool add_generation_prompt = true);

// The prompt as ids. InvalidArgument for an unknown role (naming the message index) or no
// messages; FailedPrecondition if the tokenizer lacks a marker token.
absl::StatusOr<std::vector<int32_t>> EncodeChat(const Tokenizer& tokenizer,
                                                absl::Span<const ChatMessage> messages,
                                                bool add_generation_prompt = true);

// Stop token ids: `eos_token_id` (an int or a list) of dir/generation_config.json when the file
// has it, else the tokenizer's "<|end|>" and "<|endoftext|>" (200020, 199999 in the Phi-4
// family). Ids are checked against the tokenizer (InvalidArgument naming the bad id).
absl::StatusOr<std::vector<int32_t>> LoadStopTokenIds(const std::string& model_dir,
                                                      const Tokenizer& tokenizer);

}  // namespace sambay

#endif  // SAMBAY_TOKENIZER_CHAT_H_
