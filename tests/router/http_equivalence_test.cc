// Same tokens both ways: one request sent through gRPC Generate and through the router's
// OpenAI-compatible HTTP API (POST /v1/completions with the prompt as a token-id array, POST
// /v1/chat/completions against the gRPC chat prompt) gives the same tokens and text, greedy and
// seeded (temperature 1, a fixed seed), in a prefill/decode split cluster, and through a kill -9
// of the decode worker that serves the HTTP stream (the stream migrates and still gives the
// tokens of the uninterrupted gRPC run).
//
// What is compared, and how exact it is. The HTTP API returns text, not token ids; ids come back
// through logprobs, per generated token:
//   * chat's logprobs give each token's raw "bytes". The tiny model's tokenizer is the byte
//     tokenizer: id b < 256 is the byte b and a special token is its text, so a token's bytes
//     name its id exactly. Ids with no token (261..319 of the tiny model's 320) have "bytes": null:
//     the HTTP API cannot tell them apart, so at those positions only "no token" and the
//     log-probability are compared;
//   * completions' logprobs give each token rendered alone ("tokens"; a byte >= 0x80 renders as
//     U+FFFD), compared with the same rendering of the gRPC ids;
//   * every position's log-probability is compared too. The router writes a float as the
//     shortest decimal that reads back as that float, so it is compared exactly when both runs
//     computed it the same way (no migration). After a migration the new decode worker's state
//     comes from a re-prefill, whose arithmetic rounds differently, so the failover test allows
//     1e-4 (measured: differences up to about 1e-5 after the kill, none before it; the sampled
//     tokens stay the same unless a seeded draw falls that close to a boundary, see below);
//   * the whole text is compared byte for byte, completion_tokens with the number of gRPC ids,
//     prompt_tokens with the prompt (and, for chat, /tokenize's ids with gRPC Tokenize's), and
//     finish_reason with the gRPC finish reason.
// Together these pin every id except that one no-token id could stand for another with an
// identical log-probability.
//
// The HTTP client is a small one of this test: raw POSIX sockets, an HTTP/1.1 request with
// Connection: close (the response ends at EOF), its chunked body and server-sent events parsed
// here.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/router/router_harness.h"
#include "tokenizer/stream_decoder.h"

namespace sambay::testing {
namespace {

namespace v1 = sambay::v1;
using json = nlohmann::json;

// ---- A small HTTP/1.1 client -----------------------------------------------------------------

struct HttpReply {
  int status = 0;
  std::string headers;  // the raw header block
  std::string body;     // de-chunked
  std::string error;    // a transport or framing problem; empty when the exchange completed
};

// Splits a response into its status, headers and (de-chunked) body, fed in pieces as they
// arrive; each piece of body goes to on_body at once.
class ResponseParser {
 public:
  ResponseParser(HttpReply* reply, std::function<void(std::string_view)> on_body)
      : reply_(reply), on_body_(std::move(on_body)) {}

  // False on a framing error (reply->error says which).
  bool Feed(std::string_view bytes) {
    pending_.append(bytes);
    if (!head_done_ && !ParseHead()) return reply_->error.empty();
    return chunked_ ? Dechunk() : Emit(TakeAll());
  }
  // Whether the body is complete (a chunked body's last chunk arrived; else at EOF).
  bool complete() const { return head_done_ && (!chunked_ || state_ == kDone); }

 private:
  enum State { kSize, kData, kDataEnd, kDone };

  bool ParseHead() {
    const size_t end = pending_.find("\r\n\r\n");
    if (end == std::string::npos) return false;
    reply_->headers = pending_.substr(0, end);
    pending_.erase(0, end + 4);
    head_done_ = true;
    // "HTTP/1.1 200 OK"
    const size_t sp = reply_->headers.find(' ');
    if (sp == std::string::npos ||
        !absl::SimpleAtoi(reply_->headers.substr(sp + 1, 3), &reply_->status)) {
      reply_->error = "not an HTTP response: " + reply_->headers.substr(0, 80);
      return false;
    }
    chunked_ =
        absl::StrContains(absl::AsciiStrToLower(reply_->headers), "transfer-encoding: chunked");
    return true;
  }

  std::string TakeAll() { return std::exchange(pending_, ""); }

