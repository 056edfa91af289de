// The OpenAI-compatible API's translation (router/openai_api.h), in process: request bodies to
// GenerateRequest (every field, every refusal), the flow's messages to SSE chunks and bodies,
// the status mapping and the error body. Produced JSON is parsed and checked field by field.
#include "router/openai_api.h"

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "router/request.h"
#include "tests/router/router_harness.h"
#include "tokenizer/tokenizer.h"

namespace sambay::openai {
namespace {

namespace v1 = sambay::v1;
using json = nlohmann::json;

constexpr char kChatBase[] = R"({"messages": [{"role": "user", "content": "hi"}]})";
constexpr char kCompletionBase[] = R"({"prompt": "hi"})";

ApiOptions Options() {
  ApiOptions o;
  o.model_names = {"phi4-mini-flash", "alias"};
  return o;
}

// `base` with the fields of `fragment` added or replaced.
std::string Merge(const std::string& base, const std::string& fragment) {
  json doc = json::parse(base);
  doc.update(json::parse(fragment));
  return doc.dump();
}

OpenAiRequest Chat(const std::string& fragment) {
  auto r = ParseChatRequest(Merge(kChatBase, fragment), Options());
  if (const ApiError* e = std::get_if<ApiError>(&r)) {
    ADD_FAILURE() << fragment << ": " << e->message;
    return {};
  }
  return std::get<OpenAiRequest>(r);
}

OpenAiRequest Completion(const std::string& fragment) {
  auto r = ParseCompletionRequest(Merge(kCompletionBase, fragment), Options());
  if (const ApiError* e = std::get_if<ApiError>(&r)) {
    ADD_FAILURE() << fragment << ": " << e->message;
    return {};
  }
  return std::get<OpenAiRequest>(r);
}

// The error of a result that must be one.
template <typename T>
ApiError ErrorOf(const ApiResult<T>& r) {
  if (const ApiError* e = std::get_if<ApiError>(&r)) return *e;
  ADD_FAILURE() << "expected an error";
  return {};
}

// The JSON of each "data: " event of an SSE stream ("[DONE]" as the string "[DONE]").
std::vector<json> Events(const std::string& sse) {
  std::vector<json> out;
  size_t at = 0;
  while (at < sse.size()) {
    const size_t end = sse.find("\n\n", at);
    EXPECT_NE(end, std::string::npos) << sse.substr(at);
    if (end == std::string::npos) break;
    const std::string event = sse.substr(at, end - at);
    EXPECT_TRUE(absl::StartsWith(event, "data: ")) << event;
    const std::string data = event.substr(6);
    out.push_back(data == "[DONE]" ? json("[DONE]") : json::parse(data));
    at = end + 2;
  }
  return out;
}

// ---- Requests: what lands where ---------------------------------------------------------------

TEST(OpenAiRequestTest, EveryChatFieldLandsInItsField) {
  const OpenAiRequest r = Chat(R"({
      "model": "alias", "max_completion_tokens": 33, "temperature": 0.5, "top_p": 0.9,
      "seed": 42, "stop": ["END", "\n\n"], "presence_penalty": 0.25, "frequency_penalty": -0.5,
      "logprobs": true, "top_logprobs": 3, "n": 1, "user": "u-1", "stream": true,
      "stream_options": {"include_usage": true}, "top_k": 40, "min_p": 0.05,
      "repetition_penalty": 1.1, "stop_token_ids": [7, 260], "ignore_eos": true,
      "messages": [{"role": "system", "content": "be brief"},
                   {"role": "user", "content": "hi", "name": "ann"},
                   {"role": "assistant", "content": "hello", "tool_calls": [], "refusal": null},
                   {"role": "developer", "content": [{"type": "text", "text": "a"},
                                                     {"type": "text", "text": "b"}]}]})");
  EXPECT_TRUE(r.chat);
  EXPECT_EQ(r.model, "alias");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.user, "u-1");
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 3);
  const v1::GenerateRequest& g = r.request;
  EXPECT_TRUE(g.request_id().empty());
  ASSERT_EQ(g.prompt_case(), v1::GenerateRequest::kChat);
  ASSERT_EQ(g.chat().messages_size(), 4);
  EXPECT_EQ(g.chat().messages(0).role(), "system");
  EXPECT_EQ(g.chat().messages(1).content(), "hi");
  EXPECT_EQ(g.chat().messages(2).role(), "assistant");
  EXPECT_EQ(g.chat().messages(3).role(), "system");  // developer
  EXPECT_EQ(g.chat().messages(3).content(), "a\nb");
  EXPECT_EQ(g.stopping().max_new_tokens(), 33u);
  EXPECT_FLOAT_EQ(g.sampling().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(g.sampling().top_p(), 0.9f);
  EXPECT_EQ(g.sampling().seed(), 42u);
  EXPECT_EQ(g.sampling().top_k(), 40);
  EXPECT_FLOAT_EQ(g.sampling().min_p(), 0.05f);
  EXPECT_FLOAT_EQ(g.sampling().repetition_penalty(), 1.1f);
  EXPECT_FLOAT_EQ(g.sampling().presence_penalty(), 0.25f);
  EXPECT_FLOAT_EQ(g.sampling().frequency_penalty(), -0.5f);
  ASSERT_EQ(g.stopping().stop_strings_size(), 2);
  EXPECT_EQ(g.stopping().stop_strings(1), "\n\n");
  ASSERT_EQ(g.stopping().stop_token_ids_size(), 2);
  EXPECT_EQ(g.stopping().stop_token_ids(1), 260u);
  EXPECT_TRUE(g.stopping().ignore_eos());
  EXPECT_TRUE(g.return_logprobs());
  EXPECT_EQ(g.top_logprobs(), 3u);
}

