// The OpenAI request bodies to sambay.v1 requests (openai_api.h "Requests"): the JSON parse with
// errors that name the field, then one handler per top-level field from a table, then the checks
// that involve several fields.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "router/openai_api.h"

namespace sambay::openai {
namespace {

namespace pb = sambay::v1;
using json = nlohmann::json;
// An error to answer with, or none.
using Check = std::optional<ApiError>;

constexpr int64_t kMaxTokenId = (int64_t{1} << 31) - 1;
constexpr int kMaxTopLogprobs = 20;

// At most kMaxEcho bytes of `s` (errors quote field names, paths and the parser; a hostile
// body must not make them large).
constexpr size_t kMaxEcho = 256;
std::string Capped(absl::string_view s) {
  return s.size() <= kMaxEcho ? std::string(s) : absl::StrCat(s.substr(0, kMaxEcho), "...");
}

// A 400 naming `field`; the message is "field: what".
ApiError Bad(absl::string_view field, absl::string_view what) {
  std::string name = Capped(field);
  std::string message = absl::StrCat(name, ": ", what);
  return MakeError(400, std::move(name), std::move(message));
}

ApiError WrongType(absl::string_view field, absl::string_view expected, const json& v) {
  return Bad(field, absl::StrCat("expected ", expected, ", got ", v.type_name()));
}

// A value quoted in an error message: printable ASCII, at most 64 bytes of it.
std::string Quote(const std::string& s) {
  std::string e = absl::CHexEscape(s.substr(0, 64));
  return absl::StrCat("\"", e, s.size() > 64 ? "...\"" : "\"");
}

// ---- JSON parse ------------------------------------------------------------------------------

// Follows json::parse's callback events as the path of the value being parsed
// ("messages[1].content"), so that an error inside a value can name its field.
class PathTracker {
 public:
  bool Event(json::parse_event_t event, const json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        BeginValue();
        frames_.push_back({event == json::parse_event_t::array_start, "", -1});
        break;
      case json::parse_event_t::key:
        if (!frames_.empty()) frames_.back().key = parsed.get<std::string>();
        break;
      case json::parse_event_t::value:
        BeginValue();
        EndValue();
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!frames_.empty()) frames_.pop_back();
        EndValue();
        break;
    }
    return true;
  }

  // The field being parsed when the parser stopped ("" for the whole body).
  std::string Path() const {
    std::string path;
    for (size_t i = 0; i < frames_.size(); ++i) {
      const Frame& f = frames_[i];
      if (f.array) {
        // The innermost array's element has not begun (its event comes once it is parsed).
        absl::StrAppend(&path, "[", i + 1 == frames_.size() ? f.index + 1 : f.index, "]");
      } else if (!f.key.empty()) {
        absl::StrAppend(&path, path.empty() ? "" : ".", f.key);
      }
    }
    return path;
  }

 private:
  struct Frame {
    bool array;
    std::string key;  // objects: the key whose value is being parsed
    int64_t index;    // arrays: the element being parsed
  };
  void BeginValue() {
    if (!frames_.empty() && frames_.back().array) ++frames_.back().index;
  }
  void EndValue() {
    if (!frames_.empty() && !frames_.back().array) frames_.back().key.clear();
  }
  std::vector<Frame> frames_;
};

// The field the parser was in when `body` failed to parse.
std::string FailedPath(std::string_view body) {
  PathTracker tracker;
  try {
    [[maybe_unused]] const json doc =
        json::parse(body, [&tracker](int, json::parse_event_t event, json& parsed) {
          return tracker.Event(event, parsed);
        });
  } catch (const json::exception&) {
  }
  return Capped(tracker.Path());
}

// nlohmann's message without its "[json.exception.parse_error.101] " prefix.
std::string ParserMessage(const json::exception& e) {
  absl::string_view what = e.what();
  if (const size_t end = what.find("] "); absl::StartsWith(what, "[json.") && end != what.npos) {
    what.remove_prefix(end + 2);
  }
  return Capped(what);
}