  bool Emit(std::string_view piece) {
    if (piece.empty()) return true;
    reply_->body.append(piece);
    if (on_body_) on_body_(piece);
    return true;
  }

  bool Dechunk() {
    while (state_ != kDone) {
      if (state_ == kSize) {
        const size_t eol = pending_.find("\r\n");
        if (eol == std::string::npos) return true;
        const std::string size = pending_.substr(0, pending_.find_first_of(";\r"));
        if (!absl::SimpleHexAtoi(size, &remaining_)) {
          reply_->error = "bad chunk size: " + size;
          return false;
        }
        pending_.erase(0, eol + 2);
        state_ = remaining_ == 0 ? kDone : kData;
      } else if (state_ == kData) {
        if (pending_.empty()) return true;
        const size_t n = std::min<size_t>(remaining_, pending_.size());
        Emit(std::string_view(pending_).substr(0, n));
        pending_.erase(0, n);
        remaining_ -= n;
        if (remaining_ == 0) state_ = kDataEnd;
      } else {
        if (pending_.size() < 2) return true;
        if (pending_.compare(0, 2, "\r\n") != 0) {
          reply_->error = "chunk not followed by CRLF";
          return false;
        }
        pending_.erase(0, 2);
        state_ = kSize;
      }
    }
    return true;
  }

  HttpReply* reply_;
  std::function<void(std::string_view)> on_body_;
  std::string pending_;
  bool head_done_ = false, chunked_ = false;
  State state_ = kSize;
  uint64_t remaining_ = 0;
};

// A TCP connection to 127.0.0.1:port, or -1.
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Reads `fd` to EOF into `parser`, each read bounded by the deadline; "" or what went wrong.
std::string ReadToEof(int fd, ResponseParser& parser, absl::Time deadline) {
  char buf[16384];
  while (true) {
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) return "timeout";
    pollfd p{fd, POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(ms, 1000)));
    if (r < 0 && errno != EINTR) return absl::StrCat("poll: ", strerror(errno));
    if (r <= 0) continue;
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::StrCat("read: ", strerror(errno));
    if (n == 0) return parser.complete() ? "" : "EOF before the end of the response";
    if (!parser.Feed(std::string_view(buf, static_cast<size_t>(n)))) return "framing";
  }
}

// POST `body` (JSON) to http://127.0.0.1:port<path> and read the response to EOF; on_body gets
// each piece of the de-chunked body as it arrives.
HttpReply HttpPost(int port, const std::string& path, const std::string& body,
                   std::function<void(std::string_view)> on_body = nullptr,
                   absl::Duration timeout = absl::Seconds(30)) {
  HttpReply reply;
  const int fd = Connect(port);
  if (fd < 0) {
    reply.error = absl::StrCat("connect to port ", port, ": ", strerror(errno));
    return reply;
  }
  const std::string request =
      absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: 127.0.0.1:", port,
                   "\r\nContent-Type: application/json\r\nContent-Length: ", body.size(),
                   "\r\nConnection: close\r\n\r\n", body);
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      reply.error = absl::StrCat("send: ", strerror(errno));
      close(fd);
      return reply;
    }
    sent += static_cast<size_t>(n);
  }
  ResponseParser parser(&reply, std::move(on_body));
  const std::string error = ReadToEof(fd, parser, absl::Now() + timeout);
  if (reply.error.empty()) reply.error = error;
  close(fd);
  return reply;
}

// Server-sent events: "data: ...\n\n" each; [DONE] ends the stream. on_event gets each JSON
// payload as it completes.
class SseParser {
 public:
  explicit SseParser(std::function<void(const json&)> on_event) : on_event_(std::move(on_event)) {}

  void Feed(std::string_view piece) {
    buffer_.append(piece);
    for (size_t end; (end = buffer_.find("\n\n")) != std::string::npos;) {
      const std::string event = buffer_.substr(0, end);
      buffer_.erase(0, end + 2);
      if (!absl::StartsWith(event, "data: ")) {
        error_ += "an event without data: " + event.substr(0, 80) + "; ";
        continue;
      }
      const std::string data = event.substr(6);
      if (done_) error_ += "an event after [DONE]; ";
      if (data == "[DONE]") {
        done_ = true;
        continue;
      }
      json j = json::parse(data, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded()) {
        error_ += "an event that is not JSON: " + data.substr(0, 80) + "; ";
        continue;
      }
      on_event_(j);
    }
  }
  bool done() const { return done_ && buffer_.empty(); }
  const std::string& error() const { return error_; }