TEST(OpenAiRequestTest, DefaultsAndNullsMeanNotGiven) {
  const OpenAiRequest r = Chat(R"({"temperature": null, "max_tokens": null, "stop": null,
                                   "seed": null, "logprobs": null, "stream": null})");
  EXPECT_EQ(r.model, "phi4-mini-flash");  // the first served name
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.logprobs);
  EXPECT_FLOAT_EQ(r.request.sampling().temperature(), 1.0f);  // OpenAI's default, not greedy
  EXPECT_FALSE(r.request.sampling().has_top_p());
  EXPECT_FALSE(r.request.sampling().has_seed());
  EXPECT_EQ(r.request.stopping().max_new_tokens(), 0u);
  EXPECT_FALSE(r.request.return_logprobs());
  EXPECT_EQ(Chat(R"({"model": ""})").model, "phi4-mini-flash");
  EXPECT_EQ(Chat(R"({"temperature": 0})").request.sampling().temperature(), 0.0f);
  ApiOptions greedy = Options();
  greedy.default_temperature = 0;
  auto g = ParseChatRequest(kChatBase, greedy);
  ASSERT_TRUE(std::holds_alternative<OpenAiRequest>(g));
  EXPECT_EQ(std::get<OpenAiRequest>(g).request.sampling().temperature(), 0.0f);
}

TEST(OpenAiRequestTest, HarmlessValuesAreAccepted) {
  Chat(R"({"store": false, "metadata": {"k": "v"}, "service_tier": "auto", "tools": [],
           "tool_choice": "none", "response_format": {"type": "text"}, "modalities": ["text"],
           "logit_bias": {}, "n": 1, "stream": false, "user": "u", "parallel_tool_calls": null,
           "audio": null, "prediction": null, "functions": [], "function_call": "none"})");
  Completion(R"({"echo": false, "best_of": 1, "suffix": "", "service_tier": "default",
                 "logprobs": null, "max_tokens": 5.0})");
}

TEST(OpenAiRequestTest, CompletionPrompts) {
  EXPECT_EQ(Completion(R"({"prompt": "abc"})").request.text(), "abc");
  const OpenAiRequest ids = Completion(R"({"prompt": [1, 2, 2147483647]})");
  ASSERT_EQ(ids.request.prompt_case(), v1::GenerateRequest::kTokenIds);
  EXPECT_EQ(ids.request.token_ids().ids(2), 2147483647u);
  // A batch of one prompt is that prompt.
  EXPECT_EQ(Completion(R"({"prompt": ["one"]})").request.text(), "one");
  EXPECT_EQ(Completion(R"({"prompt": [[5, 6]]})").request.token_ids().ids_size(), 2);
  // An empty prompt is PrepareRequest's to refuse.
  EXPECT_EQ(Completion(R"({"prompt": []})").request.prompt_case(), v1::GenerateRequest::kTokenIds);
  const OpenAiRequest lp = Completion(R"({"logprobs": 0, "max_tokens": 7})");
  EXPECT_TRUE(lp.logprobs);
  EXPECT_TRUE(lp.request.return_logprobs());
  EXPECT_EQ(lp.request.top_logprobs(), 0u);
  EXPECT_EQ(lp.request.stopping().max_new_tokens(), 7u);
  EXPECT_EQ(Completion(R"({"logprobs": 5})").request.top_logprobs(), 5u);
  EXPECT_FALSE(lp.chat);
}