// The body as a JSON object. Malformed JSON: 400 with the parser's position; invalid UTF-8 in a
// string or a number too large for a double: 400 naming the field that holds it.
ApiResult<json> ParseObject(std::string_view body) {
  json doc;
  try {
    doc = json::parse(body);
  } catch (const json::parse_error& e) {
    const std::string msg = ParserMessage(e);
    if (absl::StrContains(msg, "UTF-8") || absl::StrContains(msg, "surrogate")) {
      const std::string path = FailedPath(body);
      return Bad(path.empty() ? "body" : path,
                 absl::StrCat("invalid UTF-8 in a JSON string (at byte ", e.byte, ")"));
    }
    return MakeError(400, "", absl::StrCat("invalid JSON: ", msg));
  } catch (const json::exception& e) {  // out_of_range 406: a number overflows a double
    const std::string path = FailedPath(body);
    return Bad(path.empty() ? "body" : path, ParserMessage(e));
  }
  if (!doc.is_object()) return WrongType("body", "a JSON object", doc);
  return doc;
}

// ---- Typed values ----------------------------------------------------------------------------

Check GetBool(const json& v, absl::string_view field, bool* out) {
  if (!v.is_boolean()) return WrongType(field, "a boolean", v);
  *out = v.get<bool>();
  return std::nullopt;
}

Check GetString(const json& v, absl::string_view field, std::string* out) {
  if (!v.is_string()) return WrongType(field, "a string", v);
  *out = v.get<std::string>();
  return std::nullopt;
}

// A number in [lo, hi].
Check GetNumber(const json& v, absl::string_view field, double lo, double hi, double* out) {
  if (!v.is_number()) return WrongType(field, "a number", v);
  *out = v.get<double>();
  if (!(*out >= lo && *out <= hi)) {
    return Bad(field, absl::StrCat("must be in [", lo, ", ", hi, "], got ", v.dump()));
  }
  return std::nullopt;
}

// An integer in [lo, hi]; a number with an integral value (5.0) counts as one.
Check GetInt(const json& v, absl::string_view field, int64_t lo, int64_t hi, int64_t* out) {
  if (!v.is_number()) return WrongType(field, "an integer", v);
  const auto range = [&] {
    return Bad(field, absl::StrCat("must be an integer in [", lo, ", ", hi, "], got ", v.dump()));
  };
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > static_cast<uint64_t>(hi)) return range();
    *out = static_cast<int64_t>(v.get<uint64_t>());
  } else if (v.is_number_integer()) {
    *out = v.get<int64_t>();
  } else {
    const double d = v.get<double>();
    // 2^63 is exact as a double; anything in [-2^63, 2^63) converts without overflow.
    if (std::floor(d) != d || !(d >= -0x1p63 && d < 0x1p63)) return range();
    *out = static_cast<int64_t>(d);
  }
  if (*out < lo || *out > hi) return range();
  return std::nullopt;
}

// Token ids: an array of integers in [0, 2^31).
Check GetIds(const json& v, absl::string_view field,
             google::protobuf::RepeatedField<uint32_t>* out) {
  if (!v.is_array()) return WrongType(field, "an array of token ids", v);
  for (size_t i = 0; i < v.size(); ++i) {
    int64_t id = 0;
    if (Check e = GetInt(v[i], absl::StrCat(field, "[", i, "]"), 0, kMaxTokenId, &id)) return e;
    out->Add(static_cast<uint32_t>(id));
  }
  return std::nullopt;
}

// True for null, "", [] and {}: a value that asks for nothing.
bool IsEmptyValue(const json& v) {
  if (v.is_string()) return v.get_ref<const std::string&>().empty();
  return v.is_null() || ((v.is_array() || v.is_object()) && v.empty());
}

// ---- Chat messages ---------------------------------------------------------------------------