 private:
  std::function<void(const json&)> on_event_;
  std::string buffer_;
  std::string error_;
  bool done_ = false;
};

// ---- The two runs --------------------------------------------------------------------------

// The sampling of one comparison, written both ways.
struct Mode {
  const char* name;
  float temperature;
  std::optional<uint64_t> seed;
};
constexpr Mode kGreedy{"greedy", 0.0f, std::nullopt};
constexpr Mode kSeeded{"seeded", 1.0f, 20251206};

void SetSampling(const Mode& m, v1::GenerateRequest* r) {
  r->mutable_sampling()->set_temperature(m.temperature);
  if (m.seed) r->mutable_sampling()->set_seed(*m.seed);
}

void SetSampling(const Mode& m, json* body) {
  (*body)["temperature"] = m.temperature;
  if (m.seed) (*body)["seed"] = *m.seed;
}

// What a gRPC Generate stream gave, with each position's log-probability.
struct GrpcRun {
  grpc::Status status;
  std::vector<uint32_t> ids;
  std::vector<float> logprobs;
  std::string text;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
};

GrpcRun RunGrpc(v1::Generation::Stub& stub, const v1::GenerateRequest& request) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  GrpcRun run;
  auto reader = stub.Generate(&ctx, request);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    run.ids.insert(run.ids.end(), msg.token_ids().begin(), msg.token_ids().end());
    for (const auto& pos : msg.logprobs()) run.logprobs.push_back(pos.token().logprob());
    run.text += msg.text();
    if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      run.finish = msg.finish_reason();
      run.usage = msg.usage();
    }
  }
  run.status = reader->Finish();
  return run;
}

// One generated position as the HTTP API reports it.
struct HttpPosition {
  std::optional<std::vector<uint8_t>> bytes;  // chat: the token's bytes (nullopt: null)
  std::string token;                          // the token rendered alone
  float logprob = 0;
};

// What an HTTP completion gave.
struct HttpRun {
  HttpReply reply;
  std::string text;
  std::string finish;
  int64_t prompt_tokens = -1, completion_tokens = -1;
  std::vector<HttpPosition> positions;
  std::string problem;  // what the test found wrong with the body or the events
  std::string Describe() const {
    return absl::StrCat("HTTP ", reply.status, " ", reply.error, " ", problem, "; finish \"",
                        finish, "\"; ", positions.size(), " positions; usage ", prompt_tokens, "+",
                        completion_tokens, "; body: ", reply.body.substr(0, 600));
  }
};

void AddChatLogprobs(const json& logprobs, HttpRun* run) {
  if (!logprobs.is_object()) return;
  for (const json& e : logprobs.at("content")) {
    HttpPosition p{.bytes = std::nullopt,
                   .token = e.at("token").get<std::string>(),
                   .logprob = e.at("logprob").get<float>()};
    if (!e.at("bytes").is_null()) p.bytes = e.at("bytes").get<std::vector<uint8_t>>();
    run->positions.push_back(std::move(p));
  }
}

void AddCompletionLogprobs(const json& logprobs, HttpRun* run) {
  if (!logprobs.is_object()) return;
  const json& tokens = logprobs.at("tokens");
  const json& values = logprobs.at("token_logprobs");
  for (size_t i = 0; i < tokens.size(); ++i) {
    run->positions.push_back({.bytes = std::nullopt,
                              .token = tokens.at(i).get<std::string>(),
                              .logprob = values.at(i).get<float>()});
  }
}

// One choice of a body or a chunk: its text, logprobs and finish_reason.
void AddChoice(const json& choice, bool chat, bool streamed, HttpRun* run) {
  if (chat) {
    const json& m = choice.at(streamed ? "delta" : "message");
    if (m.contains("content") && m.at("content").is_string()) run->text += m.at("content");
    AddChatLogprobs(choice.at("logprobs"), run);
  } else {
    run->text += choice.at("text").get<std::string>();
    AddCompletionLogprobs(choice.at("logprobs"), run);
  }
  if (!choice.at("finish_reason").is_null()) {
    if (!run->finish.empty()) run->problem += "two finish_reasons; ";
    run->finish = choice.at("finish_reason").get<std::string>();
  }
}