TEST(OpenAiRequestTest, SeedsTopKAndFrequencyPenalty) {
  EXPECT_EQ(Chat(R"({"seed": -1})").request.sampling().seed(),
            std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(Chat(R"({"seed": 18446744073709551615})").request.sampling().seed(),
            std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(Chat(R"({"top_k": -1})").request.sampling().top_k(), 0);
  EXPECT_EQ(Chat(R"({"top_k": 0})").request.sampling().top_k(), 0);
  EXPECT_EQ(Chat(R"({"frequency_penalty": 0})").request.sampling().frequency_penalty(), 0.0f);
  EXPECT_EQ(Chat(R"({"frequency_penalty": 0.5})").request.sampling().frequency_penalty(), 0.5f);
  EXPECT_EQ(Chat(R"({"frequency_penalty": -2})").request.sampling().frequency_penalty(), -2.0f);
  EXPECT_EQ(Chat(R"({"frequency_penalty": null})").request.sampling().frequency_penalty(), 0.0f);
  EXPECT_EQ(Completion(R"({"frequency_penalty": 1.5})").request.sampling().frequency_penalty(),
            1.5f);
}

// ---- Requests: refusals ----------------------------------------------------------------------

struct Refusal {
  bool chat;
  const char* fragment;  // merged into the endpoint's minimal body
  const char* param;
  const char* message;  // a part of the message
};

const Refusal kRefusals[] = {
    // Unsupported features, named.
    {true, R"({"tools": [{"type": "function", "function": {"name": "f"}}]})", "tools",
     "not supported"},
    {true, R"({"tool_choice": "auto"})", "tool_choice", "not supported"},
    {true, R"({"functions": [{"name": "f"}]})", "functions", "not supported"},
    {true, R"({"function_call": "auto"})", "function_call", "not supported"},
    {true, R"({"response_format": {"type": "json_object"}})", "response_format", "text"},
    {true, R"({"logit_bias": {"50256": -100}})", "logit_bias", "not supported"},
    {true, R"({"parallel_tool_calls": false})", "parallel_tool_calls", "not supported"},
    {true, R"({"audio": {"voice": "alloy"}})", "audio", "not supported"},
    {true, R"({"modalities": ["text", "audio"]})", "modalities", "text"},
    {true, R"({"prediction": {"type": "content", "content": "x"}})", "prediction", "not supported"},
    {true, R"({"store": true})", "store", "not supported"},
    {true, R"({"service_tier": "flex"})", "service_tier", "flex"},
    {true, R"({"n": 2})", "n", "only n=1 is supported"},
    {true, R"({"n": 0})", "n", "only n=1 is supported"},
    {false, R"({"echo": true})", "echo", "not supported"},
    {false, R"({"best_of": 2})", "best_of", "only best_of=1"},
    {false, R"({"suffix": "x"})", "suffix", "not supported"},
    // Unknown fields, and the other endpoint's fields.
    {true, R"({"foo": 1})", "foo", "unknown field: foo"},
    {true, R"({"guided_json": {}})", "guided_json", "unknown field"},
    {true, R"({"prompt": "x"})", "prompt", "unknown field"},
    {false, R"({"messages": []})", "messages", "unknown field"},
    {false, R"({"max_completion_tokens": 5})", "max_completion_tokens", "unknown field"},
    {false, R"({"top_logprobs": 1})", "top_logprobs", "unknown field"},
    {false, R"({"foo": null})", "foo", "unknown field"},
    // Ranges.
    {true, R"({"max_tokens": 0})", "max_tokens", "[1, 4294967295]"},
    {true, R"({"max_tokens": -1})", "max_tokens", "got -1"},
    {true, R"({"max_tokens": 4294967296})", "max_tokens", "[1, 4294967295]"},
    {true, R"({"max_tokens": 1e30})", "max_tokens", "integer"},
    {true, R"({"max_tokens": 1.5})", "max_tokens", "integer"},
    {true, R"({"max_tokens": 10, "max_completion_tokens": 20})", "max_completion_tokens",
     "differs from max_tokens"},
    {true, R"({"temperature": 2.5})", "temperature", "[0, 2]"},
    {true, R"({"temperature": -0.1})", "temperature", "[0, 2]"},
    {true, R"({"presence_penalty": 3})", "presence_penalty", "[-2, 2]"},
    {true, R"({"frequency_penalty": -3})", "frequency_penalty", "[-2, 2]"},
    {true, R"({"top_k": -2})", "top_k", "[-1, 2147483647]"},
    {true, R"({"top_logprobs": 3})", "top_logprobs", "requires logprobs: true"},
    {true, R"({"top_logprobs": 21, "logprobs": true})", "top_logprobs", "[0, 20]"},
    {false, R"({"logprobs": 21})", "logprobs", "[0, 20]"},
    {true, R"({"stop_token_ids": [3, -1]})", "stop_token_ids[1]", "[0, 2147483647]"},
    {true, R"({"stop_token_ids": [2147483648]})", "stop_token_ids[0]", "[0, 2147483647]"},
    {true, R"({"stream_options": {"include_usage": true}})", "stream_options", "requires stream"},
    {true, R"({"stream": true, "stream_options": {"continuous_usage_stats": true}})",
     "stream_options.continuous_usage_stats", "unknown field"},
    // Prompts and messages.
    {false, R"({"prompt": ["a", "b"]})", "prompt", "only one prompt per request"},
    {false, R"({"prompt": [[1], [2]]})", "prompt", "only one prompt per request"},
    {false, R"({"prompt": [1, -1]})", "prompt[1]", "[0, 2147483647]"},
    {false, R"({"prompt": [1, 2147483648]})", "prompt[1]", "[0, 2147483647]"},
    {false, R"({"prompt": [1, "a"]})", "prompt[1]", "expected an integer, got string"},
    {false, R"({"prompt": {"x": 1}})", "prompt", "expected a string or an array of token ids"},
    {true, R"({"messages": "hi"})", "messages", "expected an array of messages, got string"},
    {true, R"({"messages": ["hi"]})", "messages[0]", "expected an object"},
    {true, R"({"messages": [{"role": "user"}]})", "messages[0].content", "required"},
    {true, R"({"messages": [{"content": "x"}]})", "messages[0].role", "required"},
    {true, R"({"messages": [{"role": "tool", "content": "x"}]})", "messages[0].role", "tool"},
    {true, R"({"messages": [{"role": "bot", "content": "x"}]})", "messages[0].role", "\"bot\""},
    {true, R"({"messages": [{"role": "user", "content": null}]})", "messages[0].content",
     "got null"},
    {true,
     R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {"url": "x"}}]}]})",
     "messages[0].content[1].type", "\"image_url\""},
    {true, R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})",
     "messages[0].content[0].text", "required"},
    {true, R"({"messages": [{"role": "user", "content": "x", "tool_calls": [{"id": "1"}]}]})",
     "messages[0].tool_calls", "not supported"},
    {true, R"({"messages": [{"role": "user", "content": "x", "foo": 1}]})", "messages[0].foo",
     "unknown field"},
    {true, R"({"messages": [{"role": "user", "content": "x", "name": 5}]})", "messages[0].name",
     "expected a string"},
    // Wrong JSON types.
    {true, R"({"model": 5})", "model", "expected a string, got number"},
    {true, R"({"temperature": "hot"})", "temperature", "expected a number, got string"},
    {true, R"({"top_p": "x"})", "top_p", "expected a number"},
    {true, R"({"min_p": true})", "min_p", "expected a number, got boolean"},
    {true, R"({"repetition_penalty": []})", "repetition_penalty", "expected a number, got array"},
    {true, R"({"seed": "1"})", "seed", "expected an integer"},
    {true, R"({"seed": 1.5})", "seed", "integer"},
    {true, R"({"stop": 5})", "stop", "expected a string or an array of strings"},
    {true, R"({"stop": ["a", 5]})", "stop[1]", "expected a string"},
    {true, R"({"stream": "yes"})", "stream", "expected a boolean"},
    {true, R"({"user": 5})", "user", "expected a string"},
    {true, R"({"logprobs": 1})", "logprobs", "expected a boolean"},
    {false, R"({"logprobs": true})", "logprobs", "expected an integer"},
    {true, R"({"ignore_eos": 1})", "ignore_eos", "expected a boolean"},
    {true, R"({"stop_token_ids": "1"})", "stop_token_ids", "expected an array"},
    {true, R"({"metadata": "x"})", "metadata", "expected an object"},
    {true, R"({"stream_options": true})", "stream_options", "expected an object"},
    {true, R"({"n": "1"})", "n", "expected an integer"},
    {true, R"({"max_tokens": "5"})", "max_tokens", "expected an integer"},
    {true, R"({"stream": true, "stream_options": {"include_usage": 1}})",
     "stream_options.include_usage", "expected a boolean"},
};

