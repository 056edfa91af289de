// The OpenAI-compatible HTTP API of the router, as pure translation functions (no I/O): the JSON
// bodies of POST /v1/chat/completions and POST /v1/completions (OpenAI's fields plus vLLM's
// sampling extensions) become a sambay.v1.GenerateRequest; the GenerateResponse messages of the
// request's flow become OpenAI JSON again (one body, or server-sent-event chunks); errors become
// OpenAI's error body; and the bodies of GET /v1/models, POST /tokenize and POST /detokenize take
// vLLM's shapes.
//
// The translation checks JSON types and shapes and OpenAI's own ranges only. What the gRPC path
// checks anyway (the vocabulary, the context length, the stop-string limits, top_p, min_p, ...)
// is left to PrepareRequest (router/request.h), whose INVALID_ARGUMENT FromStatus maps back to
// the OpenAI field. A field the server cannot honour is refused with 400 naming it, never
// ignored.
//
// Ownership: ChunkWriter and ResponseCollector borrow the tokenizer of their ResponseOptions (it
// must outlive them). Thread-safety: the functions are stateless and thread-safe; a ChunkWriter
// or a ResponseCollector serves one request and is not thread-safe.
#ifndef SAMBAY_ROUTER_OPENAI_API_H_
#define SAMBAY_ROUTER_OPENAI_API_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "sambay/v1/generate.pb.h"
#include "tokenizer/tokenizer.h"