void AddUsage(const json& usage, HttpRun* run) {
  run->prompt_tokens = usage.at("prompt_tokens").get<int64_t>();
  run->completion_tokens = usage.at("completion_tokens").get<int64_t>();
}

// POST path with `body`; when body["stream"], the events are parsed as they come and
// on_position(n) gets the number of positions received so far.
HttpRun RunHttp(int port, const std::string& path, const json& body,
                const std::function<void(size_t)>& on_position = nullptr) {
  const bool chat = absl::StrContains(path, "chat");
  const bool streamed = body.value("stream", false);
  HttpRun run;
  SseParser sse([&](const json& chunk) {
    try {
      if (chunk.contains("error")) run.problem += "error event: " + chunk.dump() + "; ";
      if (chunk.contains("usage") && chunk.at("usage").is_object()) AddUsage(chunk["usage"], &run);
      for (const json& choice : chunk.value("choices", json::array())) {
        AddChoice(choice, chat, true, &run);
      }
    } catch (const json::exception& e) {
      run.problem += absl::StrCat("chunk ", chunk.dump().substr(0, 300), ": ", e.what(), "; ");
    }
    if (on_position) on_position(run.positions.size());
  });
  std::function<void(std::string_view)> on_body;
  if (streamed) on_body = [&](std::string_view piece) { sse.Feed(piece); };
  run.reply = HttpPost(port, path, body.dump(), on_body);
  if (run.reply.status != 200) return run;
  if (streamed) {
    run.problem += sse.error();
    if (!sse.done()) run.problem += "no [DONE] at the end; ";
    return run;
  }
  try {
    const json j = json::parse(run.reply.body);
    AddChoice(j.at("choices").at(0), chat, false, &run);
    AddUsage(j.at("usage"), &run);
  } catch (const json::exception& e) {
    run.problem += absl::StrCat("body: ", e.what(), "; ");
  }
  return run;
}

// ---- Comparing -----------------------------------------------------------------------------

std::string FinishName(v1::FinishReason r) {
  return r == v1::FINISH_REASON_STOP ? "stop" : r == v1::FINISH_REASON_LENGTH ? "length" : "?";
}

// The bytes chat's logprobs give for `id` (nullopt for an id with no token).
std::optional<std::vector<uint8_t>> TokenBytes(const Tokenizer& tok, uint32_t id) {
  std::string raw;
  if (!tok.AppendTokenBytes(static_cast<int32_t>(id), &raw).ok()) return std::nullopt;
  return std::vector<uint8_t>(raw.begin(), raw.end());
}

// The rendering completions' logprobs give for `id`: the token decoded alone.
std::string RenderAlone(const Tokenizer& tok, uint32_t id) {
  StreamDecoder decoder(tok);
  auto piece = decoder.Push(static_cast<int32_t>(id));
  if (!piece.ok()) return "";
  return *piece + decoder.Finish();
}

// Expects `http` to be `grpc`'s tokens: text, counts, finish reason and every position (bytes
// for chat, the rendering for completions, and the log-probability within `tolerance`).
void ExpectSameTokens(const GrpcRun& grpc, const HttpRun& http, bool chat, float tolerance,
                      const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_TRUE(grpc.status.ok()) << Str(grpc.status);
  ASSERT_EQ(http.reply.status, 200) << http.Describe();
  EXPECT_TRUE(http.reply.error.empty() && http.problem.empty()) << http.Describe();
  EXPECT_EQ(http.text, grpc.text);
  EXPECT_EQ(http.finish, FinishName(grpc.finish)) << http.Describe();
  EXPECT_EQ(http.completion_tokens, static_cast<int64_t>(grpc.ids.size())) << http.Describe();
  EXPECT_EQ(http.prompt_tokens, grpc.usage.prompt_tokens()) << http.Describe();
  ASSERT_EQ(http.positions.size(), grpc.ids.size()) << http.Describe();
  ASSERT_EQ(grpc.logprobs.size(), grpc.ids.size());
  auto tok = TinyTokenizer();
  ASSERT_NE(tok, nullptr);
  int mismatches = 0;
  for (size_t i = 0; i < grpc.ids.size() && mismatches < 5; ++i) {
    const HttpPosition& p = http.positions[i];
    const bool same_token =
        chat ? p.bytes == TokenBytes(*tok, grpc.ids[i]) : p.token == RenderAlone(*tok, grpc.ids[i]);
    const bool same_logprob = tolerance == 0 ? p.logprob == grpc.logprobs[i]
                                             : std::abs(p.logprob - grpc.logprobs[i]) <= tolerance;
    if (!same_token || !same_logprob) {
      ++mismatches;
      ADD_FAILURE() << "position " << i << ": gRPC id " << grpc.ids[i] << " logprob "
                    << grpc.logprobs[i] << "; HTTP token \"" << p.token << "\" bytes "
                    << (p.bytes ? json(*p.bytes).dump() : "null") << " logprob " << p.logprob;
    }
  }
}