// A message's content: a string, or an array of {"type": "text", "text"} parts joined with "\n"
// (vLLM's joining of text parts).
Check ParseContent(const json& v, const std::string& field, std::string* out) {
  if (v.is_string()) return GetString(v, field, out);
  if (!v.is_array()) return WrongType(field, "a string or an array of text parts", v);
  std::vector<std::string> texts;
  for (size_t j = 0; j < v.size(); ++j) {
    const std::string part = absl::StrCat(field, "[", j, "]");
    const json& p = v[j];
    if (!p.is_object()) return WrongType(part, "an object", p);
    if (!p.contains("type")) return Bad(part + ".type", "required");
    std::string type;
    if (Check e = GetString(p["type"], part + ".type", &type)) return e;
    if (type != "text") {
      return Bad(part + ".type",
                 absl::StrCat("only \"text\" parts are supported, got ", Quote(type)));
    }
    for (const auto& [key, unused] : p.items()) {
      if (key != "type" && key != "text") return Bad(absl::StrCat(part, ".", key), "unknown field");
    }
    if (!p.contains("text")) return Bad(part + ".text", "required");
    if (Check e = GetString(p["text"], part + ".text", &texts.emplace_back())) return e;
  }
  *out = absl::StrJoin(texts, "\n");
  return std::nullopt;
}

// A message's role, as the chat format names it: system, user, assistant; "developer" (OpenAI's
// newer name for the system role) is system. Tool messages need tool calls, which are refused.
Check ParseRole(const json& v, const std::string& field, std::string* out) {
  if (Check e = GetString(v, field, out)) return e;
  if (*out == "developer") *out = "system";
  if (*out == "tool" || *out == "function") return Bad(field, "tool messages are not supported");
  if (*out != "system" && *out != "user" && *out != "assistant") {
    return Bad(field,
               absl::StrCat("must be system, user, assistant or developer, got ", Quote(*out)));
  }
  return std::nullopt;
}

// The fields of a message that a client may send back empty (an assistant message as the API
// returned it); a non-empty value asks for tools or audio, which are not supported.
constexpr absl::string_view kEmptyMessageFields[] = {"tool_calls", "function_call", "tool_call_id",
                                                     "refusal",    "audio",         "annotations"};

Check ParseMessage(const json& m, size_t i, pb::ChatMessage* out) {
  const std::string field = absl::StrCat("messages[", i, "]");
  if (!m.is_object()) return WrongType(field, "an object", m);
  for (const auto& [key, v] : m.items()) {
    const std::string sub = absl::StrCat(field, ".", key);
    if (key == "role") {
      if (Check e = ParseRole(v, sub, out->mutable_role())) return e;
    } else if (key == "content") {
      if (Check e = ParseContent(v, sub, out->mutable_content())) return e;
    } else if (key == "name") {
      // The participant's name: the Phi-4 chat format has no place for it (its template ignores
      // it too), so it is checked and left out.
      std::string unused;
      if (Check e = v.is_null() ? std::nullopt : GetString(v, sub, &unused)) return e;
    } else if (absl::c_linear_search(kEmptyMessageFields, key)) {
      if (!IsEmptyValue(v)) return Bad(sub, "not supported");
    } else {
      return Bad(sub, "unknown field");
    }
  }
  if (!m.contains("role")) return Bad(field + ".role", "required");
  if (!m.contains("content")) return Bad(field + ".content", "required");
  return std::nullopt;
}

Check ParseMessages(const json& v, pb::Chat* chat) {
  if (!v.is_array()) return WrongType("messages", "an array of messages", v);
  for (size_t i = 0; i < v.size(); ++i) {
    if (Check e = ParseMessage(v[i], i, chat->add_messages())) return e;
  }
  return std::nullopt;
}

// ---- Top-level fields ------------------------------------------------------------------------