namespace sambay::openai {

// ---- Errors ----------------------------------------------------------------------------------

// An error answer: the HTTP status and OpenAI's {"error": {...}} fields. Empty param or code is
// written as null.
struct ApiError {
  int http_status = 500;
  std::string type;     // "invalid_request_error", "server_error", ... (ErrorType)
  std::string param;    // the request field at fault, e.g. "messages[0].content"
  std::string code;     // e.g. "model_not_found"
  std::string message;  // starts with the field when there is one
};

// OpenAI's error type for an HTTP status: 400, 404, 409, 413, 422 and 499
// "invalid_request_error"; 401 "authentication_error"; 403 "permission_error"; 429
// "rate_limit_error"; 5xx (and anything else) "server_error".
std::string ErrorType(int http_status);

// An ApiError of `http_status` with its ErrorType.
ApiError MakeError(int http_status, std::string param, std::string message, std::string code = "");

// {"error": {"message", "type", "param", "code"}}. Never throws: bytes that are not UTF-8 (an
// echoed request value) are written as U+FFFD.
std::string ErrorBody(const ApiError& error);

// The SSE event for an error after the stream began: "data: " ErrorBody "\n\n" (vLLM's form;
// the caller sends ChunkWriter::Done() after it).
std::string ErrorEvent(const ApiError& error);

// The endpoint whose request a status is about (it decides the OpenAI names of the fields).
enum class Endpoint { kCompletion, kChat, kTokenize, kDetokenize };

// Maps a status of the request's flow (or of the Tokenize/Detokenize service calls) to an HTTP
// error, following google.rpc.Code's HTTP mapping: INVALID_ARGUMENT, FAILED_PRECONDITION and
// OUT_OF_RANGE 400; UNAUTHENTICATED 401; PERMISSION_DENIED 403; NOT_FOUND 404; ALREADY_EXISTS and
// ABORTED 409; RESOURCE_EXHAUSTED 429 (the router's overload); CANCELLED 499 (the client went
// away); UNIMPLEMENTED 501; UNAVAILABLE 503 (draining, no healthy worker); DEADLINE_EXCEEDED 504
// (the deadline passed while the request was queued or running); anything else 500. For a 400
// the field before the first ':' of the message becomes param, the router's field names mapped
// back to the endpoint's ("stopping.max_new_tokens" -> "max_tokens", "sampling.temperature" ->
// "temperature", "chat.messages[1].role" -> "messages[1].role", "text" -> "prompt" or, for chat,
// "messages"); the message then starts with that name too. A name with no field in the OpenAI
// request ("request", "request_id") gives no param; other names pass as they are.
ApiError FromStatus(const absl::Status& status, Endpoint endpoint);

// ---- Requests --------------------------------------------------------------------------------

struct ApiOptions {
  // The model names served (GET /v1/models). A request's "model" must be one of them (else 404
  // "model_not_found"); a request without one (or with "") gets the first. REQUIRES: not empty.
  std::vector<std::string> model_names;
  // The temperature of a request that sets none. OpenAI's default is 1 (sampling); the proto's
  // unset temperature is 0 (greedy).
  float default_temperature = 1.0f;
};

// A translated chat or completion request.
struct OpenAiRequest {
  // request_id is left empty (the HTTP layer picks it, like the gRPC path's x-request-id).
  sambay::v1::GenerateRequest request;
  bool chat = false;           // /v1/chat/completions (else /v1/completions)
  bool stream = false;         // answer with SSE chunks
  bool include_usage = false;  // stream_options.include_usage: a final usage chunk
  std::string model;           // the served name the request asked for (echoed in responses)
  std::string user;            // "user", for the logs only
  bool logprobs = false;       // return logprobs (chat: logprobs; completions: logprobs != null)
  int top_logprobs = 0;  // alternatives per position (chat: top_logprobs; completions: logprobs)
};

// The translation of a body, or the error to answer with.
template <typename T>
using ApiResult = std::variant<T, ApiError>;

// POST /v1/chat/completions. Supported fields: model, messages (roles system, user, assistant,
// and developer as system; content a string or an array of {"type": "text"} parts, joined with
// "\n" as vLLM does; a message's "name" is accepted and unused, as the Phi-4 chat format has no
// place for it; tool_calls, refusal and the like only empty), max_tokens / max_completion_tokens
// (>= 1: the proto's 0 means "default"), temperature, top_p, seed, stop, presence_penalty,
// frequency_penalty, logprobs, top_logprobs, n (1), user, stream, stream_options, and vLLM's
// top_k, min_p, repetition_penalty, stop_token_ids, ignore_eos. Harmless no-op values are
// accepted (store false, metadata, service_tier auto/default, tools [], tool_choice "none",
// response_format {"type": "text"}, modalities ["text"], echo false, best_of 1, logit_bias {});
// null means "not given" for every optional field. Anything else is a 400 naming the field: an
// unsupported feature, an unknown field ("unknown field: X"), a wrong JSON type, a value out of
// OpenAI's range; malformed JSON is a 400 with the parser's line and column, invalid UTF-8 in a
// string or a number beyond a double a 400 naming the field that holds it. A model not served:
// 404 "model_not_found" (checked before the other fields).
ApiResult<OpenAiRequest> ParseChatRequest(std::string_view body, const ApiOptions& options);

// POST /v1/completions: as ParseChatRequest, with "prompt" (a string, an array of token ids, or
// a batch of exactly one of these; larger batches are refused) instead of messages, and
// "logprobs" an integer in [0, 20] (the alternatives per position; null = none). max_tokens only.
ApiResult<OpenAiRequest> ParseCompletionRequest(std::string_view body, const ApiOptions& options);

// POST /tokenize: {"model"?, "prompt": string, "add_special_tokens"?: bool} or {"model"?,
// "messages": [...], "add_generation_prompt"?: true}. The tokenizer adds no special tokens to text
// (no BOS/EOS in the Phi-4 family), so add_special_tokens changes nothing; the chat encoding
// always ends with the generation prompt, so add_generation_prompt false is refused.
ApiResult<sambay::v1::TokenizeRequest> ParseTokenizeRequest(std::string_view body,
                                                            const ApiOptions& options);
// {"count", "max_model_len", "tokens"}.
std::string TokenizeBody(const sambay::v1::TokenizeResponse& response, int64_t max_model_len);

// POST /detokenize: {"model"?, "tokens": [ids]}. Ids must be integers in [0, 2^31); the
// vocabulary check is the service's.
ApiResult<sambay::v1::DetokenizeRequest> ParseDetokenizeRequest(std::string_view body,
                                                                const ApiOptions& options);
// {"prompt": text}.
std::string DetokenizeBody(const sambay::v1::DetokenizeResponse& response);

// GET /v1/models: {"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}.
std::string ModelsBody(const std::vector<std::string>& names, int64_t created,
                       const std::string& owned_by);

// ---- Responses -------------------------------------------------------------------------------

// "chatcmpl-<request_id>" for a chat request, else "cmpl-<request_id>".
std::string ResponseId(bool chat, const std::string& request_id);

struct ResponseOptions {
  std::string id;       // ResponseId
  int64_t created = 0;  // unix seconds
  std::string model;    // OpenAiRequest::model
  bool chat = false;
  bool logprobs = false;       // OpenAiRequest::logprobs
  bool include_usage = false;  // OpenAiRequest::include_usage ("usage": null in every chunk)
  const Tokenizer* tokenizer = nullptr;  // REQUIRED; renders the tokens of logprobs
};

// The ResponseOptions of a translated request.
ResponseOptions MakeResponseOptions(const OpenAiRequest& request, const std::string& request_id,
                                    int64_t created, const Tokenizer& tokenizer);

// The finish_reason string: STOP "stop", LENGTH "length", ABORT "abort" (vLLM's), ERROR
// "error"; "" while the stream runs (written as null).
std::string FinishReasonName(sambay::v1::FinishReason reason);

// Logprobs: each token is rendered by decoding it alone; bytes that are not valid UTF-8 on their
// own (a character split across tokens) become U+FFFD in "token", and chat's "bytes" lists the
// raw bytes. A log-probability below -9999 (or -inf) is written as -9999, as vLLM does.
// Completions' "text_offset" counts the characters of the rendered tokens before each one (as
// vLLM does), and "top_logprobs" maps each alternative's rendered token to its log-probability
// (the more likely one wins when two render alike).

// The SSE chunks of a streaming response ("data: {json}\n\n" each).
class ChunkWriter {
 public:
  explicit ChunkWriter(ResponseOptions options) : options_(std::move(options)) {}