// The chat both ways: a system and a user message.
const std::pair<const char*, const char*> kChat[] = {
    {"system", "You are a terse assistant."},
    {"user", "Name three rivers, one per line."},
};

v1::Chat GrpcChat() {
  v1::Chat chat;
  for (const auto& [role, content] : kChat) {
    v1::ChatMessage* m = chat.add_messages();
    m->set_role(role);
    m->set_content(content);
  }
  return chat;
}

json HttpMessages() {
  json messages = json::array();
  for (const auto& [role, content] : kChat)
    messages.push_back({{"role", role}, {"content", content}});
  return messages;
}

// A chat request both ways: gRPC with return_logprobs, HTTP streaming with logprobs and usage.
std::pair<v1::GenerateRequest, json> ChatBothWays(const Mode& m, uint32_t max_tokens,
                                                  bool ignore_eos) {
  v1::GenerateRequest g;
  *g.mutable_chat() = GrpcChat();
  SetSampling(m, &g);
  g.mutable_stopping()->set_max_new_tokens(max_tokens);
  g.mutable_stopping()->set_ignore_eos(ignore_eos);
  g.set_return_logprobs(true);
  json h = {{"model", "tiny"},
            {"messages", HttpMessages()},
            {"max_tokens", max_tokens},
            {"ignore_eos", ignore_eos},
            {"logprobs", true},
            {"stream", true},
            {"stream_options", {{"include_usage", true}}}};
  SetSampling(m, &h);
  return {g, h};
}

// A completion with a token-id prompt both ways (ignore_eos, so it runs to max_tokens).
std::pair<v1::GenerateRequest, json> IdsBothWays(const Mode& m, const std::vector<uint32_t>& prompt,
                                                 uint32_t max_tokens, bool stream) {
  v1::GenerateRequest g;
  for (uint32_t id : prompt) g.mutable_token_ids()->add_ids(id);
  SetSampling(m, &g);
  g.mutable_stopping()->set_max_new_tokens(max_tokens);
  g.mutable_stopping()->set_ignore_eos(true);
  g.set_return_logprobs(true);
  json h = {{"model", "tiny"},    {"prompt", prompt}, {"max_tokens", max_tokens},
            {"ignore_eos", true}, {"logprobs", 0},    {"stream", stream}};
  if (stream) h["stream_options"] = {{"include_usage", true}};
  SetSampling(m, &h);
  return {g, h};
}

// Starts `c` with `prefill` prefill and `decode` decode workers and the HTTP API; its port.
int StartWithHttp(Cluster& c, int prefill, int decode, absl::Status* started) {
  auto port = FreePort();
  if (!port.ok()) {
    *started = port.status();
    return 0;
  }
  *started = c.Start(prefill, decode, 0, {"--http-port", absl::StrCat(*port)});
  return *port;
}

// ---- The tests -----------------------------------------------------------------------------