TEST(OpenAiRequestTest, EveryRefusalIs400NamingTheField) {
  for (const Refusal& c : kRefusals) {
    SCOPED_TRACE(c.fragment);
    const std::string body = Merge(c.chat ? kChatBase : kCompletionBase, c.fragment);
    const ApiError e = c.chat ? ErrorOf(ParseChatRequest(body, Options()))
                              : ErrorOf(ParseCompletionRequest(body, Options()));
    EXPECT_EQ(e.http_status, 400);
    EXPECT_EQ(e.type, "invalid_request_error");
    EXPECT_EQ(e.param, c.param);
    EXPECT_TRUE(absl::StartsWith(e.message, absl::StrCat(c.param, ": "))) << e.message;
    EXPECT_TRUE(absl::StrContains(e.message, c.message)) << e.message;
  }
}

TEST(OpenAiRequestTest, BodiesThatAreNotARequest) {
  ApiError e = ErrorOf(ParseChatRequest(R"({"messages": [)", Options()));
  EXPECT_EQ(e.http_status, 400);
  EXPECT_EQ(e.param, "");
  EXPECT_TRUE(absl::StrContains(e.message, "invalid JSON")) << e.message;
  // The parser's position: the end of the 14 bytes.
  EXPECT_TRUE(absl::StrContains(e.message, "line 1, column 15")) << e.message;
  e = ErrorOf(ParseChatRequest("[1, 2]", Options()));
  EXPECT_EQ(e.message, "body: expected a JSON object, got array");
  e = ErrorOf(ParseChatRequest("", Options()));
  EXPECT_EQ(e.http_status, 400);
  e = ErrorOf(ParseChatRequest("{}", Options()));
  EXPECT_EQ(e.param, "messages");
  EXPECT_EQ(e.message, "messages: required");
  e = ErrorOf(ParseCompletionRequest(R"({"prompt": null})", Options()));
  EXPECT_EQ(e.message, "prompt: required");
  // Hostile bodies: deep nesting, a huge key; the error stays small.
  const std::string deep = "{\"messages\": " + std::string(100000, '[') + "\"\xFF\"";
  e = ErrorOf(ParseChatRequest(deep, Options()));
  EXPECT_TRUE(absl::StartsWith(e.param, "messages[0][0]")) << e.param.substr(0, 50);
  EXPECT_LE(e.message.size(), 400u);
  e = ErrorOf(
      ParseChatRequest(Merge(kChatBase, json{{std::string(10000, 'k'), 1}}.dump()), Options()));
  EXPECT_LE(e.param.size(), 300u);
  EXPECT_LE(e.message.size(), 600u);
  e = ErrorOf(ParseCompletionRequest(R"({"model": "gpt-4o", "prompt": "x", "n": 3})", Options()));
  EXPECT_EQ(e.http_status, 404);  // the model is checked first
  EXPECT_EQ(e.param, "model");
  EXPECT_EQ(e.code, "model_not_found");
  EXPECT_TRUE(absl::StrContains(e.message, "\"gpt-4o\" does not exist")) << e.message;
}

TEST(OpenAiRequestTest, InvalidUtf8AndHugeNumbersNameTheirField) {
  ApiError e =
      ErrorOf(ParseChatRequest("{\"messages\": [{\"role\": \"user\", \"content\": \"ok\"}, "
                               "{\"role\": \"user\", \"content\": \"bad \xC3(\"}]}",
                               Options()));
  EXPECT_EQ(e.param, "messages[1].content");
  EXPECT_TRUE(absl::StrContains(e.message, "invalid UTF-8")) << e.message;
  e = ErrorOf(ParseChatRequest(R"({"messages": [], "user": "\ud800"})", Options()));
  EXPECT_EQ(e.param, "user");
  e = ErrorOf(ParseChatRequest("{\"stop\": [\"a\", \"\xFF\"], \"messages\": []}", Options()));
  EXPECT_EQ(e.param, "stop[1]");
  e = ErrorOf(ParseChatRequest("{\"messages\": [], \"\xE2\x82\": 1}", Options()));
  EXPECT_EQ(e.param, "body");  // a key: the object holding it (the body)
  e = ErrorOf(ParseChatRequest(R"({"messages": [], "temperature": 1e400})", Options()));
  EXPECT_EQ(e.param, "temperature");
  EXPECT_TRUE(absl::StrContains(e.message, "number overflow")) << e.message;
  e = ErrorOf(ParseCompletionRequest(R"({"prompt": [1, 99999999999999999999999]})", Options()));
  EXPECT_EQ(e.param, "prompt[1]");
  // Every error body is valid JSON, whatever bytes the request had.
  EXPECT_TRUE(json::accept(ErrorBody(e)));
}