  // The first chunk: chat's {"delta": {"role": "assistant", "content": ""}}; "" for completions
  // (they have no role chunk).
  std::string First();
  // The chunk of one flow message: its text, its logprobs when asked for, and its finish_reason
  // when it is the last. "" when the message carries none of these (its text is held back).
  std::string Delta(const sambay::v1::GenerateResponse& msg);
  // The usage chunk ("choices": []), sent after the last Delta when include_usage.
  std::string Usage(const sambay::v1::Usage& usage);
  // "data: [DONE]\n\n".
  static std::string Done();

 private:
  ResponseOptions options_;
  int64_t text_offset_ = 0;  // completions' text_offset of the next token
};

// Collects the flow's messages of a non-streaming request into one body.
class ResponseCollector {
 public:
  explicit ResponseCollector(ResponseOptions options) : options_(std::move(options)) {}

  void Add(const sambay::v1::GenerateResponse& msg);
  // chat.completion ({"message": {"role": "assistant", "content"}}) or text_completion
  // ({"text"}), with logprobs (null unless asked for), finish_reason and usage.
  std::string Body(const sambay::v1::Usage& usage) const;

 private:
  ResponseOptions options_;
  std::string text_;
  google::protobuf::RepeatedPtrField<sambay::v1::PositionLogprobs> logprobs_;
  sambay::v1::FinishReason finish_ = sambay::v1::FINISH_REASON_UNSPECIFIED;
};

}  // namespace sambay::openai

#endif  // SAMBAY_ROUTER_OPENAI_API_H_