// What the field handlers build, and what the checks across fields need.
struct Parse {
  const ApiOptions& options;
  OpenAiRequest out = {};
  bool has_prompt = false;
  bool has_temperature = false;
  bool has_stream_options = false;
  std::optional<int64_t> max_tokens = std::nullopt;
  std::optional<int64_t> max_completion_tokens = std::nullopt;
};

pb::SamplingParams& Sampling(Parse& p) { return *p.out.request.mutable_sampling(); }
pb::StoppingCriteria& Stopping(Parse& p) { return *p.out.request.mutable_stopping(); }

using Handler = Check (*)(absl::string_view name, const json& v, Parse& p);

Check Model(absl::string_view name, const json& v, Parse& p) {
  return GetString(v, name, &p.out.model);
}

Check Messages(absl::string_view, const json& v, Parse& p) {
  p.has_prompt = true;
  return ParseMessages(v, p.out.request.mutable_chat());
}

// A string, an array of token ids, or a batch of one of these (a batch of one prompt is that
// prompt).
Check Prompt(absl::string_view name, const json& v, Parse& p) {
  p.has_prompt = true;
  pb::GenerateRequest& r = p.out.request;
  if (v.is_string()) return GetString(v, name, r.mutable_text());
  if (!v.is_array()) return WrongType(name, "a string or an array of token ids", v);
  if (v.empty() || !(v[0].is_string() || v[0].is_array())) {
    return GetIds(v, name, r.mutable_token_ids()->mutable_ids());
  }
  if (v.size() > 1) return Bad(name, "only one prompt per request");
  const std::string first = absl::StrCat(name, "[0]");
  if (v[0].is_string()) return GetString(v[0], first, r.mutable_text());
  return GetIds(v[0], first, r.mutable_token_ids()->mutable_ids());
}

// max_tokens, max_completion_tokens: the proto's 0 means "default", so 0 is refused.
Check MaxTokens(absl::string_view name, const json& v, Parse& p) {
  int64_t n = 0;
  if (Check e = GetInt(v, name, 1, std::numeric_limits<uint32_t>::max(), &n)) return e;
  (name == "max_tokens" ? p.max_tokens : p.max_completion_tokens) = n;
  return std::nullopt;
}

Check Temperature(absl::string_view name, const json& v, Parse& p) {
  double t = 0;
  if (Check e = GetNumber(v, name, 0, 2, &t)) return e;
  Sampling(p).set_temperature(static_cast<float>(t));
  p.has_temperature = true;
  return std::nullopt;
}

// A double as a float; beyond the float range, an infinity (a plain cast would be undefined).
float ToFloat(double x) {
  constexpr double kMax = std::numeric_limits<float>::max();
  if (std::abs(x) > kMax) return std::copysign(std::numeric_limits<float>::infinity(), x);
  return static_cast<float>(x);
}

// Numbers whose range PrepareRequest checks (top_p, min_p, repetition_penalty); one too large
// for a float reaches it as an infinity.
Check SamplingNumber(absl::string_view name, const json& v, Parse& p) {
  double x = 0;
  const double inf = std::numeric_limits<double>::infinity();
  if (Check e = GetNumber(v, name, -inf, inf, &x)) return e;
  const float f = ToFloat(x);
  if (name == "top_p") Sampling(p).set_top_p(f);
  if (name == "min_p") Sampling(p).set_min_p(f);
  if (name == "repetition_penalty") Sampling(p).set_repetition_penalty(f);
  return std::nullopt;
}

// presence_penalty and frequency_penalty: OpenAI's range [-2, 2].
Check Penalty(absl::string_view name, const json& v, Parse& p) {
  double x = 0;
  if (Check e = GetNumber(v, name, -2, 2, &x)) return e;
  if (name == "presence_penalty") Sampling(p).set_presence_penalty(static_cast<float>(x));
  if (name == "frequency_penalty") Sampling(p).set_frequency_penalty(static_cast<float>(x));
  return std::nullopt;
}