// A translated request goes through PrepareRequest, whose errors map back to the OpenAI field.
TEST(OpenAiRequestTest, PrepareRequestErrorsMapBackToTheOpenAiField) {
  auto tokenizer = LoadTokenizer(testing::TinyModelDir());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  RouterLimits limits;
  limits.vocab_size = testing::kTinyVocab;
  limits.max_context = testing::kTinyMaxContext;
  limits.max_new_tokens_limit = 100;
  const auto prepare = [&](const OpenAiRequest& r) {
    return PrepareRequest(r.request, **tokenizer, limits, /*random_seed=*/1).status();
  };
  EXPECT_TRUE(prepare(Chat(R"({"max_tokens": 10, "seed": 3})")).ok());
  EXPECT_TRUE(prepare(Completion(R"({"prompt": [1, 2, 3]})")).ok());
  ApiError e = FromStatus(prepare(Completion(R"({"prompt": [1, 999]})")), Endpoint::kCompletion);
  EXPECT_EQ(e.param, "prompt[1]");
  EXPECT_TRUE(absl::StartsWith(e.message, "prompt[1]: token id 999")) << e.message;
  e = FromStatus(prepare(Chat(R"({"max_tokens": 101})")), Endpoint::kChat);
  EXPECT_EQ(e.param, "max_tokens");
  e = FromStatus(prepare(Chat(R"({"top_p": 0})")), Endpoint::kChat);
  EXPECT_EQ(e.param, "top_p");
  e = FromStatus(prepare(Chat(R"({"repetition_penalty": 1e300})")), Endpoint::kChat);
  EXPECT_EQ(e.param, "repetition_penalty");
  EXPECT_EQ(Chat(R"({"min_p": -1e300})").request.sampling().min_p(),
            -std::numeric_limits<float>::infinity());
  e = FromStatus(prepare(Chat(R"({"messages": []})")), Endpoint::kChat);
  EXPECT_EQ(e.param, "messages");
  e = FromStatus(prepare(Chat(R"({"stop": ["a", ""]})")), Endpoint::kChat);
  EXPECT_EQ(e.param, "stop[1]");
  e = FromStatus(prepare(Completion(R"({"prompt": ""})")), Endpoint::kCompletion);
  EXPECT_EQ(e.param, "prompt");
  EXPECT_EQ(e.http_status, 400);
}

TEST(OpenAiRequestTest, TokenizeAndDetokenize) {
  auto t = ParseTokenizeRequest(R"({"model": "alias", "prompt": "hi", "add_special_tokens": true})",
                                Options());
  ASSERT_TRUE(std::holds_alternative<v1::TokenizeRequest>(t));
  EXPECT_EQ(std::get<v1::TokenizeRequest>(t).text(), "hi");
  t = ParseTokenizeRequest(
      R"({"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": true})",
      Options());
  ASSERT_TRUE(std::holds_alternative<v1::TokenizeRequest>(t));
  EXPECT_EQ(std::get<v1::TokenizeRequest>(t).chat().messages(0).content(), "x");
  EXPECT_EQ(ErrorOf(ParseTokenizeRequest(R"({"messages": [], "add_generation_prompt": false})",
                                         Options()))
                .param,
            "add_generation_prompt");
  EXPECT_EQ(ErrorOf(ParseTokenizeRequest(R"({"prompt": "a", "messages": []})", Options())).param,
            "messages");
  EXPECT_EQ(ErrorOf(ParseTokenizeRequest(R"({})", Options())).param, "prompt");
  EXPECT_EQ(ErrorOf(ParseTokenizeRequest(R"({"prompt": "a", "x": null})", Options())).param, "x");
  EXPECT_EQ(
      ErrorOf(ParseTokenizeRequest(R"({"prompt": "a", "model": "m"})", Options())).http_status,
      404);

  auto d = ParseDetokenizeRequest(R"({"tokens": [104, 105]})", Options());
  ASSERT_TRUE(std::holds_alternative<v1::DetokenizeRequest>(d));
  EXPECT_EQ(std::get<v1::DetokenizeRequest>(d).token_ids_size(), 2);
  EXPECT_EQ(ErrorOf(ParseDetokenizeRequest(R"({"tokens": [1, -2]})", Options())).param,
            "tokens[1]");
  EXPECT_EQ(ErrorOf(ParseDetokenizeRequest(R"({})", Options())).param, "tokens");
  EXPECT_EQ(ErrorOf(ParseDetokenizeRequest(R"({"tokens": [], "x": 1})", Options())).param, "x");

  v1::TokenizeResponse tr;
  tr.add_token_ids(104);
  tr.add_token_ids(105);
  const json tb = json::parse(TokenizeBody(tr, 4096));
  EXPECT_EQ(tb["count"], 2);
  EXPECT_EQ(tb["max_model_len"], 4096);
  EXPECT_EQ(tb["tokens"], json::array({104, 105}));
  v1::DetokenizeResponse dr;
  dr.set_text("hi");
  EXPECT_EQ(json::parse(DetokenizeBody(dr))["prompt"], "hi");
}

// ---- Errors ------------------------------------------------------------------------------------

