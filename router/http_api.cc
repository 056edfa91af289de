#include "router/http_api.h"

#include <atomic>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "router/flow.h"

namespace sambay {
namespace {

namespace pb = sambay::v1;
using openai::ApiError;

constexpr char kJson[] = "application/json";
constexpr char kEventStream[] = "text/event-stream";

// A Generate request that came over HTTP: the flow's messages become OpenAI chunks (streaming)
// or one body (not), and the flow's status an OpenAI error. Write, Finish and Cancel run on the
// flow's queue; their completions (and the client's going away) arrive on the HTTP threads and
// go back to the flow through RequestFlow::Dispatch.
class HttpClientStream final : public ClientStream {
 public:
  HttpClientStream(std::shared_ptr<HttpExchange> ex, openai::OpenAiRequest request,
                   const Tokenizer& tokenizer, int64_t created)
      : ex_(std::move(ex)),
        chat_(request.chat),
        stream_(request.stream),
        include_usage_(request.include_usage),
        request_(std::move(request)),
        tokenizer_(tokenizer),
        created_(created) {}

  absl::Time deadline() const override { return absl::InfiniteFuture(); }
  bool cancelled() const override { return cancelled_.load(); }
  std::string peer() const override { return ex_->peer(); }
  std::string header_request_id() const override { return ex_->header("x-request-id"); }
  std::string authorization() const override { return ex_->header("authorization"); }
  const char* api() const override { return "http"; }

  void NotifyWhenDone(void* tag) override {
    done_tag_ = tag;
    ex_->OnClientGone([this] {
      cancelled_.store(true);
      FireDone();
    });
  }

  void Write(const pb::GenerateResponse& msg, void* tag) override {
    if (!writer_) Begin(msg.request_id());
    if (msg.has_usage()) usage_ = msg.usage();
    if (!stream_) {
      collector_->Add(msg);
      RequestFlow::Dispatch(tag, true);
      return;
    }
    std::string text = started_ ? "" : writer_->First();
    started_ = true;
    text += writer_->Delta(msg);
    if (include_usage_ && msg.has_usage()) text += writer_->Usage(msg.usage());
    ex_->Send(kEventStream, std::move(text), [tag](bool ok) { RequestFlow::Dispatch(tag, ok); });
  }

  void Finish(const absl::Status& status, void* tag) override {
    auto done = [this, tag](bool ok) {
      // Decide before dispatching: when the done tag already went back (the client left), the
      // finish tag may be the flow's last, and the flow (and this stream) is gone after it.
      void* const done_tag = done_fired_.exchange(true) ? nullptr : done_tag_;
      RequestFlow::Dispatch(tag, ok);
      if (done_tag != nullptr) RequestFlow::Dispatch(done_tag, true);
    };
    if (status.ok() && stream_ && started_) {
      ex_->End(openai::ChunkWriter::Done(), std::move(done));
    } else if (status.ok() && collector_) {
      ex_->Respond(200, kJson, collector_->Body(usage_), {}, std::move(done));
    } else {
      const ApiError error = openai::FromStatus(
          status.ok() ? absl::InternalError("the request ended without a response") : status,
          chat_ ? openai::Endpoint::kChat : openai::Endpoint::kCompletion);
      if (started_) {
        // The stream's head went out with 200: the error is the last event.
        ex_->End(openai::ErrorEvent(error) + openai::ChunkWriter::Done(), std::move(done));
      } else {
        RespondError(*ex_, error, std::move(done));
      }
    }
  }

  void Cancel() override {
    cancelled_.store(true);
    ex_->Abort();
  }

  // Sends `error` as the response (and Retry-After on 429); `done(ok)` when written.
  static void RespondError(HttpExchange& ex, const ApiError& error,
                           std::function<void(bool)> done) {
    HttpHeaders headers;
    if (error.http_status == 429) headers.emplace_back("Retry-After", "1");
    if (error.http_status == 401) headers.emplace_back("WWW-Authenticate", "Bearer");
    ex.Respond(error.http_status, kJson, openai::ErrorBody(error), std::move(headers),
               std::move(done));
  }

 private:
  void Begin(const std::string& request_id) {
    openai::ResponseOptions o =
        openai::MakeResponseOptions(request_, request_id, created_, tokenizer_);
    writer_.emplace(o);
    collector_.emplace(o);
  }
  // The done tag, once: after the response ended, or when the client went away.
  void FireDone() {
    if (done_tag_ != nullptr && !done_fired_.exchange(true)) RequestFlow::Dispatch(done_tag_, true);
  }

