// OpenAI's error bodies and the status mapping, the small bodies (models, tokenize, detokenize)
// and the generation responses: SSE chunks (ChunkWriter) and whole bodies (ResponseCollector).
// The request side is in openai_request.cc.
#include "router/openai_api.h"

#include <charconv>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "tokenizer/stream_decoder.h"

namespace sambay::openai {
namespace {

namespace pb = sambay::v1;
// Output objects keep their keys in the order written (OpenAI's order: "id" first).
using ojson = nlohmann::ordered_json;

// Never throws: bytes that are not UTF-8 become U+FFFD.
std::string Dump(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

std::string SseEvent(const ojson& j) { return absl::StrCat("data: ", Dump(j), "\n\n"); }

ojson NullIfEmpty(const std::string& s) { return s.empty() ? ojson(nullptr) : ojson(s); }

// google.rpc.Code's HTTP mapping, with CANCELLED as nginx's 499 (the client closed the request).
int HttpStatus(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

// A router field path as it is written in error messages ("chat.messages[1].role").
bool IsFieldPath(absl::string_view s) {
  if (s.empty()) return false;
  for (const char c : s) {
    if (!(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '[' ||
          c == ']')) {
      return false;
    }
  }
  return true;
}

// True when `path` is `name` or starts with it followed by '.' or '['.
bool PathUnder(absl::string_view path, absl::string_view name) {
  if (!absl::StartsWith(path, name)) return false;
  return path.size() == name.size() || path[name.size()] == '.' || path[name.size()] == '[';
}

// The endpoint's name for a router field path ("" when the OpenAI request has no such field).
std::string OpenAiField(absl::string_view path, Endpoint endpoint) {
  if (absl::StartsWith(path, "sampling.")) return std::string(path.substr(9));
  const std::string prompt = endpoint == Endpoint::kChat ? "messages" : "prompt";
  const std::string ids = endpoint == Endpoint::kDetokenize ? "tokens" : prompt;
  const std::pair<absl::string_view, std::string> rules[] = {
      {"stopping.max_new_tokens", "max_tokens"},
      {"stopping.stop_strings", "stop"},
      {"stopping.stop_token_ids", "stop_token_ids"},
      {"stopping.ignore_eos", "ignore_eos"},
      {"chat.messages", "messages"},
      {"chat", "messages"},
      {"text", prompt},
      {"token_ids.ids", ids},
      {"token_ids", ids},
      {"prompt", prompt},
      {"input", "prompt"},
      {"top_logprobs", endpoint == Endpoint::kCompletion ? "logprobs" : "top_logprobs"},
      {"return_logprobs", "logprobs"},
      {"request_id", ""},
      {"request", ""},
  };
  for (const auto& [from, to] : rules) {
    if (PathUnder(path, from)) return to.empty() ? "" : absl::StrCat(to, path.substr(from.size()));
  }
  return std::string(path);
}

}  // namespace

// ---- Errors ----------------------------------------------------------------------------------

std::string ErrorType(int http_status) {
  switch (http_status) {
    case 400:
    case 404:
    case 409:
    case 413:
    case 422:
    case 499:
      return "invalid_request_error";
    case 401:
      return "authentication_error";
    case 403:
      return "permission_error";
    case 429:
      return "rate_limit_error";
    default:
      return "server_error";
  }
}

ApiError MakeError(int http_status, std::string param, std::string message, std::string code) {
  return ApiError{.http_status = http_status,
                  .type = ErrorType(http_status),
                  .param = std::move(param),
                  .code = std::move(code),
                  .message = std::move(message)};
}

std::string ErrorBody(const ApiError& error) {
  return Dump({{"error",
                {{"message", error.message},
                 {"type", error.type},
                 {"param", NullIfEmpty(error.param)},
                 {"code", NullIfEmpty(error.code)}}}});
}

std::string ErrorEvent(const ApiError& error) {
  return absl::StrCat("data: ", ErrorBody(error), "\n\n");
}

ApiError FromStatus(const absl::Status& status, Endpoint endpoint) {
  if (status.ok()) return MakeError(500, "", "internal error: an error without a status");
  const int http = HttpStatus(status.code());
  std::string message(status.message());
  std::string param;
  const size_t colon = message.find(':');
  if (http == 400 && colon != std::string::npos && IsFieldPath(message.substr(0, colon))) {
    param = OpenAiField(absl::string_view(message).substr(0, colon), endpoint);
    if (!param.empty()) message = absl::StrCat(param, message.substr(colon));
  }
  return MakeError(http, std::move(param), std::move(message));
}

// ---- Small bodies ----------------------------------------------------------------------------

std::string TokenizeBody(const pb::TokenizeResponse& response, int64_t max_model_len) {
  return Dump({{"count", response.token_ids_size()},
               {"max_model_len", max_model_len},
               {"tokens", response.token_ids()}});
}

std::string DetokenizeBody(const pb::DetokenizeResponse& response) {
  return Dump({{"prompt", response.text()}});
}

std::string ModelsBody(const std::vector<std::string>& names, int64_t created,
                       const std::string& owned_by) {
  ojson data = ojson::array();
  for (const std::string& name : names) {
    data.push_back(
        {{"id", name}, {"object", "model"}, {"created", created}, {"owned_by", owned_by}});
  }
  return Dump({{"object", "list"}, {"data", std::move(data)}});
}

// ---- Responses -------------------------------------------------------------------------------

std::string ResponseId(bool chat, const std::string& request_id) {
  return absl::StrCat(chat ? "chatcmpl-" : "cmpl-", request_id);
}

ResponseOptions MakeResponseOptions(const OpenAiRequest& request, const std::string& request_id,
                                    int64_t created, const Tokenizer& tokenizer) {
  return ResponseOptions{.id = ResponseId(request.chat, request_id),
                         .created = created,
                         .model = request.model,
                         .chat = request.chat,
                         .logprobs = request.logprobs,
                         .include_usage = request.include_usage,
                         .tokenizer = &tokenizer};
}

std::string FinishReasonName(pb::FinishReason reason) {
  switch (reason) {
    case pb::FINISH_REASON_STOP:
      return "stop";
    case pb::FINISH_REASON_LENGTH:
      return "length";
    case pb::FINISH_REASON_ABORT:
      return "abort";
    case pb::FINISH_REASON_ERROR:
      return "error";
    default:
      return "";
  }
}

namespace {

using Logprobs = google::protobuf::RepeatedPtrField<pb::PositionLogprobs>;

// A float as the shortest decimal that reads back as it (0.1f is 0.1, not 0.10000000149...).
double ShortestDouble(float f) {
  char buf[32];
  const auto result = std::to_chars(buf, buf + sizeof buf, f);
  *result.ptr = '\0';
  return std::strtod(buf, nullptr);
}

// vLLM's floor for log-probabilities (-inf has no JSON form).
double JsonLogprob(float lp) { return lp >= -9999.0f ? ShortestDouble(lp) : -9999.0; }

// A token decoded alone: its text (bytes that are not UTF-8 on their own as U+FFFD) and its raw
// bytes (null for an id with no token).
struct TokenText {
  std::string text;
  ojson bytes;
};

TokenText RenderToken(const Tokenizer& tokenizer, uint32_t id) {
  std::string raw;
  if (!tokenizer.AppendTokenBytes(static_cast<int32_t>(id), &raw).ok()) return {"", nullptr};
  StreamDecoder decoder(tokenizer);
  absl::StatusOr<std::string> piece = decoder.Push(static_cast<int32_t>(id));
  TokenText out{piece.ok() ? *std::move(piece) : "", ojson::array()};
  out.text += decoder.Finish();
  for (const char c : raw) out.bytes.push_back(static_cast<unsigned char>(c));
  return out;
}

// Characters (code points) of valid UTF-8 text: the bytes that are not continuation bytes.
int64_t CountChars(const std::string& s) {
  int64_t n = 0;
  for (const char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

ojson ChatTokenLogprob(const Tokenizer& tokenizer, const pb::TokenLogprob& t) {
  TokenText r = RenderToken(tokenizer, t.token_id());
  return {{"token", std::move(r.text)},
          {"logprob", JsonLogprob(t.logprob())},
          {"bytes", std::move(r.bytes)}};
}

// Chat's {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}.
ojson ChatLogprobs(const Tokenizer& tokenizer, const Logprobs& positions) {
  ojson content = ojson::array();
  for (const pb::PositionLogprobs& pos : positions) {
    ojson entry = ChatTokenLogprob(tokenizer, pos.token());
    ojson top = ojson::array();
    for (const pb::TokenLogprob& alt : pos.top()) top.push_back(ChatTokenLogprob(tokenizer, alt));
    entry["top_logprobs"] = std::move(top);
    content.push_back(std::move(entry));
  }
  return {{"content", std::move(content)}};
}

// Completions' {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"};
// *offset is the text_offset of the first position, then of the position after the last.
ojson CompletionLogprobs(const Tokenizer& tokenizer, const Logprobs& positions, int64_t* offset) {
  ojson tokens = ojson::array(), token_logprobs = ojson::array();
  ojson top_logprobs = ojson::array(), text_offset = ojson::array();
  for (const pb::PositionLogprobs& pos : positions) {
    std::string text = RenderToken(tokenizer, pos.token().token_id()).text;
    ojson top = ojson::object();
    for (const pb::TokenLogprob& alt : pos.top()) {
      std::string alt_text = RenderToken(tokenizer, alt.token_id()).text;
      // Most likely first: a later token that renders alike keeps the earlier's value.
      if (!top.contains(alt_text)) top[alt_text] = JsonLogprob(alt.logprob());
    }
    text_offset.push_back(*offset);
    *offset += CountChars(text);
    tokens.push_back(std::move(text));
    token_logprobs.push_back(JsonLogprob(pos.token().logprob()));
    top_logprobs.push_back(std::move(top));
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top_logprobs)},
          {"text_offset", std::move(text_offset)}};
}

// The logprobs of a choice: null unless asked for and there are some.
ojson ChoiceLogprobs(const ResponseOptions& o, const Logprobs& positions, int64_t* offset) {
  if (!o.logprobs || positions.empty()) return nullptr;
  return o.chat ? ChatLogprobs(*o.tokenizer, positions)
                : CompletionLogprobs(*o.tokenizer, positions, offset);
}

ojson FinishJson(pb::FinishReason reason) { return NullIfEmpty(FinishReasonName(reason)); }

ojson UsageJson(const pb::Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens()},
          {"completion_tokens", usage.completion_tokens()},
          {"total_tokens", uint64_t{usage.prompt_tokens()} + usage.completion_tokens()}};
}

// The fields every response object starts with.
ojson Head(const ResponseOptions& o, absl::string_view object) {
  return {{"id", o.id}, {"object", object}, {"created", o.created}, {"model", o.model}};
}

// A streaming chunk with one choice.
std::string Chunk(const ResponseOptions& o, ojson choice) {
  ojson chunk = Head(o, o.chat ? "chat.completion.chunk" : "text_completion");
  chunk["choices"] = ojson::array({std::move(choice)});
  if (o.include_usage) chunk["usage"] = nullptr;
  return SseEvent(chunk);
}

}  // namespace

std::string ChunkWriter::First() {
  if (!options_.chat) return "";
  ojson delta = {{"role", "assistant"}, {"content", ""}};
  return Chunk(options_,
               {{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", nullptr}});
}

std::string ChunkWriter::Delta(const pb::GenerateResponse& msg) {
  const bool logprobs = options_.logprobs && msg.logprobs_size() > 0;
  const bool last = msg.finish_reason() != pb::FINISH_REASON_UNSPECIFIED;
  if (msg.text().empty() && !logprobs && !last) return "";
  ojson choice = {{"index", 0}};
  if (options_.chat) {
    // The last chunk's delta is {} when it brings no text, as OpenAI's is.
    choice["delta"] =
        msg.text().empty() && !logprobs ? ojson::object() : ojson{{"content", msg.text()}};
  } else {
    choice["text"] = msg.text();
  }
  choice["logprobs"] = ChoiceLogprobs(options_, msg.logprobs(), &text_offset_);
  choice["finish_reason"] = FinishJson(msg.finish_reason());
  return Chunk(options_, std::move(choice));
}

std::string ChunkWriter::Usage(const pb::Usage& usage) {
  ojson chunk = Head(options_, options_.chat ? "chat.completion.chunk" : "text_completion");
  chunk["choices"] = ojson::array();
  chunk["usage"] = UsageJson(usage);
  return SseEvent(chunk);
}

std::string ChunkWriter::Done() { return "data: [DONE]\n\n"; }

void ResponseCollector::Add(const pb::GenerateResponse& msg) {
  text_ += msg.text();
  if (options_.logprobs) logprobs_.MergeFrom(msg.logprobs());
  if (msg.finish_reason() != pb::FINISH_REASON_UNSPECIFIED) finish_ = msg.finish_reason();
}

std::string ResponseCollector::Body(const pb::Usage& usage) const {
  ojson body = Head(options_, options_.chat ? "chat.completion" : "text_completion");
  ojson choice = {{"index", 0}};
  if (options_.chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text_}};
  } else {
    choice["text"] = text_;
  }
  int64_t offset = 0;
  choice["logprobs"] = ChoiceLogprobs(options_, logprobs_, &offset);
  choice["finish_reason"] = FinishJson(finish_);
  body["choices"] = ojson::array({std::move(choice)});
  body["usage"] = UsageJson(usage);
  return Dump(body);
}

}  // namespace sambay::openai