// vLLM's top_k: -1 or 0 = off.
Check TopK(absl::string_view name, const json& v, Parse& p) {
  int64_t k = 0;
  if (Check e = GetInt(v, name, -1, std::numeric_limits<int32_t>::max(), &k)) return e;
  Sampling(p).set_top_k(static_cast<int32_t>(std::max<int64_t>(k, 0)));
  return std::nullopt;
}

// Any 64-bit integer, signed or not (a negative seed is its two's complement bits).
Check Seed(absl::string_view name, const json& v, Parse& p) {
  if (v.is_number_unsigned()) {
    Sampling(p).set_seed(v.get<uint64_t>());
    return std::nullopt;
  }
  int64_t s = 0;
  if (Check e = GetInt(v, name, std::numeric_limits<int64_t>::min(),
                       std::numeric_limits<int64_t>::max(), &s)) {
    return e;
  }
  Sampling(p).set_seed(static_cast<uint64_t>(s));
  return std::nullopt;
}

// A string or an array of strings (their number and sizes are PrepareRequest's checks).
Check Stop(absl::string_view name, const json& v, Parse& p) {
  if (v.is_string()) return GetString(v, name, Stopping(p).add_stop_strings());
  if (!v.is_array()) return WrongType(name, "a string or an array of strings", v);
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string field = absl::StrCat(name, "[", i, "]");
    if (Check e = GetString(v[i], field, Stopping(p).add_stop_strings())) return e;
  }
  return std::nullopt;
}

Check StopTokenIds(absl::string_view name, const json& v, Parse& p) {
  return GetIds(v, name, Stopping(p).mutable_stop_token_ids());
}

Check IgnoreEos(absl::string_view name, const json& v, Parse& p) {
  bool b = false;
  if (Check e = GetBool(v, name, &b)) return e;
  Stopping(p).set_ignore_eos(b);
  return std::nullopt;
}

// Chat: a boolean (top_logprobs gives the alternatives).
Check ChatLogprobs(absl::string_view name, const json& v, Parse& p) {
  return GetBool(v, name, &p.out.logprobs);
}

// Completions: the number of alternatives per position, in [0, 20].
Check CompletionLogprobs(absl::string_view name, const json& v, Parse& p) {
  int64_t n = 0;
  if (Check e = GetInt(v, name, 0, kMaxTopLogprobs, &n)) return e;
  p.out.logprobs = true;
  p.out.top_logprobs = static_cast<int>(n);
  return std::nullopt;
}

Check TopLogprobs(absl::string_view name, const json& v, Parse& p) {
  int64_t n = 0;
  if (Check e = GetInt(v, name, 0, kMaxTopLogprobs, &n)) return e;
  p.out.top_logprobs = static_cast<int>(n);
  return std::nullopt;
}

Check N(absl::string_view name, const json& v, Parse& p) {
  int64_t n = 0;
  const int64_t max = std::numeric_limits<int64_t>::max();
  if (Check e = GetInt(v, name, std::numeric_limits<int64_t>::min(), max, &n)) return e;
  if (n != 1) return Bad(name, "only n=1 is supported");
  return std::nullopt;
}

Check User(absl::string_view name, const json& v, Parse& p) {
  return GetString(v, name, &p.out.user);
}

Check Stream(absl::string_view name, const json& v, Parse& p) {
  return GetBool(v, name, &p.out.stream);
}

// {"include_usage": bool}; only with stream true (checked once every field is read).
Check StreamOptions(absl::string_view name, const json& v, Parse& p) {
  if (!v.is_object()) return WrongType(name, "an object", v);
  p.has_stream_options = true;
  for (const auto& [key, value] : v.items()) {
    const std::string field = absl::StrCat(name, ".", key);
    if (key != "include_usage") return Bad(field, "unknown field");
    if (value.is_null()) continue;
    if (Check e = GetBool(value, field, &p.out.include_usage)) return e;
  }
  return std::nullopt;
}

// ---- Fields accepted only with a value that asks for nothing ----------------------------------