  const std::shared_ptr<HttpExchange> ex_;
  const bool chat_, stream_, include_usage_;
  const openai::OpenAiRequest request_;
  const Tokenizer& tokenizer_;
  const int64_t created_;
  void* done_tag_ = nullptr;
  std::atomic<bool> cancelled_{false}, done_fired_{false};
  // On the flow's queue only.
  bool started_ = false;  // a streamed head went out
  std::optional<openai::ChunkWriter> writer_;
  std::optional<openai::ResponseCollector> collector_;
  pb::Usage usage_;
};

// The path without its query.
std::string PathOf(const std::string& target) {
  const size_t q = target.find('?');
  return q == std::string::npos ? target : target.substr(0, q);
}

void MethodNotAllowed(HttpExchange& ex, const char* allow) {
  ApiError e = openai::MakeError(
      405, "",
      absl::StrCat(ex.method(), " is not allowed on ", PathOf(ex.target()), "; use ", allow));
  ex.Respond(405, kJson, openai::ErrorBody(e), {{"Allow", allow}});
}

}  // namespace

void RespondError(HttpExchange& ex, const ApiError& error) {
  HttpClientStream::RespondError(ex, error, nullptr);
}

HttpApi::HttpApi(GenerationService& service, WorkerRegistry& registry, const Tokenizer& tokenizer,
                 RouterLimits limits, HttpApiOptions options)
    : service_(service),
      registry_(registry),
      tokenizer_(tokenizer),
      limits_(std::move(limits)),
      options_(std::move(options)) {
  api_.model_names = options_.model_names;
}

void HttpApi::Handle(std::shared_ptr<HttpExchange> ex) {
  if (ex->body().size() <= kInlineBodyBytes) {
    Route(ex);
    return;
  }
  if (!pool_.TrySubmit([this, ex] { Route(ex); })) {
    RespondError(*ex, openai::MakeError(429, "",
                                        absl::StrCat("the router is parsing ", kMaxQueuedBodies,
                                                     " large request bodies: retry later")));
  }
}

void HttpApi::Route(const std::shared_ptr<HttpExchange>& ex) {
  const std::string path = PathOf(ex->target());
  const std::string& m = ex->method();
  struct Route {
    const char* path;
    const char* method;
    void (HttpApi::*fn)(const std::shared_ptr<HttpExchange>&);
  };
  static const Route kRoutes[] = {
      {"/v1/models", "GET", &HttpApi::Models},
      {"/ready", "GET", &HttpApi::Ready},
      {"/tokenize", "POST", &HttpApi::Tokenize},
      {"/detokenize", "POST", &HttpApi::Detokenize},
  };
  if (path == "/v1/chat/completions" || path == "/v1/completions") {
    if (m != "POST") return MethodNotAllowed(*ex, "POST");
    return Completion(ex, path == "/v1/chat/completions");
  }
  if (path == "/health") {
    if (m != "GET" && m != "HEAD") return MethodNotAllowed(*ex, "GET");
    return ex->Respond(200, kJson, "{}\n");
  }
  // Every route but the probes' needs an API key when the router has keys (before anything else,
  // so that a stranger learns nothing, not even which routes exist).
  if (path != "/ready") {
    auto owner = service_.Authenticate(ex->header("authorization"), ex->peer());
    if (!owner.ok()) {
      return RespondError(*ex, openai::MakeError(401, "", std::string(owner.status().message()),
                                                 "invalid_api_key"));
    }
  }
  for (const Route& r : kRoutes) {
    if (path != r.path) continue;
    if (m != r.method) return MethodNotAllowed(*ex, r.method);
    return (this->*r.fn)(ex);
  }
  RespondError(*ex, openai::MakeError(404, "", absl::StrCat("no route for ", path), "not_found"));
}

void HttpApi::Completion(const std::shared_ptr<HttpExchange>& ex, bool chat) {
  auto parsed = chat ? openai::ParseChatRequest(ex->body(), api_)
                     : openai::ParseCompletionRequest(ex->body(), api_);
  if (auto* error = std::get_if<ApiError>(&parsed)) {
    RespondError(*ex, *error);
    return;
  }
  openai::OpenAiRequest request = std::get<openai::OpenAiRequest>(std::move(parsed));
  pb::GenerateRequest generate = request.request;
  service_.Submit(std::make_unique<HttpClientStream>(ex, std::move(request), tokenizer_,
                                                     absl::ToUnixSeconds(absl::Now())),
                  std::move(generate));
}

void HttpApi::Tokenize(const std::shared_ptr<HttpExchange>& ex) {
  auto parsed = openai::ParseTokenizeRequest(ex->body(), api_);
  if (auto* error = std::get_if<ApiError>(&parsed)) return RespondError(*ex, *error);
  pb::TokenizeResponse resp;
  const grpc::Status st = service_.Tokenize(nullptr, &std::get<pb::TokenizeRequest>(parsed), &resp);
  if (!st.ok()) {
    return RespondError(*ex, openai::FromStatus(FromGrpcStatus(st), openai::Endpoint::kTokenize));
  }
  ex->Respond(200, kJson, openai::TokenizeBody(resp, limits_.max_context));
}

void HttpApi::Detokenize(const std::shared_ptr<HttpExchange>& ex) {
  auto parsed = openai::ParseDetokenizeRequest(ex->body(), api_);
  if (auto* error = std::get_if<ApiError>(&parsed)) return RespondError(*ex, *error);
  pb::DetokenizeResponse resp;
  const grpc::Status st =
      service_.Detokenize(nullptr, &std::get<pb::DetokenizeRequest>(parsed), &resp);
  if (!st.ok()) {
    return RespondError(*ex, openai::FromStatus(FromGrpcStatus(st), openai::Endpoint::kDetokenize));
  }
  ex->Respond(200, kJson, openai::DetokenizeBody(resp));
}

void HttpApi::Models(const std::shared_ptr<HttpExchange>& ex) {
  ex->Respond(200, kJson,
              openai::ModelsBody(options_.model_names, options_.created, "sambay-serve"));
}

void HttpApi::Ready(const std::shared_ptr<HttpExchange>& ex) {
  if (service_.draining()) {
    return RespondError(*ex, openai::MakeError(503, "", "the router is draining"));
  }
  if (!registry_.Ready()) {
    return RespondError(*ex, openai::MakeError(503, "", "no worker can serve yet"));
  }
  ex->Respond(200, kJson, "{}\n");
}

}  // namespace sambay