TEST(OpenAiErrorTest, ErrorBodyShape) {
  json b = json::parse(ErrorBody(MakeError(400, "", "invalid JSON: x")));
  ASSERT_TRUE(b["error"].is_object());
  EXPECT_EQ(b["error"]["message"], "invalid JSON: x");
  EXPECT_EQ(b["error"]["type"], "invalid_request_error");
  EXPECT_TRUE(b["error"]["param"].is_null());
  EXPECT_TRUE(b["error"]["code"].is_null());
  b = json::parse(ErrorBody(MakeError(404, "model", "model: no", "model_not_found")));
  EXPECT_EQ(b["error"]["param"], "model");
  EXPECT_EQ(b["error"]["code"], "model_not_found");
  // Bytes that are not UTF-8 do not make the body invalid.
  b = json::parse(ErrorBody(MakeError(400, "x", "x: \xC3(")));
  EXPECT_EQ(b["error"]["message"], "x: \xEF\xBF\xBD(");
  const std::string event = ErrorEvent(MakeError(503, "", "down"));
  ASSERT_TRUE(absl::StartsWith(event, "data: ") && absl::EndsWith(event, "\n\n")) << event;
  EXPECT_EQ(Events(event)[0]["error"]["type"], "server_error");
  EXPECT_EQ(ErrorType(401), "authentication_error");
  EXPECT_EQ(ErrorType(403), "permission_error");
  EXPECT_EQ(ErrorType(413), "invalid_request_error");
  EXPECT_EQ(ErrorType(429), "rate_limit_error");
  EXPECT_EQ(ErrorType(500), "server_error");
}

TEST(OpenAiErrorTest, StatusCodesMapToHttp) {
  const std::pair<absl::Status, int> cases[] = {
      {absl::InvalidArgumentError("x"), 400},
      {absl::FailedPreconditionError("x"), 400},
      {absl::OutOfRangeError("x"), 400},
      {absl::UnauthenticatedError("x"), 401},
      {absl::PermissionDeniedError("x"), 403},
      {absl::NotFoundError("x"), 404},
      {absl::AlreadyExistsError("x"), 409},
      {absl::AbortedError("x"), 409},
      {absl::ResourceExhaustedError("x"), 429},
      {absl::CancelledError("x"), 499},
      {absl::UnimplementedError("x"), 501},
      {absl::UnavailableError("x"), 503},
      {absl::DeadlineExceededError("x"), 504},
      {absl::InternalError("x"), 500},
      {absl::UnknownError("x"), 500},
      {absl::DataLossError("x"), 500},
      {absl::OkStatus(), 500},
  };
  for (const auto& [status, http] : cases) {
    const ApiError e = FromStatus(status, Endpoint::kChat);
    EXPECT_EQ(e.http_status, http) << status;
    EXPECT_EQ(e.type, ErrorType(http));
  }
  EXPECT_EQ(
      FromStatus(absl::UnavailableError("the router is draining: retry"), Endpoint::kChat).message,
      "the router is draining: retry");
}

TEST(OpenAiErrorTest, FieldsMapBackToOpenAiNames) {
  struct Case {
    Endpoint endpoint;
    const char* message;
    const char* param;
    const char* mapped;  // the message as answered
  };
  const Case cases[] = {
      {Endpoint::kChat, "stopping.max_new_tokens: must be <= 100, got 200", "max_tokens",
       "max_tokens: must be <= 100, got 200"},
      {Endpoint::kChat, "sampling.temperature: must be finite", "temperature",
       "temperature: must be finite"},
      {Endpoint::kChat, "sampling.top_p: must be in (0, 1], got 0", "top_p",
       "top_p: must be in (0, 1], got 0"},
      {Endpoint::kChat, "chat.messages[1].role: must be", "messages[1].role",
       "messages[1].role: must be"},
      {Endpoint::kChat, "chat: the chat is empty", "messages", "messages: the chat is empty"},
      {Endpoint::kChat, "text: the prompt encodes to no tokens", "messages",
       "messages: the prompt encodes to no tokens"},
      {Endpoint::kCompletion, "text: the prompt must not be empty", "prompt",
       "prompt: the prompt must not be empty"},
      {Endpoint::kCompletion, "token_ids.ids[2]: token id 999", "prompt[2]",
       "prompt[2]: token id 999"},
      {Endpoint::kCompletion, "prompt: 5000 tokens leave no room", "prompt",
       "prompt: 5000 tokens leave no room"},
      {Endpoint::kChat, "prompt: 5000 tokens leave no room", "messages",
       "messages: 5000 tokens leave no room"},
      {Endpoint::kCompletion, "stopping.stop_strings[0]: must be 1 to 256 bytes", "stop[0]",
       "stop[0]: must be 1 to 256 bytes"},
      {Endpoint::kCompletion, "stopping.stop_token_ids: at most 1024 ids", "stop_token_ids",
       "stop_token_ids: at most 1024 ids"},
      {Endpoint::kCompletion, "top_logprobs: must be in [0, 20]", "logprobs",
       "logprobs: must be in [0, 20]"},
      {Endpoint::kChat, "top_logprobs: must be in [0, 20]", "top_logprobs",
       "top_logprobs: must be in [0, 20]"},
      {Endpoint::kDetokenize, "token_ids[3]: token id 999", "tokens[3]", "tokens[3]: token id 999"},
      {Endpoint::kTokenize, "text: invalid UTF-8", "prompt", "prompt: invalid UTF-8"},
      {Endpoint::kTokenize, "chat.messages: must not be empty", "messages",
       "messages: must not be empty"},
      {Endpoint::kChat, "request: 9 bytes exceeds the limit", "",
       "request: 9 bytes exceeds the limit"},
      {Endpoint::kChat, "request_id: must be printable", "", "request_id: must be printable"},
      {Endpoint::kChat, "a sentence: not a field", "", "a sentence: not a field"},
      {Endpoint::kChat, "no colon at all", "", "no colon at all"},
  };
  for (const Case& c : cases) {
    const ApiError e = FromStatus(absl::InvalidArgumentError(c.message), c.endpoint);
    EXPECT_EQ(e.http_status, 400);
    EXPECT_EQ(e.param, c.param) << c.message;
    EXPECT_EQ(e.message, c.mapped);
  }
  // Only a 400 names a field.
  EXPECT_EQ(FromStatus(absl::NotFoundError("model: x"), Endpoint::kChat).param, "");
}