// Refused whatever the value (audio, prediction, parallel_tool_calls, ...).
Check Unsupported(absl::string_view name, const json&, Parse&) {
  return Bad(name, "not supported");
}

// Accepted when empty ([] for tools, {} for logit_bias, "" for suffix).
Check EmptyOnly(absl::string_view name, const json& v, Parse&) {
  if (IsEmptyValue(v)) return std::nullopt;
  return Bad(name, "not supported");
}

// Accepted when false (store: nothing is stored; echo: the prompt is not echoed).
Check FalseOnly(absl::string_view name, const json& v, Parse&) {
  bool b = false;
  if (Check e = GetBool(v, name, &b)) return e;
  if (b) return Bad(name, "not supported");
  return std::nullopt;
}

// Accepted when 1 (best_of).
Check OneOnly(absl::string_view name, const json& v, Parse&) {
  int64_t n = 0;
  const int64_t max = std::numeric_limits<int64_t>::max();
  if (Check e = GetInt(v, name, std::numeric_limits<int64_t>::min(), max, &n)) return e;
  if (n != 1) return Bad(name, absl::StrCat("only ", name, "=1 is supported"));
  return std::nullopt;
}

// tool_choice and function_call: only "none" (there are no tools to call).
Check NoneOnly(absl::string_view name, const json& v, Parse&) {
  if (v.is_string() && v.get<std::string>() == "none") return std::nullopt;
  return Bad(name, "not supported (only \"none\": tools are not supported)");
}

// OpenAI's metadata (tags for stored completions; nothing is stored): an object of strings.
Check Metadata(absl::string_view name, const json& v, Parse&) {
  if (!v.is_object()) return WrongType(name, "an object", v);
  for (const auto& [key, value] : v.items()) {
    if (!value.is_string()) return WrongType(absl::StrCat(name, ".", key), "a string", value);
  }
  return std::nullopt;
}

// "auto" or "default": there is one tier.
Check ServiceTier(absl::string_view name, const json& v, Parse&) {
  std::string tier;
  if (Check e = GetString(v, name, &tier)) return e;
  if (tier != "auto" && tier != "default") {
    return Bad(name,
               absl::StrCat("only \"auto\" and \"default\" are supported, got ", Quote(tier)));
  }
  return std::nullopt;
}

Check ResponseFormat(absl::string_view name, const json& v, Parse&) {
  if (v == json{{"type", "text"}}) return std::nullopt;
  return Bad(name, "only {\"type\": \"text\"} is supported");
}

Check Modalities(absl::string_view name, const json& v, Parse&) {
  if (v == json::array({"text"})) return std::nullopt;
  return Bad(name, "only [\"text\"] is supported");
}

// ---- The field tables ------------------------------------------------------------------------

enum Endpoints : uint8_t { kChatOnly = 1, kCompletionOnly = 2, kBoth = 3 };

struct FieldRule {
  absl::string_view name;
  Handler handler;
  uint8_t endpoints;
};

