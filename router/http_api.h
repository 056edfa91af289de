// HttpApi: the router's OpenAI-compatible HTTP API (docs/openai.md), on HttpServer. Routes:
//   POST /v1/chat/completions, POST /v1/completions  (streaming as server-sent events, or not)
//   GET  /v1/models, GET /health (live), GET /ready (ready: a worker can serve, not draining)
//   POST /tokenize, POST /detokenize                  (vLLM's shapes)
// A completion is translated into a GenerateRequest (openai_api.h) and submitted to the
// GenerationService as an HTTP-backed ClientStream (HttpClientStream): the same validation,
// admission, placement, failover, cancellation and metrics as a gRPC Generate call. A client
// that disconnects cancels its request, as a gRPC cancel does.
//
// A request with a large body (over kInlineBodyBytes: parsing the JSON and, for /tokenize,
// tokenizing it would stall every connection of that HTTP thread) is handled on a small pool
// instead; when kMaxQueuedBodies already wait there, 429.
//
// Ownership: borrows the service, registry and tokenizer (they outlive the HTTP server); owns
// the pool (destroyed first). Thread-safety: Handle runs on the HTTP server's threads, any number
// at once; beyond the pool (thread-safe) it keeps no state but the immutable options.
#ifndef SAMBAY_ROUTER_HTTP_API_H_
#define SAMBAY_ROUTER_HTTP_API_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "router/http_server.h"
#include "router/openai_api.h"
#include "router/registry.h"
#include "router/request.h"
#include "router/service.h"
#include "router/task_pool.h"
#include "tokenizer/tokenizer.h"

namespace sambay {

inline constexpr size_t kInlineBodyBytes = 64 << 10;
inline constexpr size_t kMaxQueuedBodies = 64;

struct HttpApiOptions {
  std::vector<std::string> model_names;  // served names; the first is the default
  int64_t created = 0;                   // unix seconds reported by /v1/models
};

class HttpApi {
 public:
  HttpApi(GenerationService& service, WorkerRegistry& registry, const Tokenizer& tokenizer,
          RouterLimits limits, HttpApiOptions options);

  void Handle(std::shared_ptr<HttpExchange> exchange);

 private:
  void Route(const std::shared_ptr<HttpExchange>& ex);
  void Completion(const std::shared_ptr<HttpExchange>& ex, bool chat);
  void Tokenize(const std::shared_ptr<HttpExchange>& ex);
  void Detokenize(const std::shared_ptr<HttpExchange>& ex);
  void Models(const std::shared_ptr<HttpExchange>& ex);
  void Ready(const std::shared_ptr<HttpExchange>& ex);

  GenerationService& service_;
  WorkerRegistry& registry_;
  const Tokenizer& tokenizer_;
  const RouterLimits limits_;
  const HttpApiOptions options_;
  openai::ApiOptions api_;
  // Last member: destroyed (joined) first, while what its tasks use still exists.
  TaskPool pool_{2, kMaxQueuedBodies};
};

// Sends an OpenAI error body with its status (and Retry-After on 429).
void RespondError(HttpExchange& ex, const openai::ApiError& error);

}  // namespace sambay

#endif  // SAMBAY_ROUTER_HTTP_API_H_
