#include "router/service.h"

#include <grpcpp/server_context.h>

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "engine/tokenizer/chat.h"

namespace sambay {
namespace {

namespace pb = sambay::v1;

uint64_t RandomU64() {
  thread_local std::mt19937_64 gen(std::random_device{}());
  return gen();
}

std::string RequestIdFor(const grpc::ServerContext* ctx, const pb::GenerateRequest& req) {
  if (!req.request_id().empty()) return req.request_id();
  auto it = ctx->client_metadata().find("x-request-id");
  if (it != ctx->client_metadata().end() && !it->second.empty() && it->second.size() <= 128) {
    return std::string(it->second.data(), it->second.size());
  }
  return absl::StrFormat("req-%016x", RandomU64());
}

}  // namespace

GenerationService::GenerationService(WorkerRegistry& registry, PlacementPolicy& policy,
                                     RouterMetrics& metrics, const Tokenizer& tokenizer,
                                     RouterLimits limits, RouterServiceOptions options)
    : registry_(registry),
      policy_(policy),
      metrics_(metrics),
      tokenizer_(tokenizer),
      limits_(std::move(limits)),
      options_(options) {}

absl::Status GenerationService::Enter(grpc::ServerContext* ctx) {
  std::unique_lock<std::mutex> lock(mu_);
  if (draining_) {
    metrics_.Reject("draining");
    return absl::UnavailableError("the router is draining: retry on another replica");
  }
  if (running_ < options_.max_concurrent) {
    ++running_;
  } else if (waiting_ < options_.max_queue) {
    ++waiting_;
    metrics_.waiting.Set(static_cast<double>(waiting_));
    while (running_ >= options_.max_concurrent) {
      cv_.wait_for(lock, std::chrono::milliseconds(50));
      if (ctx->IsCancelled()) {
        --waiting_;
        metrics_.waiting.Set(static_cast<double>(waiting_));
        cv_.notify_all();
        return absl::CancelledError("cancelled while queued");
      }
    }
    --waiting_;
    ++running_;
    metrics_.waiting.Set(static_cast<double>(waiting_));
  } else {
    metrics_.Reject("queue_full");
    return absl::ResourceExhaustedError(absl::StrCat("the router's queue is full (",
                                                     options_.max_concurrent, " running, ",
                                                     options_.max_queue, " waiting): retry later"));
  }
  metrics_.running.Set(static_cast<double>(running_));
  return absl::OkStatus();
}

void GenerationService::Leave() {
  std::lock_guard<std::mutex> lock(mu_);
  --running_;
  metrics_.running.Set(static_cast<double>(running_));
  cv_.notify_all();
}

grpc::Status GenerationService::Generate(grpc::ServerContext* ctx, const pb::GenerateRequest* req,
                                         grpc::ServerWriter<pb::GenerateResponse>* writer) {
  const absl::Time received = absl::Now();
  const std::string rid = RequestIdFor(ctx, *req);
  auto prepared = PrepareRequest(*req, tokenizer_, limits_, RandomU64());
  if (!prepared.ok()) {
    metrics_.Reject("invalid");
    Log(LogLevel::kInfo, "router", "request rejected",
        {{"request_id", rid}, {"error", prepared.status().ToString()}});
    return ToGrpcStatus(prepared.status());
  }
  prepared->request_id = rid;
  if (absl::Status s = Enter(ctx); !s.ok()) return ToGrpcStatus(s);
  const double queue_s = absl::ToDoubleSeconds(absl::Now() - received);
  metrics_.queue_time.Observe(queue_s);
  RequestFlow flow(registry_, policy_, metrics_, tokenizer_, *std::move(prepared), options_.flow,
                   ctx, received, queue_s);
  {
    std::lock_guard<std::mutex> lock(mu_);
    flows_.emplace(rid, &flow);
  }
  const absl::Status st = flow.Run([&](const pb::GenerateResponse& m) { return writer->Write(m); });
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = flows_.lower_bound(rid); it != flows_.end() && it->first == rid; ++it) {
      if (it->second == &flow) {
        flows_.erase(it);
        break;
      }
    }
  }
  Leave();
  Log(st.ok() ? LogLevel::kDebug : LogLevel::kWarning, "router", "request ended",
      {{"request_id", rid},
       {"status", st.ToString()},
       {"seconds", absl::ToDoubleSeconds(absl::Now() - received)}});
  return ToGrpcStatus(st);
}