// ---- Responses --------------------------------------------------------------------------------

class OpenAiResponseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_ = testing::TinyTokenizer();
    ASSERT_NE(tokenizer_, nullptr);
  }

  ResponseOptions Options(bool chat, bool logprobs, bool include_usage = false) const {
    OpenAiRequest r;
    r.chat = chat;
    r.model = "phi4-mini-flash";
    r.logprobs = logprobs;
    r.include_usage = include_usage;
    return MakeResponseOptions(r, "r1", 1700000000, *tokenizer_);
  }

  std::unique_ptr<Tokenizer> tokenizer_;
};

// A flow message: ids, text, and per id a logprob with the given alternatives.
v1::GenerateResponse Msg(const std::vector<uint32_t>& ids, const std::string& text,
                         const std::vector<std::vector<std::pair<uint32_t, float>>>& tops = {}) {
  v1::GenerateResponse m;
  for (size_t i = 0; i < ids.size(); ++i) {
    m.add_token_ids(ids[i]);
    if (i >= tops.size()) continue;
    v1::PositionLogprobs* p = m.add_logprobs();
    p->mutable_token()->set_token_id(ids[i]);
    p->mutable_token()->set_logprob(tops[i].empty() ? -0.5f : tops[i][0].second);
    for (const auto& [id, lp] : tops[i]) {
      v1::TokenLogprob* t = p->add_top();
      t->set_token_id(id);
      t->set_logprob(lp);
    }
  }
  m.set_text(text);
  return m;
}

v1::GenerateResponse Last(v1::FinishReason reason, const std::string& text = "") {
  v1::GenerateResponse m;
  m.set_text(text);
  m.set_finish_reason(reason);
  m.mutable_usage()->set_prompt_tokens(5);
  m.mutable_usage()->set_completion_tokens(3);
  return m;
}

