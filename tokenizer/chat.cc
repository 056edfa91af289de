#include "tokenizer/chat.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace sambay {
namespace {

absl::Status CheckRoles(absl::Span<const ChatMessage> messages) {
  if (messages.empty()) return absl::InvalidArgumentError("messages: at least one is required");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    if (r != "system" && r != "user" && r != "assistant" && r != "tool") {
      return absl::InvalidArgumentError(absl::StrCat(
          "messages[", i, "].role: must be system, user, assistant or tool, got \"", r, "\""));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> Marker(const Tokenizer& tok, const std::string& text) {
  std::optional<int32_t> id = tok.SpecialTokenId(text);
  if (!id) {
    return absl::FailedPreconditionError(absl::StrCat("the tokenizer (", tok.name(),
                                                      ") has no special token ", text,
                                                      " needed by the chat format"));
  }
  return *id;
}

}  // namespace

absl::StatusOr<std::string> FormatChat(absl::Span<const ChatMessage> messages,
                                       bool add_generation_prompt) {
  SAMBAY_RETURN_IF_ERROR(CheckRoles(messages));
  std::string out;
  for (const ChatMessage& m : messages)
    absl::StrAppend(&out, "<|", m.role, "|>", m.content, "<|end|>");
  if (add_generation_prompt) out += "<|assistant|>";
  return out;
}

absl::StatusOr<std::vector<int32_t>> EncodeChat(const Tokenizer& tok,
                                                absl::Span<const ChatMessage> messages,
                                                bool add_generation_prompt) {
  SAMBAY_RETURN_IF_ERROR(CheckRoles(messages));
  int32_t end;
  SAMBAY_ASSIGN_OR_RETURN(end, Marker(tok, "<|end|>"));
  std::vector<int32_t> ids;
  for (size_t i = 0; i < messages.size(); ++i) {
    int32_t role;
    SAMBAY_ASSIGN_OR_RETURN(role, Marker(tok, "<|" + messages[i].role + "|>"));
    ids.push_back(role);
    auto content = tok.Encode(messages[i].content, /*allow_special=*/false);
    if (!content.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "].content: ", content.status().message()));
    }
    ids.insert(ids.end(), content->begin(), content->end());
    ids.push_back(end);
  }
  if (add_generation_prompt) {
    int32_t assistant;
    SAMBAY_ASSIGN_OR_RETURN(assistant, Marker(tok, "<|assistant|>"));
    ids.push_back(assistant);
  }
  return ids;
}

absl::StatusOr<std::vector<int32_t>> LoadStopTokenIds(const std::string& model_dir,
                                                      const Tokenizer& tok) {
  std::vector<int32_t> ids;
  const std::string path = model_dir + "/generation_config.json";
  std::ifstream in(path);
  if (in) {
    std::stringstream ss;
    ss << in.rdbuf();
    const nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON"));
    }
    auto it = j.find("eos_token_id");
    if (it != j.end() && !it->is_null()) {
      const nlohmann::json list = it->is_array() ? *it : nlohmann::json::array({*it});
      for (const auto& e : list) {
        if (!e.is_number_integer()) {
          return absl::InvalidArgumentError(
              absl::StrCat(path, ": eos_token_id entries must be integers, got ", e.dump()));
        }
        ids.push_back(e.get<int32_t>());
      }
    }
  }
  if (ids.empty()) {
    for (const char* s : {"<|end|>", "<|endoftext|>"}) {
      if (auto id = tok.SpecialTokenId(s)) ids.push_back(*id);
    }
  }
  for (int32_t id : ids) {
    std::string bytes;
    if (!tok.AppendTokenBytes(id, &bytes).ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": eos_token_id ", id, " is not a token of the tokenizer"));
    }
  }
  return ids;
}

}  // namespace sambay
