#include "router/request.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/limits.h"
#include "common/request_id.h"
#include "proto/wire_validation.h"
#include "tokenizer/chat.h"

namespace sambay {
namespace {

namespace pb = sambay::v1;

absl::Status Invalid(const std::string& msg) { return absl::InvalidArgumentError(msg); }

absl::Status CheckIds(const google::protobuf::RepeatedField<uint32_t>& ids, int64_t vocab,
                      const char* field) {
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] >= vocab) {
      return Invalid(absl::StrCat(field, "[", i, "]: token id ", ids[i],
                                  " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

// Keeps whole UTF-8 characters: the largest prefix length <= n not cutting a character.
size_t Utf8Floor(const std::string& s, size_t n) {
  while (n > 0 && n < s.size() && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return n;
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> EncodeChatPrompt(const Tokenizer& tokenizer,
                                                      const pb::Chat& chat,
                                                      const std::string& field) {
  if (chat.messages().empty()) return Invalid(absl::StrCat(field, ".messages: must not be empty"));
  std::vector<ChatMessage> msgs;
  msgs.reserve(chat.messages_size());
  for (int i = 0; i < chat.messages_size(); ++i) {
    const pb::ChatMessage& m = chat.messages(i);
    const std::string where = absl::StrCat(field, ".messages[", i, "].role: ");
    if (m.role() != "system" && m.role() != "user" && m.role() != "assistant" &&
        m.role() != "tool") {
      return Invalid(absl::StrCat(where, "must be system, user, assistant or tool, got \"",
                                  absl::CHexEscape(m.role()), "\""));
    }
    if (!tokenizer.SpecialTokenId("<|" + m.role() + "|>").has_value()) {
      return Invalid(absl::StrCat(where, "\"", m.role(),
                                  "\" is not supported by the model's tokenizer (",
                                  tokenizer.name(), " has no <|", m.role(), "|> token)"));
    }
    msgs.push_back({m.role(), m.content()});
  }
  auto ids = EncodeChat(tokenizer, msgs);
  if (!ids.ok()) {
    // "messages[i].content: ..." names a field under `field`; other errors concern the whole chat.
    const absl::string_view msg = ids.status().message();
    return absl::Status(ids.status().code(), absl::StartsWith(msg, "messages")
                                                 ? absl::StrCat(field, ".", msg)
                                                 : absl::StrCat(field, ": ", msg));
  }
  return ids;
}

size_t PromptTextBytes(const pb::GenerateRequest& req) {
  switch (req.prompt_case()) {
    case pb::GenerateRequest::kText:
      return req.text().size();
    case pb::GenerateRequest::kChat: {
      size_t n = 0;
      for (const auto& m : req.chat().messages()) n += m.role().size() + m.content().size();
      return n;
    }
    default:
      return 0;
  }
}

absl::Status ValidateSampling(const pb::SamplingParams& s) {
  if (!std::isfinite(s.temperature()) || s.temperature() < 0) {
    return Invalid(
        absl::StrCat("sampling.temperature: must be finite and >= 0, got ", s.temperature()));
  }
  if (s.top_k() < 0) return Invalid(absl::StrCat("sampling.top_k: must be >= 0, got ", s.top_k()));
  if (s.has_top_p() && !(s.top_p() > 0 && s.top_p() <= 1)) {
    return Invalid(absl::StrCat("sampling.top_p: must be in (0, 1], got ", s.top_p()));
  }
  if (!(s.min_p() >= 0 && s.min_p() <= 1)) {
    return Invalid(absl::StrCat("sampling.min_p: must be in [0, 1], got ", s.min_p()));
  }
  if (s.has_repetition_penalty() &&
      !(std::isfinite(s.repetition_penalty()) && s.repetition_penalty() > 0)) {
    return Invalid(absl::StrCat("sampling.repetition_penalty: must be finite and > 0, got ",
                                s.repetition_penalty()));
  }
  if (!std::isfinite(s.presence_penalty())) {
    return Invalid(
        absl::StrCat("sampling.presence_penalty: must be finite, got ", s.presence_penalty()));
  }
  if (!std::isfinite(s.frequency_penalty())) {
    return Invalid(
        absl::StrCat("sampling.frequency_penalty: must be finite, got ", s.frequency_penalty()));
  }
  return absl::OkStatus();
}

absl::StatusOr<PreparedRequest> PrepareRequest(const pb::GenerateRequest& req,
                                               const Tokenizer& tokenizer,
                                               const RouterLimits& limits, uint64_t random_seed) {
  // A string field that was not UTF-8 (proto/wire_validation.h: recorded, not parsed).
  if (std::string bad = WireError(req); !bad.empty()) return Invalid(bad);
  const size_t bytes = req.ByteSizeLong();
  if (static_cast<int64_t>(bytes) > limits.max_request_bytes) {
    return Invalid(absl::StrCat("request: ", bytes, " bytes exceeds the limit of ",
                                limits.max_request_bytes, " (--max-request-bytes)"));
  }
  PreparedRequest out;
  if (req.request_id().size() > kMaxRequestIdBytes) {
    return Invalid("request_id: must be at most 128 bytes");
  }
  if (!req.request_id().empty() && !IsValidRequestId(req.request_id())) {
    return Invalid("request_id: must be printable ASCII without spaces");
  }
  out.request_id = req.request_id();
  switch (req.prompt_case()) {
    case pb::GenerateRequest::kText: {
      if (req.text().empty()) return Invalid("text: the prompt must not be empty");
      auto ids = tokenizer.Encode(req.text(), /*allow_special=*/false);
      if (!ids.ok()) return Invalid(absl::StrCat("text: ", ids.status().message()));
      out.prompt = *std::move(ids);
      break;
    }
    case pb::GenerateRequest::kTokenIds:
      if (req.token_ids().ids().empty()) return Invalid("token_ids: the prompt must not be empty");
      if (absl::Status s = CheckIds(req.token_ids().ids(), limits.vocab_size, "token_ids.ids");
          !s.ok()) {
        return s;
      }
      out.prompt.assign(req.token_ids().ids().begin(), req.token_ids().ids().end());
      break;
    case pb::GenerateRequest::kChat: {
      auto ids = EncodeChatPrompt(tokenizer, req.chat(), "chat");
      if (!ids.ok()) return ids.status();
      out.prompt = *std::move(ids);
      break;
    }
    default:
      return Invalid("prompt: set one of text, token_ids or chat");
  }
  if (out.prompt.empty()) return Invalid("text: the prompt encodes to no tokens");
  const int64_t n = static_cast<int64_t>(out.prompt.size());
  if (n >= limits.max_context) {
    return Invalid(absl::StrCat("prompt: ", n,
                                " tokens leave no room to generate in the context "
                                "length ",
                                limits.max_context));
  }

  if (absl::Status s = ValidateSampling(req.sampling()); !s.ok()) return s;
  out.sampling = req.sampling();
  if (!out.sampling.has_seed()) out.sampling.set_seed(random_seed);

  const pb::StoppingCriteria& st = req.stopping();
  int64_t max_new = st.max_new_tokens();
  if (max_new > limits.max_new_tokens_limit) {
    return Invalid(absl::StrCat("stopping.max_new_tokens: must be <= ", limits.max_new_tokens_limit,
                                ", got ", max_new));
  }
  if (max_new == 0) {
    max_new = std::min(limits.default_max_new_tokens, limits.max_context - n);
  } else if (n + max_new > limits.max_context) {
    return Invalid(absl::StrCat("stopping.max_new_tokens: prompt (", n, " tokens) + ", max_new,
                                " new tokens exceeds the context length ", limits.max_context));
  }
  out.max_new_tokens = max_new;
  if (static_cast<size_t>(st.stop_token_ids_size()) > kMaxStopTokenIds) {
    return Invalid(absl::StrCat("stopping.stop_token_ids: at most ", kMaxStopTokenIds, " ids, got ",
                                st.stop_token_ids_size()));
  }
  if (absl::Status s = CheckIds(st.stop_token_ids(), limits.vocab_size, "stopping.stop_token_ids");
      !s.ok()) {
    return s;
  }
  out.stop_ids.assign(st.stop_token_ids().begin(), st.stop_token_ids().end());
  if (!st.ignore_eos()) {
    for (int32_t e : limits.eos_ids) {
      if (std::find(out.stop_ids.begin(), out.stop_ids.end(), e) == out.stop_ids.end()) {
        out.stop_ids.push_back(e);
      }
    }
  }
  if (st.stop_strings_size() > limits.max_stop_strings) {
    return Invalid(absl::StrCat("stopping.stop_strings: at most ", limits.max_stop_strings,
                                " strings, got ", st.stop_strings_size()));
  }
  for (int i = 0; i < st.stop_strings_size(); ++i) {
    const std::string& s = st.stop_strings(i);
    if (s.empty() || static_cast<int>(s.size()) > limits.max_stop_string_bytes) {
      return Invalid(absl::StrCat("stopping.stop_strings[", i, "]: must be 1 to ",
                                  limits.max_stop_string_bytes, " bytes"));
    }
    out.stop_strings.push_back(s);
  }
  if (req.top_logprobs() > 20) {
    return Invalid(absl::StrCat("top_logprobs: must be in [0, 20], got ", req.top_logprobs()));
  }
  out.logprobs = req.return_logprobs() || req.top_logprobs() > 0;
  out.top_logprobs = static_cast<int>(req.top_logprobs());
  return out;
}

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (const auto& s : stops_) longest_ = std::max(longest_, s.size());
}

std::string StopMatcher::Push(const std::string& piece, bool* stopped) {
  *stopped = false;
  if (stopped_) return "";
  held_ += piece;
  if (stops_.empty()) {
    std::string out;
    out.swap(held_);
    return out;
  }
  // The stop that completes first (on a tie, the one that starts earlier): the same cut
  // whichever way the text was split into pieces, since what was held before had none.
  size_t first = std::string::npos, first_end = std::string::npos;
  for (const auto& s : stops_) {
    const size_t at = held_.find(s);
    if (at == std::string::npos) continue;
    const size_t end = at + s.size();
    if (end < first_end || (end == first_end && at < first)) {
      first = at;
      first_end = end;
    }
  }
  if (first != std::string::npos) {
    stopped_ = *stopped = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Hold back the last longest_-1 bytes: a stop string could start there.
  const size_t keep = longest_ - 1;
  if (held_.size() <= keep) return "";
  const size_t cut = Utf8Floor(held_, held_.size() - keep);
  std::string out = held_.substr(0, cut);
  held_.erase(0, cut);
  return out;
}

std::string StopMatcher::Flush() {
  std::string out;
  if (!stopped_) out.swap(held_);
  return out;
}

}  // namespace sambay