TEST_F(OpenAiResponseTest, ChatStream) {
  ChunkWriter w(Options(/*chat=*/true, /*logprobs=*/false, /*include_usage=*/true));
  std::string sse = w.First();
  sse += w.Delta(Msg({'H', 'e'}, "He"));
  EXPECT_EQ(w.Delta(Msg({0xC3}, "")), "");  // held back: nothing to send
  sse += w.Delta(Msg({0xA9}, "\xC3\xA9"));
  const v1::GenerateResponse last = Last(v1::FINISH_REASON_STOP);
  sse += w.Delta(last);
  sse += w.Usage(last.usage());
  sse += ChunkWriter::Done();
  const std::vector<json> ev = Events(sse);
  ASSERT_EQ(ev.size(), 6u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(ev[i]["id"], "chatcmpl-r1");
    EXPECT_EQ(ev[i]["object"], "chat.completion.chunk");
    EXPECT_EQ(ev[i]["created"], 1700000000);
    EXPECT_EQ(ev[i]["model"], "phi4-mini-flash");
  }
  EXPECT_EQ(ev[0]["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_EQ(ev[0]["choices"][0]["index"], 0);
  EXPECT_TRUE(ev[0]["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(ev[0].contains("usage") && ev[0]["usage"].is_null());  // include_usage
  EXPECT_EQ(ev[1]["choices"][0]["delta"], json({{"content", "He"}}));
  EXPECT_TRUE(ev[1]["choices"][0]["logprobs"].is_null());
  EXPECT_TRUE(ev[1]["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(ev[2]["choices"][0]["delta"]["content"], "\xC3\xA9");
  EXPECT_EQ(ev[3]["choices"][0]["delta"], json::object());
  EXPECT_EQ(ev[3]["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(ev[4]["choices"], json::array());
  EXPECT_EQ(ev[4]["usage"],
            json({{"prompt_tokens", 5}, {"completion_tokens", 3}, {"total_tokens", 8}}));
  EXPECT_EQ(ev[5], "[DONE]");
}

TEST_F(OpenAiResponseTest, CompletionStreamWithLogprobs) {
  ChunkWriter w(Options(/*chat=*/false, /*logprobs=*/true));
  EXPECT_EQ(w.First(), "");  // completions have no role chunk
  std::string sse = w.Delta(Msg({'h', 'i'}, "hi", {{{'h', -0.5f}, {'j', -1.25f}}, {{'i', -0.1f}}}));
  sse += w.Delta(Msg({0xC3}, "", {{{0xC3, -2.0f}, {0xC4, -2.5f}}}));
  sse += w.Delta(Last(v1::FINISH_REASON_LENGTH, "\xEF\xBF\xBD"));
  const std::vector<json> ev = Events(sse);
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[0]["id"], "cmpl-r1");
  EXPECT_EQ(ev[0]["object"], "text_completion");
  EXPECT_FALSE(ev[0].contains("usage"));
  const json& c0 = ev[0]["choices"][0];
  EXPECT_EQ(c0["text"], "hi");
  EXPECT_EQ(c0["logprobs"]["tokens"], json::array({"h", "i"}));
  EXPECT_EQ(c0["logprobs"]["token_logprobs"], json::array({-0.5, -0.1}));  // shortest form
  EXPECT_EQ(c0["logprobs"]["top_logprobs"][0], json({{"h", -0.5}, {"j", -1.25}}));
  EXPECT_EQ(c0["logprobs"]["text_offset"], json::array({0, 1}));
  EXPECT_TRUE(c0["finish_reason"].is_null());
  // A token that is not UTF-8 alone: U+FFFD; two alike alternatives keep the more likely.
  const json& c1 = ev[1]["choices"][0];
  EXPECT_EQ(c1["text"], "");
  EXPECT_EQ(c1["logprobs"]["tokens"], json::array({"\xEF\xBF\xBD"}));
  EXPECT_EQ(c1["logprobs"]["top_logprobs"][0], json({{"\xEF\xBF\xBD", -2.0}}));
  EXPECT_EQ(c1["logprobs"]["text_offset"], json::array({2}));
  EXPECT_EQ(ev[2]["choices"][0]["text"], "\xEF\xBF\xBD");
  EXPECT_TRUE(ev[2]["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(ev[2]["choices"][0]["finish_reason"], "length");
}

TEST_F(OpenAiResponseTest, ChatBodyWithLogprobs) {
  ResponseCollector c(Options(/*chat=*/true, /*logprobs=*/true));
  c.Add(Msg({'h', 0xC3}, "h", {{{'h', -0.25f}, {'k', -3.0f}}, {}}));
  v1::GenerateResponse end = Msg({0xA9, 260}, "\xC3\xA9", {{}, {{260, 0.0f}}});
  end.mutable_logprobs(0)->mutable_token()->set_logprob(-std::numeric_limits<float>::infinity());
  c.Add(end);
  c.Add(Last(v1::FINISH_REASON_STOP));
  const json b = json::parse(c.Body(Last(v1::FINISH_REASON_STOP).usage()));
  EXPECT_EQ(b["id"], "chatcmpl-r1");
  EXPECT_EQ(b["object"], "chat.completion");
  EXPECT_EQ(b["created"], 1700000000);
  ASSERT_EQ(b["choices"].size(), 1u);
  const json& ch = b["choices"][0];
  EXPECT_EQ(ch["message"], json({{"role", "assistant"}, {"content", "h\xC3\xA9"}}));
  EXPECT_EQ(ch["finish_reason"], "stop");
  const json& lp = ch["logprobs"]["content"];
  ASSERT_EQ(lp.size(), 4u);
  EXPECT_EQ(lp[0]["token"], "h");
  EXPECT_EQ(lp[0]["logprob"], -0.25);
  EXPECT_EQ(lp[0]["bytes"], json::array({'h'}));
  ASSERT_EQ(lp[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(lp[0]["top_logprobs"][1], json({{"token", "k"}, {"logprob", -3.0}, {"bytes", {'k'}}}));
  EXPECT_EQ(lp[1]["token"], "\xEF\xBF\xBD");  // half a character: replaced, raw bytes kept
  EXPECT_EQ(lp[1]["bytes"], json::array({0xC3}));
  EXPECT_EQ(lp[1]["top_logprobs"], json::array());
  EXPECT_EQ(lp[2]["logprob"], -9999.0);  // -inf
  EXPECT_EQ(lp[3]["token"], "<|end|>");
  EXPECT_EQ(b["usage"]["total_tokens"], 8);
}

TEST_F(OpenAiResponseTest, CompletionBody) {
  ResponseCollector c(Options(/*chat=*/false, /*logprobs=*/true));
  c.Add(Msg({0xC3, 0xA9}, "\xC3\xA9", {{{0xC3, -1.0f}}, {{0xA9, -1.0f}}}));
  c.Add(Msg({'!'}, "!", {{{'!', -0.75f}}}));
  c.Add(Last(v1::FINISH_REASON_ABORT));
  const json b = json::parse(c.Body(Last(v1::FINISH_REASON_ABORT).usage()));
  EXPECT_EQ(b["id"], "cmpl-r1");
  EXPECT_EQ(b["object"], "text_completion");
  const json& ch = b["choices"][0];
  EXPECT_EQ(ch["text"], "\xC3\xA9!");
  EXPECT_EQ(ch["finish_reason"], "abort");
  EXPECT_EQ(ch["logprobs"]["tokens"].size(), 3u);
  EXPECT_EQ(ch["logprobs"]["token_logprobs"], json::array({-1.0, -1.0, -0.75}));
  EXPECT_EQ(ch["logprobs"]["text_offset"], json::array({0, 1, 2}));  // vLLM's: rendered tokens
  EXPECT_EQ(b["usage"],
            json({{"prompt_tokens", 5}, {"completion_tokens", 3}, {"total_tokens", 8}}));

  // Logprobs not asked for: null, even when the messages carry some.
  ResponseCollector plain(Options(/*chat=*/false, /*logprobs=*/false));
  plain.Add(Msg({'a'}, "a", {{{'a', -1.0f}}}));
  const json p = json::parse(plain.Body(v1::Usage()));
  EXPECT_TRUE(p["choices"][0]["logprobs"].is_null());
  EXPECT_TRUE(p["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(FinishReasonName(v1::FINISH_REASON_ERROR), "error");
  EXPECT_EQ(FinishReasonName(v1::FINISH_REASON_UNSPECIFIED), "");
}

TEST(OpenAiBodiesTest, ModelsAndIds) {
  const json m = json::parse(ModelsBody({"a", "b"}, 123, "sambay"));
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 2u);
  EXPECT_EQ(m["data"][1],
            json({{"id", "b"}, {"object", "model"}, {"created", 123}, {"owned_by", "sambay"}}));
  EXPECT_EQ(ResponseId(true, "x"), "chatcmpl-x");
  EXPECT_EQ(ResponseId(false, "x"), "cmpl-x");
}

}  // namespace
}  // namespace sambay::openai