// Prefill on one worker, decode on another: completions (token-id prompt; not streaming and
// streaming) and a streamed chat give the gRPC path's tokens, greedy and seeded; /tokenize's
// ids of the chat are gRPC Tokenize's.
TEST(HttpEquivalence, SplitClusterGreedyAndSeeded) {
  Cluster c;
  absl::Status started;
  const int port = StartWithHttp(c, 1, 1, &started);
  ASSERT_STARTED(started);
  const std::vector<uint32_t> prompt = PromptIds(23, 1606);
  for (const Mode& m : {kGreedy, kSeeded}) {
    for (const bool stream : {false, true}) {
      const auto [g, h] = IdsBothWays(m, prompt, 48, stream);
      ExpectSameTokens(RunGrpc(c.stub(), g), RunHttp(port, "/v1/completions", h), false, 0,
                       absl::StrCat(m.name, " completions, stream ", stream));
    }
    // Not ignore_eos: the chat may end at an EOS id, and must end alike both ways.
    const auto [g, h] = ChatBothWays(m, 64, false);
    ExpectSameTokens(RunGrpc(c.stub(), g), RunHttp(port, "/v1/chat/completions", h), true, 0,
                     absl::StrCat(m.name, " chat"));
  }
  // The chat prompt is the same token sequence both ways.
  v1::TokenizeRequest treq;
  *treq.mutable_chat() = GrpcChat();
  v1::TokenizeResponse tresp;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  ASSERT_TRUE(c.stub().Tokenize(&ctx, treq, &tresp).ok());
  const HttpReply t =
      HttpPost(port, "/tokenize", json({{"model", "tiny"}, {"messages", HttpMessages()}}).dump());
  ASSERT_EQ(t.status, 200) << t.body << " " << t.error;
  const json tj = json::parse(t.body);
  EXPECT_EQ(tj.at("tokens").get<std::vector<uint32_t>>(),
            std::vector<uint32_t>(tresp.token_ids().begin(), tresp.token_ids().end()));
  EXPECT_EQ(tj.at("count").get<int>(), tresp.token_ids_size());
  EXPECT_TRUE(c.WaitWorkersIdle().ok()) << c.Logs();
}

// kill -9 of the decode worker serving an HTTP stream (seeded chat, 1000 tokens): the stream
// migrates to the other decode worker and completes with the uninterrupted gRPC run's tokens.
// Why 1000 tokens: after a migration the log-probabilities differ from the uninterrupted run's
// by up to about 1e-5 (the re-prefill rounds differently), so a seeded draw that falls that
// close to the boundary between two ids can pick the other one. With this seed and prompt and
// 3000 tokens one draw (position 2641) does, in about 1 run of 4 depending on where the kill
// lands; within the first 1000 tokens none does (0 failures in 40 runs).
TEST(HttpEquivalence, DecodeWorkerKilledMidHttpStream) {
  constexpr uint32_t kTokens = 1000;
  Cluster c;
  absl::Status started;
  const int port = StartWithHttp(c, 1, 2, &started);
  ASSERT_STARTED(started);
  const auto [g, h] = ChatBothWays(kSeeded, kTokens, true);
  const GrpcRun reference = RunGrpc(c.stub(), g);
  ASSERT_TRUE(reference.status.ok()) << Str(reference.status) << "\n" << c.Logs();
  ASSERT_EQ(reference.ids.size(), kTokens);

  std::atomic<size_t> received{0};
  HttpRun run;
  std::thread reader([&, body = h] {
    run = RunHttp(port, "/v1/chat/completions", body, [&](size_t n) { received.store(n); });
  });
  // Late enough that the decode worker holds the sequence, early enough to be mid-stream.
  const bool midway = WaitFor([&] { return received.load() >= 150; }, absl::Seconds(20));
  uint32_t running = 0;
  auto victim = BusiestWorker(c.decode(), &running);
  size_t at_kill = received.load();
  if (midway && victim.ok() && running == 1) (*victim)->process().Kill();
  reader.join();
  ASSERT_TRUE(midway) << run.Describe() << "\n" << c.Logs();
  ASSERT_TRUE(victim.ok()) << victim.status();
  ASSERT_EQ(running, 1u) << "no decode worker held the stream after " << at_kill << " tokens";
  ASSERT_LT(at_kill, kTokens);
  ::testing::Test::RecordProperty("tokens_at_kill", static_cast<int>(at_kill));

  ExpectSameTokens(
      reference, run, true, 1e-4f,
      absl::StrCat("HTTP stream, decode worker killed after about ", at_kill, " tokens"));
  EXPECT_EQ(c.router().MetricSum("sambay_router_migrations_total"), 1) << c.Logs();
  EXPECT_EQ(c.router().WaitMetricSum("sambay_router_running_requests", {},
                                     [](double v) { return v == 0; }),
            0);
  EXPECT_TRUE(c.WaitWorkersIdle().ok()) << c.Logs();
}

}  // namespace
}  // namespace sambay::testing