// Every top-level field either endpoint knows. A field not listed for the endpoint is refused
// as unknown. Both endpoints refuse the other's unsupported features by name.
constexpr FieldRule kFields[] = {
    {"model", Model, kBoth},
    {"messages", Messages, kChatOnly},
    {"prompt", Prompt, kCompletionOnly},
    {"max_tokens", MaxTokens, kBoth},
    {"max_completion_tokens", MaxTokens, kChatOnly},
    {"temperature", Temperature, kBoth},
    {"top_p", SamplingNumber, kBoth},
    {"min_p", SamplingNumber, kBoth},
    {"repetition_penalty", SamplingNumber, kBoth},
    {"top_k", TopK, kBoth},
    {"seed", Seed, kBoth},
    {"presence_penalty", Penalty, kBoth},
    {"frequency_penalty", Penalty, kBoth},
    {"stop", Stop, kBoth},
    {"stop_token_ids", StopTokenIds, kBoth},
    {"ignore_eos", IgnoreEos, kBoth},
    {"logprobs", ChatLogprobs, kChatOnly},
    {"logprobs", CompletionLogprobs, kCompletionOnly},
    {"top_logprobs", TopLogprobs, kChatOnly},
    {"n", N, kBoth},
    {"user", User, kBoth},
    {"stream", Stream, kBoth},
    {"stream_options", StreamOptions, kBoth},
    {"store", FalseOnly, kBoth},
    {"metadata", Metadata, kBoth},
    {"service_tier", ServiceTier, kBoth},
    {"echo", FalseOnly, kBoth},
    {"best_of", OneOnly, kBoth},
    {"logit_bias", EmptyOnly, kBoth},
    {"suffix", EmptyOnly, kBoth},
    {"tools", EmptyOnly, kBoth},
    {"functions", EmptyOnly, kBoth},
    {"tool_choice", NoneOnly, kBoth},
    {"function_call", NoneOnly, kBoth},
    {"response_format", ResponseFormat, kBoth},
    {"modalities", Modalities, kBoth},
    {"parallel_tool_calls", Unsupported, kBoth},
    {"audio", Unsupported, kBoth},
    {"prediction", Unsupported, kBoth},
};

const FieldRule* FindRule(absl::string_view name, bool chat) {
  const uint8_t endpoint = chat ? kChatOnly : kCompletionOnly;
  for (const FieldRule& rule : kFields) {
    if (rule.name == name && (rule.endpoints & endpoint) != 0) return &rule;
  }
  return nullptr;
}

// ---- The whole request -----------------------------------------------------------------------

// The served model: the request's, which must be served, else the first served name.
Check ResolveModel(const ApiOptions& options, std::string* model) {
  if (model->empty()) {
    *model = options.model_names.empty() ? "" : options.model_names.front();
    return std::nullopt;
  }
  if (absl::c_linear_search(options.model_names, *model)) return std::nullopt;
  return MakeError(404, "model",
                   absl::StrCat("model: the model ", Quote(*model), " does not exist (served: ",
                                absl::StrJoin(options.model_names, ", "), ")"),
                   "model_not_found");
}

// The checks that involve several fields, then the fields that depend on them.
Check Finish(Parse& p) {
  OpenAiRequest& out = p.out;
  if (!p.has_prompt) return Bad(out.chat ? "messages" : "prompt", "required");
  if (p.max_tokens && p.max_completion_tokens && *p.max_tokens != *p.max_completion_tokens) {
    return Bad("max_completion_tokens",
               absl::StrCat("differs from max_tokens (", *p.max_completion_tokens, " vs ",
                            *p.max_tokens, "); give one of them"));
  }
  if (const auto max = p.max_tokens ? p.max_tokens : p.max_completion_tokens) {
    Stopping(p).set_max_new_tokens(static_cast<uint32_t>(*max));
  }
  if (p.has_stream_options && !out.stream) return Bad("stream_options", "requires stream: true");
  if (out.chat && out.top_logprobs > 0 && !out.logprobs) {
    return Bad("top_logprobs", "requires logprobs: true");
  }
  out.request.set_return_logprobs(out.logprobs);
  out.request.set_top_logprobs(out.logprobs ? out.top_logprobs : 0);
  if (!p.has_temperature) Sampling(p).set_temperature(p.options.default_temperature);
  return std::nullopt;
}

ApiResult<OpenAiRequest> ParseGenerate(std::string_view body, const ApiOptions& options,
                                       bool chat) {
  ApiResult<json> doc = ParseObject(body);
  if (ApiError* e = std::get_if<ApiError>(&doc)) return *e;
  const json& obj = std::get<json>(doc);
  Parse p{.options = options};
  p.out.chat = chat;
  // The model first: a request for a model not served is answered 404 whatever else it has.
  if (auto it = obj.find("model"); it != obj.end() && !it->is_null()) {
    if (Check e = Model("model", *it, p)) return *e;
  }
  if (Check e = ResolveModel(options, &p.out.model)) return *e;
  for (const auto& [key, value] : obj.items()) {
    const FieldRule* rule = FindRule(key, chat);
    if (rule == nullptr) return Bad(key, absl::StrCat("unknown field: ", Capped(key)));
    if (value.is_null() || key == "model") continue;  // null: not given
    if (Check e = rule->handler(key, value, p)) return *e;
  }
  if (Check e = Finish(p)) return *e;
  return std::move(p.out);
}

}  // namespace

