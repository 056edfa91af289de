#include "router/service.h"

#include <grpcpp/server_context.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/limits.h"
#include "common/log.h"
#include "common/peer_identity.h"

namespace sambay {
namespace {

namespace pb = sambay::v1;

// INVALID_ARGUMENT naming `field` when `req` is larger than --max-request-bytes. (gRPC refuses
// messages much larger than that before they reach a handler: router/main.cc.)
absl::Status CheckRequestBytes(const google::protobuf::Message& req, const char* field,
                               const RouterLimits& limits) {
  const size_t bytes = req.ByteSizeLong();
  if (static_cast<int64_t>(bytes) <= limits.max_request_bytes) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": the request is ", bytes, " bytes, more than the limit of ",
                   limits.max_request_bytes, " (--max-request-bytes)"));
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

void GenerationService::Serve(std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs) {
  cqs_ = std::move(cqs);
  deps_.host = this;
  deps_.registry = &registry_;
  deps_.policy = &policy_;
  deps_.metrics = &metrics_;
  deps_.tokenizer = &tokenizer_;
  deps_.service = this;
  deps_.live = &live_flows_;
  deps_.options = options_.flow;
  for (auto& cq : cqs_) {
    RequestFlow::Listen(deps_, cq.get());
    threads_.emplace_back([q = cq.get()] {
      void* tag = nullptr;
      bool ok = false;
      while (q->Next(&tag, &ok)) RequestFlow::Dispatch(tag, ok);
    });
  }
}

void GenerationService::StopServing(absl::Duration timeout) {
  // Server::Shutdown ended the calls and the pending accepts: the flows finish on their own.
  const absl::Time deadline = absl::Now() + timeout;
  while (live_flows_.load() > 0 && absl::Now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (auto& cq : cqs_) cq->Shutdown();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

absl::StatusOr<std::string> GenerationService::Authenticate(absl::string_view authorization,
                                                            std::string peer) const {
  if (options_.api_keys == nullptr) return peer;
  auto name = options_.api_keys->Authenticate(authorization);
  if (!name.ok()) return name.status();
  return absl::StrCat("key:", *name);
}

absl::StatusOr<std::string> GenerationService::CallerOf(const grpc::ServerContext* ctx) const {
  if (ctx == nullptr) return std::string("in-process");  // the HTTP API authenticated it
  if (options_.api_keys == nullptr) return PeerIdentity(*ctx);
  return Authenticate(ClientMetadata(*ctx, "authorization"), "");
}

void GenerationService::FlowAccepted(const std::shared_ptr<RequestFlow>& flow) {
  auto caller = Authenticate(flow->client().authorization(), flow->client().peer());
  if (!caller.ok()) {
    metrics_.Reject("unauthenticated", flow->client().api());
    Log(LogLevel::kInfo, "router", "request rejected",
        {{"peer", flow->client().peer()}, {"error", caller.status().ToString()}});
    flow->Reject(caller.status());
    return;
  }
  if (!RequestPreparer::Deferred(flow->request())) {
    Admit(flow, preparer_.Prepare(flow->client().header_request_id(), flow->request()),
          /*pooled=*/false, *std::move(caller));
    return;
  }
  // A large prompt: prepared on the pool, then admitted on the flow's queue. The request is not
  // modified after the call was accepted, so the pool may read it.
  {
    MutexLock lock(&mu_);
    preparing_.insert(flow.get());
  }
  const bool queued =
      preparer_.PrepareLater(flow->client().header_request_id(), flow->request(),
                             [this, flow, caller = *std::move(caller)](Preparation p) {
                               flow->RunOnQueue([this, flow, p = std::move(p), caller]() mutable {
                                 Admit(flow, std::move(p), /*pooled=*/true, std::move(caller));
                               });
                             });
  if (!queued) {
    {
      MutexLock lock(&mu_);
      preparing_.erase(flow.get());
    }
    metrics_.Reject("queue_full", flow->client().api());
    flow->Reject(absl::ResourceExhaustedError(
        absl::StrCat("the router is tokenizing ", kMaxPreparing, " large prompts: retry later")));
  }
}

void GenerationService::Admit(const std::shared_ptr<RequestFlow>& flow, Preparation prepared,
                              bool pooled, std::string caller) {
  if (pooled) {
    MutexLock lock(&mu_);
    // FlowGone took it out: gRPC is done with the call (the client went away meanwhile).
    if (preparing_.erase(flow.get()) == 0) return;
  }
  if (!prepared.request.ok()) {
    metrics_.Reject("invalid", flow->client().api());
    Log(LogLevel::kInfo, "router", "request rejected",
        {{"request_id", prepared.request_id}, {"error", prepared.request.status().ToString()}});
    flow->Reject(prepared.request.status());
    return;
  }
  const std::string& rid = prepared.request_id;
  absl::Status rejected;
  bool start = false;
  {
    MutexLock lock(&mu_);
    // Under mu_: FlowGone reads the request id SetPrepared writes.
    prepared.request->owner = caller;
    flow->SetPrepared(*std::move(prepared.request));
    flows_.emplace(rid, FlowRef{flow.get(), flow, std::move(caller)});
    if (draining_) {
      metrics_.Reject("draining", flow->client().api());
      rejected = absl::UnavailableError("the router is draining: retry on another replica");
    } else if (running_ < options_.max_concurrent) {
      ++running_;
      start = true;
    } else if (static_cast<int64_t>(waiting_.size()) < options_.max_queue) {
      waiting_.push_back(flow);
    } else {
      metrics_.Reject("queue_full", flow->client().api());
      rejected = absl::ResourceExhaustedError(
          absl::StrCat("the router's queue is full (", options_.max_concurrent, " running, ",
                       options_.max_queue, " waiting): retry later"));
    }
    UpdateGauges();
  }
  if (!rejected.ok()) {
    flow->Reject(rejected);
  } else if (start) {
    StartFlow(flow);
  }
}

void GenerationService::UpdateGauges() {
  metrics_.running.Set(static_cast<double>(running_));
  metrics_.waiting.Set(static_cast<double>(waiting_.size()));
}

void GenerationService::StartFlow(std::shared_ptr<RequestFlow> flow) {
  thread_local std::vector<std::shared_ptr<RequestFlow>>* pending = nullptr;
  if (pending != nullptr) {
    pending->push_back(std::move(flow));
    return;
  }
  std::vector<std::shared_ptr<RequestFlow>> list{std::move(flow)};
  pending = &list;
  while (!list.empty()) {
    std::shared_ptr<RequestFlow> next = std::move(list.back());
    list.pop_back();
    next->Start();
  }
  pending = nullptr;
}

void GenerationService::FlowEnded(RequestFlow* flow) {
  std::shared_ptr<RequestFlow> next;
  {
    MutexLock lock(&mu_);
    --running_;
    if (!waiting_.empty()) {
      next = std::move(waiting_.front());
      waiting_.pop_front();
      ++running_;
    }
    UpdateGauges();
  }
  if (next != nullptr) StartFlow(std::move(next));
}

bool GenerationService::FlowDequeue(RequestFlow* flow) {
  MutexLock lock(&mu_);
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (it->get() == flow) {
      waiting_.erase(it);
      UpdateGauges();
      return true;
    }
  }
  return false;
}

void GenerationService::FlowGone(RequestFlow* flow) {
  MutexLock lock(&mu_);
  if (preparing_.erase(flow) > 0) return;  // still being tokenized: Admit drops it
  if (flow->request_id().empty()) return;  // rejected before it had one
  for (auto it = flows_.lower_bound(flow->request_id());
       it != flows_.end() && it->first == flow->request_id(); ++it) {
    if (it->second.flow == flow) {
      flows_.erase(it);
      break;
    }
  }
}

grpc::Status GenerationService::Abort(grpc::ServerContext* ctx, const pb::AbortRequest* req,
                                      pb::AbortResponse* resp) {
  // Only the caller's own requests; anyone else's are answered as unknown ids.
  auto owner = CallerOf(ctx);
  if (!owner.ok()) return ToGrpcStatus(owner.status());
  const std::string& caller = *owner;
  if (req->request_id().empty()) {
    return ToGrpcStatus(absl::InvalidArgumentError("request_id: required"));
  }
  std::vector<std::shared_ptr<RequestFlow>> found;
  {
    MutexLock lock(&mu_);
    for (auto it = flows_.lower_bound(req->request_id());
         it != flows_.end() && it->first == req->request_id(); ++it) {
      if (it->second.caller != caller) continue;
      if (auto f = it->second.ref.lock()) found.push_back(std::move(f));
    }
  }
  for (auto& f : found) f->Abort();
  resp->set_aborted(!found.empty());
  return grpc::Status::OK;
}

grpc::Status GenerationService::Tokenize(grpc::ServerContext* ctx, const pb::TokenizeRequest* req,
                                         pb::TokenizeResponse* resp) {
  if (auto owner = CallerOf(ctx); !owner.ok()) return ToGrpcStatus(owner.status());
  const bool text = req->input_case() == pb::TokenizeRequest::kText;
  if (absl::Status s = CheckRequestBytes(*req, text ? "text" : "chat", limits_); !s.ok()) {
    return ToGrpcStatus(s);
  }
  absl::StatusOr<std::vector<int32_t>> ids;
  if (text) {
    ids = tokenizer_.Encode(req->text(), false);
    if (!ids.ok()) {
      return ToGrpcStatus(
          absl::InvalidArgumentError(absl::StrCat("text: ", ids.status().message())));
    }
  } else if (req->input_case() == pb::TokenizeRequest::kChat) {
    // The encoding of Generate's chat prompts: the same roles, the same errors.
    ids = EncodeChatPrompt(tokenizer_, req->chat(), "chat");
    if (!ids.ok()) return ToGrpcStatus(ids.status());
  } else {
    return ToGrpcStatus(absl::InvalidArgumentError("input: set text or chat"));
  }
  resp->mutable_token_ids()->Add(ids->begin(), ids->end());
  return grpc::Status::OK;
}

grpc::Status GenerationService::Detokenize(grpc::ServerContext* ctx,
                                           const pb::DetokenizeRequest* req,
                                           pb::DetokenizeResponse* resp) {
  if (auto owner = CallerOf(ctx); !owner.ok()) return ToGrpcStatus(owner.status());
  if (static_cast<size_t>(req->token_ids_size()) > kMaxDetokenizeIds) {
    return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
        "token_ids: at most ", kMaxDetokenizeIds, " ids, got ", req->token_ids_size())));
  }
  if (absl::Status s = CheckRequestBytes(*req, "token_ids", limits_); !s.ok()) {
    return ToGrpcStatus(s);
  }
  std::vector<int32_t> ids;
  ids.reserve(req->token_ids_size());
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
  if (auto owner = CallerOf(ctx); !owner.ok()) return ToGrpcStatus(owner.status());
  resp->set_model_type("phi4flash");
  resp->set_fingerprint(registry_.fingerprint());
  resp->set_vocab_size(static_cast<uint32_t>(limits_.vocab_size));
  resp->set_max_context_tokens(static_cast<uint32_t>(limits_.max_context));
  resp->mutable_eos_token_ids()->Add(limits_.eos_ids.begin(), limits_.eos_ids.end());
  resp->set_tokenizer(tokenizer_.name());
  resp->set_max_new_tokens_limit(static_cast<uint32_t>(limits_.max_new_tokens_limit));
  return grpc::Status::OK;
}

void GenerationService::Submit(std::unique_ptr<ClientStream> client, pb::GenerateRequest request) {
  grpc::ServerCompletionQueue* cq = cqs_[next_cq_.fetch_add(1) % cqs_.size()].get();
  RequestFlow::Submit(deps_, cq, std::move(client), std::move(request));
}

bool GenerationService::draining() const {
  MutexLock lock(&mu_);
  return draining_;
}

void GenerationService::StartDrain() {
  MutexLock lock(&mu_);
  draining_ = true;
}

int64_t GenerationService::active() const {
  MutexLock lock(&mu_);
  return static_cast<int64_t>(flows_.size() + preparing_.size());
}

}  // namespace sambay