grpc::Status GenerationService::Abort(grpc::ServerContext* ctx, const pb::AbortRequest* req,
                                      pb::AbortResponse* resp) {
  if (req->request_id().empty()) {
    return ToGrpcStatus(absl::InvalidArgumentError("request_id: required"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  bool any = false;
  for (auto it = flows_.lower_bound(req->request_id());
       it != flows_.end() && it->first == req->request_id(); ++it) {
    it->second->Abort();
    any = true;
  }
  resp->set_aborted(any);
  return grpc::Status::OK;
}

grpc::Status GenerationService::Tokenize(grpc::ServerContext* ctx, const pb::TokenizeRequest* req,
                                         pb::TokenizeResponse* resp) {
  if (static_cast<int64_t>(req->ByteSizeLong()) > limits_.max_request_bytes) {
    return ToGrpcStatus(absl::InvalidArgumentError("request: exceeds --max-request-bytes"));
  }
  absl::StatusOr<std::vector<int32_t>> ids;
  if (req->input_case() == pb::TokenizeRequest::kText) {
    ids = tokenizer_.Encode(req->text(), false);
    if (!ids.ok())
      return ToGrpcStatus(
          absl::InvalidArgumentError(absl::StrCat("text: ", ids.status().message())));
  } else if (req->input_case() == pb::TokenizeRequest::kChat) {
    std::vector<ChatMessage> msgs;
    for (const auto& m : req->chat().messages()) msgs.push_back({m.role(), m.content()});
    ids = EncodeChat(tokenizer_, msgs);
    if (!ids.ok())
      return ToGrpcStatus(
          absl::InvalidArgumentError(absl::StrCat("chat: ", ids.status().message())));
  } else {
    return ToGrpcStatus(absl::InvalidArgumentError("input: set text or chat"));
  }
  resp->mutable_token_ids()->Add(ids->begin(), ids->end());
  return grpc::Status::OK;
}

grpc::Status GenerationService::Detokenize(grpc::ServerContext* ctx,
                                           const pb::DetokenizeRequest* req,
                                           pb::DetokenizeResponse* resp) {
  std::vector<int32_t> ids;
  for (int i = 0; i < req->token_ids_size(); ++i) {
    if (req->token_ids(i) >= static_cast<uint64_t>(limits_.vocab_size)) {
      return ToGrpcStatus(absl::InvalidArgumentError(
          absl::StrCat("token_ids[", i, "]: token id ", req->token_ids(i),
                       " is outside the vocabulary [0, ", limits_.vocab_size, ")")));
    }
    ids.push_back(static_cast<int32_t>(req->token_ids(i)));
  }
  // Ids without text (padding ids past the tokenizer's vocabulary) are skipped; an incomplete
  // UTF-8 sequence becomes U+FFFD.
  StreamDecoder dec(tokenizer_);
  std::string text;
  for (int32_t id : ids) {
    auto piece = dec.Push(id);
    if (piece.ok()) text += *piece;
  }
  text += dec.Finish();
  resp->set_text(text);
  return grpc::Status::OK;
}

grpc::Status GenerationService::GetModelInfo(grpc::ServerContext* ctx,
                                             const pb::GetModelInfoRequest* req,
                                             pb::ModelInfo* resp) {
  resp->set_model_type("phi4flash");
  resp->set_fingerprint(registry_.fingerprint());
  resp->set_vocab_size(static_cast<uint32_t>(limits_.vocab_size));
  resp->set_max_context_tokens(static_cast<uint32_t>(limits_.max_context));
  resp->mutable_eos_token_ids()->Add(limits_.eos_ids.begin(), limits_.eos_ids.end());
  resp->set_tokenizer(tokenizer_.name());
  resp->set_max_new_tokens_limit(static_cast<uint32_t>(limits_.max_new_tokens_limit));
  return grpc::Status::OK;
}

void GenerationService::StartDrain() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

int64_t GenerationService::active() const {
  std::lock_guard<std::mutex> lock(mu_);
  return running_ + waiting_;
}

}  // namespace sambay