ApiResult<OpenAiRequest> ParseChatRequest(std::string_view body, const ApiOptions& options) {
  return ParseGenerate(body, options, /*chat=*/true);
}

ApiResult<OpenAiRequest> ParseCompletionRequest(std::string_view body, const ApiOptions& options) {
  return ParseGenerate(body, options, /*chat=*/false);
}

// ---- Tokenize and Detokenize -----------------------------------------------------------------

namespace {

// One field of a tokenize body (null: not given).
Check TokenizeField(const std::string& key, const json& v, pb::TokenizeRequest* out) {
  constexpr absl::string_view kKnown[] = {"prompt", "messages", "add_special_tokens",
                                          "add_generation_prompt"};
  if (!absl::c_linear_search(kKnown, key))
    return Bad(key, absl::StrCat("unknown field: ", Capped(key)));
  if (v.is_null()) return std::nullopt;
  if (key == "prompt") return GetString(v, key, out->mutable_text());
  if (key == "messages") return ParseMessages(v, out->mutable_chat());
  bool b = false;
  if (Check e = GetBool(v, key, &b)) return e;
  // add_special_tokens changes nothing (openai_api.h); the chat prompt always ends with the
  // generation prompt.
  if (key == "add_generation_prompt" && !b) return Bad(key, "false is not supported");
  return std::nullopt;
}

// The model of a tokenize/detokenize body, when it names one.
Check CheckModel(const json& obj, const ApiOptions& options) {
  auto it = obj.find("model");
  if (it == obj.end() || it->is_null()) return std::nullopt;
  std::string model;
  if (Check e = GetString(*it, "model", &model)) return e;
  return ResolveModel(options, &model);
}

}  // namespace

ApiResult<pb::TokenizeRequest> ParseTokenizeRequest(std::string_view body,
                                                    const ApiOptions& options) {
  ApiResult<json> doc = ParseObject(body);
  if (ApiError* e = std::get_if<ApiError>(&doc)) return *e;
  const json& obj = std::get<json>(doc);
  if (Check e = CheckModel(obj, options)) return *e;
  const bool text = obj.contains("prompt") && !obj["prompt"].is_null();
  const bool chat = obj.contains("messages") && !obj["messages"].is_null();
  if (text && chat) return Bad("messages", "give prompt or messages, not both");
  if (!text && !chat) return Bad("prompt", "required (or messages)");
  pb::TokenizeRequest out;
  for (const auto& [key, value] : obj.items()) {
    if (key == "model") continue;
    if (Check e = TokenizeField(key, value, &out)) return *e;
  }
  return out;
}

ApiResult<pb::DetokenizeRequest> ParseDetokenizeRequest(std::string_view body,
                                                        const ApiOptions& options) {
  ApiResult<json> doc = ParseObject(body);
  if (ApiError* e = std::get_if<ApiError>(&doc)) return *e;
  const json& obj = std::get<json>(doc);
  if (Check e = CheckModel(obj, options)) return *e;
  pb::DetokenizeRequest out;
  for (const auto& [key, value] : obj.items()) {
    if (key == "model") continue;
    if (key != "tokens") return Bad(key, absl::StrCat("unknown field: ", Capped(key)));
    if (Check e = GetIds(value, key, out.mutable_token_ids())) return *e;
  }
  if (!obj.contains("tokens")) return Bad("tokens", "required");
  return out;
}

}  // namespace sambay::openai
