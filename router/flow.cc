#include "router/flow.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "common/request_id.h"
#include "router/worker_requests.h"
#include "sambay/v1/worker.grpc.pb.h"

namespace sambay {
namespace {

namespace pb = sambay::v1;

// Codes that mean "this worker cannot serve now": try another one.
bool Retryable(grpc::StatusCode c) {
  return c == grpc::StatusCode::UNAVAILABLE || c == grpc::StatusCode::RESOURCE_EXHAUSTED ||
         c == grpc::StatusCode::INTERNAL || c == grpc::StatusCode::DATA_LOSS ||
         c == grpc::StatusCode::UNKNOWN || c == grpc::StatusCode::ABORTED ||
         c == grpc::StatusCode::NOT_FOUND || c == grpc::StatusCode::FAILED_PRECONDITION;
}

pb::FinishReason FromDecodeFinish(const pb::DecodeResponse& msg) {
  return msg.done().reason() == pb::DECODE_FINISH_STOP ? pb::FINISH_REASON_STOP
                                                       : pb::FINISH_REASON_LENGTH;
}

}  // namespace

RequestFlow::RequestFlow(const FlowDeps& deps, grpc::ServerCompletionQueue* cq,
                         std::unique_ptr<ClientStream> client)
    : deps_(deps),
      host_(*deps.host),
      registry_(*deps.registry),
      policy_(*deps.policy),
      metrics_(*deps.metrics),
      options_(deps.options),
      cq_(cq),
      client_(std::move(client)),
      accept_tag_{this, 0, FlowTag::kAccept},
      done_tag_{this, 0, FlowTag::kDone},
      write_tag_{this, 0, FlowTag::kWrite},
      finish_tag_{this, 0, FlowTag::kFinish},
      tick_tag_{this, 0, FlowTag::kTick},
      decoder_(*deps.tokenizer) {
  for (const auto& [s, id] : deps.tokenizer->special_tokens()) special_ids_.insert(id);
  if (deps_.live != nullptr) deps_.live->fetch_add(1);
}

RequestFlow::~RequestFlow() {
  if (deps_.live != nullptr) deps_.live->fetch_sub(1);
}

void RequestFlow::Listen(const FlowDeps& deps, grpc::ServerCompletionQueue* cq) {
  auto owned = std::make_unique<GrpcClientStream>();
  GrpcClientStream* call = owned.get();
  std::shared_ptr<RequestFlow> flow(new RequestFlow(deps, cq, std::move(owned)));
  flow->self_ = flow;
  RequestFlow* f = flow.get();
  f->listening_ = true;
  // The done tag returns once the call is over (finished or cancelled), if it is ever accepted.
  call->NotifyWhenDone(HandOff(&f->done_tag_));
  f->server_pending_ = 1;
  call->Accept(deps.service, &f->request_, cq, HandOff(&f->accept_tag_));
}

void RequestFlow::Submit(const FlowDeps& deps, grpc::ServerCompletionQueue* cq,
                         std::unique_ptr<ClientStream> client, pb::GenerateRequest request) {
  std::shared_ptr<RequestFlow> flow(new RequestFlow(deps, cq, std::move(client)));
  flow->self_ = flow;
  RequestFlow* f = flow.get();
  f->request_ = std::move(request);
  f->client_->NotifyWhenDone(HandOff(&f->done_tag_));
  f->server_pending_ = 1;
  Dispatch(HandOff(&f->accept_tag_), true);
}

void RequestFlow::Dispatch(void* tag, bool ok) {
  TakeOver(tag);
  const FlowTag* t = static_cast<const FlowTag*>(tag);
  t->flow->Post([t, ok] { t->flow->OnTag(*t, ok); });
}

void RequestFlow::OnTag(const FlowTag& tag, bool ok) {
  if (tag.call != 0) {
    OnCallTag(tag, ok);
    return;
  }
  --server_pending_;
  switch (tag.kind) {
    case FlowTag::kAccept:
      OnAccept(ok);
      return;
    case FlowTag::kDone:
      OnServerDone();
      return;
    case FlowTag::kWrite:
      OnWriteDone(ok);
      return;
    case FlowTag::kFinish:
      return;
    case FlowTag::kTick:
      OnTick(ok);
      return;
    default:
      return;
  }
}

void RequestFlow::OnAccept(bool ok) {
  if (!ok) {
    // The server is shutting down: no call, and no done tag will come.
    ended_ = true;
    out_.Closed();
    return;
  }
  accepted_ = true;
  ++server_pending_;  // the done tag
  received_ = absl::Now();
  // The next call on this queue.
  if (listening_) Listen(deps_, cq_);
  host_.FlowAccepted(shared_from_this());
}

void RequestFlow::OnServerDone() {
  if (!client_->cancelled() || out_.finish_called()) return;
  server_cancelled_ = true;
  if (ended_) return;
  const bool deadline = client_->deadline() <= absl::Now();
  if (!started_) {
    host_.FlowDequeue(this);
    status_ = deadline ? absl::DeadlineExceededError("the request's deadline passed while queued")
                       : absl::CancelledError("cancelled while queued");
    End();
    return;
  }
  if (parked_) {  // no worker call to report back
    HandleOutcome(WorkerError(grpc::Status::OK, "", true));
    return;
  }
  // Their ends report back through WorkerError, which sees server_cancelled_.
  CancelAll();
}

void RequestFlow::OnCallTag(const FlowTag& tag, bool ok) {
  auto it = calls_.find(tag.call);
  if (it == calls_.end()) return;  // cannot happen: a call lives until its last tag
  WorkerCallBase* call = it->second.get();
  call->Returned();
  const bool decode = tag.call == decode_id_;
  const bool prefill = tag.call == prefill_id_;
  switch (tag.kind) {
    case FlowTag::kCallRead:
      call->OnRead(ok);
      if (ok && decode) OnDecodeRead(tag.call);
      if (ok && prefill) OnPrefillRead(tag.call);
      break;
    case FlowTag::kCallFinish: {
      call->OnFinished();
      const grpc::Status st = call->status();
      if (decode) OnDecodeDone(tag.call, st);
      if (prefill) OnPrefillDone(tag.call, st);
      break;
    }
    default:
      break;
  }
  // A call is over once its finish tag and every other tag came back.
  it = calls_.find(tag.call);
  if (it != calls_.end() && it->second->over()) calls_.erase(it);
}

// ---- The serial queue --------------------------------------------------------------------

void RequestFlow::Post(std::function<void()> fn) {
  if (queue_.Post(std::move(fn))) MaybeRelease();
}

void RequestFlow::MaybeRelease() {
  // Runs after a drain, outside any handler. Once every operation started on the queue has
  // returned, no tag can come any more; what remains are the host's references.
  std::shared_ptr<RequestFlow> self;
  queue_.RunIfIdle([&] {
    if (server_pending_ > 0 || !calls_.empty() || !out_.finish_called() || self_ == nullptr) return;
    self = std::move(self_);
  });
  if (self == nullptr) return;
  if (accepted_) host_.FlowGone(this);
  // `self` may be the last reference: then the flow is deleted here.
}

void RequestFlow::Start() {
  Post([this] {
    if (ended_) {
      // Cancelled or aborted while the host was taking it off its queue to start it: the slot
      // it was given goes back.
      host_.FlowEnded(this);
      return;
    }
    started_ = true;
    ArmTick();
    usage_.set_prompt_tokens(static_cast<uint32_t>(req_.prompt.size()));
    const double queue_s = absl::ToDoubleSeconds(absl::Now() - received_);
    metrics_.queue_time.Observe(queue_s);
    usage_.set_queue_seconds(queue_s);
    metrics_.prompt_tokens.Increment(static_cast<double>(req_.prompt.size()));
    Place();
  });
}

void RequestFlow::Abort() {
  Post([this] {
    if (ended_) return;
    aborted_ = true;
    if (!started_) {
      host_.FlowDequeue(this);
      finish_ = pb::FINISH_REASON_ABORT;
      End();
      return;
    }
    if (parked_) {
      finish_ = pb::FINISH_REASON_ABORT;
      End();
      return;
    }
    CancelAll();  // their ends report back through WorkerError, which sees aborted_
  });
}

void RequestFlow::Reject(absl::Status status) {
  Post([this, status = std::move(status)] {
    status_ = status;
    End();
  });
}

// ---- Worker calls ------------------------------------------------------------------------

std::unique_ptr<grpc::ClientContext> RequestFlow::NewContext() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  // The client's deadline applies to the worker calls too (its cancel: OnServerDone).
  if (client_->deadline() != absl::InfiniteFuture()) {
    ctx->set_deadline(absl::ToChronoTime(client_->deadline()));
  }
  // gRPC aborts on a value it cannot send: only a valid id travels (common/request_id.h).
  if (IsValidRequestId(req_.request_id)) ctx->AddMetadata("x-request-id", req_.request_id);
  return ctx;
}

void RequestFlow::CancelCall(uint64_t id) {
  auto it = calls_.find(id);
  if (it != calls_.end()) it->second->Cancel();
}

void RequestFlow::CancelAll() {
  for (auto& [id, call] : calls_) call->Cancel();
}

template <class Call, class Prepare>
Call* RequestFlow::StartCall(const std::string& worker, typename Call::RequestType request,
                             Prepare prepare, uint64_t* id) {
  *id = next_call_id_++;
  auto owned = std::make_unique<Call>(this, *id, worker, NewContext());
  Call* call = owned.get();
  calls_.emplace(*id, std::move(owned));
  call->Start(prepare, std::move(request), cq_);
  return call;
}

// ---- Placement and attempts ----------------------------------------------------------------

void RequestFlow::Place() {
  parked_ = false;
  if (aborted_) {
    finish_ = pb::FINISH_REASON_ABORT;
    End();
    return;
  }
  const std::vector<WorkerSnapshot> workers = registry_.Healthy();
  const int di = policy_.PickDecode(workers, bad_decode_);
  // In place on a role-both decode worker when it is also the best (or only) prefill pick.
  const int pi = di >= 0 ? policy_.PickPrefill(workers, bad_prefill_) : -1;
  if (di < 0 || pi < 0) {
    // Full, not gone: the same workers with a free slot each would do.
    std::vector<WorkerSnapshot> roomy = workers;
    for (WorkerSnapshot& w : roomy) w.free_slots = std::max<int64_t>(w.free_slots, 1);
    const int rd = policy_.PickDecode(roomy, bad_decode_);
    if (rd >= 0 && policy_.PickPrefill(roomy, bad_prefill_) >= 0) {
      Park();
      return;
    }
    status_ = absl::UnavailableError(absl::StrCat(
        "no healthy ", di < 0 ? "decode" : "prefill", " worker can take the request",
        generated_.empty() ? "" : absl::StrCat(" (after ", generated_.size(), " tokens)")));
    metrics_.Failure("no_worker", client_->api());
    End();
    return;
  }
  auto add_worker = [&](const std::string& a) {
    if (!options_.usage_workers) return;
    if (usage_.workers_size() == 0 || usage_.workers(usage_.workers_size() - 1) != a) {
      usage_.add_workers(a);
    }
  };
  const WorkerSnapshot& p = workers[pi];
  const WorkerSnapshot& d = workers[di];
  if (p.address == d.address) {
    add_worker(d.address);
    StartInPlace(d);
  } else {
    add_worker(p.address);
    add_worker(d.address);
    StartSplit(p, d);
  }
}

void RequestFlow::StartInPlace(const WorkerSnapshot& w) {
  decode_worker_ = w.address;
  prefill_only_ = false;
  auto stub = registry_.Stub(w.address);
  if (stub == nullptr) {
    HandleOutcome(
        WorkerError(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"), w.address, true));
    return;
  }
  consumed_ = static_cast<int64_t>(req_.prompt.size() + generated_.size());
  inplace_first_ = true;
  registry_.Adjust(w.address, -1, consumed_);
  prefill_id_ = 0;
  prefill_ = nullptr;
  stage_ = Stage::kInPlace;
  decode_ = StartCall<DecodeStream>(
      w.address, InPlaceDecodeRequest(req_, generated_),
      [&](grpc::ClientContext* c, const pb::DecodeRequest& r, grpc::CompletionQueue* q) {
        return stub->PrepareAsyncDecode(c, r, q);
      },
      &decode_id_);
}

void RequestFlow::StartSplit(const WorkerSnapshot& p, const WorkerSnapshot& d) {
  decode_worker_ = d.address;
  prefill_worker_ = p.address;
  auto dstub = registry_.Stub(d.address);
  if (dstub == nullptr) {
    HandleOutcome(
        WorkerError(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"), d.address, true));
    return;
  }
  if (registry_.Stub(p.address) == nullptr) {
    HandleOutcome(
        WorkerError(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"), p.address, false));
    return;
  }
  consumed_ = static_cast<int64_t>(req_.prompt.size() + generated_.size());
  const int64_t remaining = req_.max_new_tokens - static_cast<int64_t>(generated_.size());
  got_first_ = false;
  decode_failed_ = false;
  decode_status_ = grpc::Status::OK;
  decode_id_ = prefill_id_ = 0;
  decode_ = nullptr;
  prefill_ = nullptr;
  prefill_only_ = remaining <= 1;
  if (prefill_only_) {
    // The prefill's first token is the last one: no reservation (it would need room for a
    // second token, which at the context's edge does not exist).
    handle_.clear();
    StartPrefill();
    return;
  }
  // 1. Reserve on the decode worker. The handle is a secret: whoever knows it can push this
  // sequence's state.
  handle_ = RandomHex128();
  // Count the reservation now, so concurrent placements spread before the next probe.
  registry_.Adjust(d.address, -1, 0);
  stage_ = Stage::kReserving;
  last_renew_ = absl::Now();
  decode_ = StartCall<DecodeStream>(
      d.address, ReserveDecodeRequest(req_, generated_, handle_),
      [&](grpc::ClientContext* c, const pb::DecodeRequest& r, grpc::CompletionQueue* q) {
        return dstub->PrepareAsyncDecode(c, r, q);
      },
      &decode_id_);
}

void RequestFlow::StartPrefill() {
  auto pstub = registry_.Stub(prefill_worker_);
  if (pstub == nullptr) {
    CancelCall(decode_id_);
    decode_id_ = 0;
    HandleOutcome(
        WorkerError(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"), prefill_worker_, false));
    return;
  }
  registry_.Adjust(prefill_worker_, -1, consumed_);
  stage_ = Stage::kPrefilling;
  prefill_ = StartCall<PrefillStream>(
      prefill_worker_, SplitPrefillRequest(req_, generated_, decode_worker_, handle_),
      [&](grpc::ClientContext* c, const pb::PrefillRequest& r, grpc::CompletionQueue* q) {
        return pstub->PrepareAsyncPrefill(c, r, q);
      },
      &prefill_id_);
}

void RequestFlow::OnDecodeRead(uint64_t id) {
  if (id != decode_id_ || ended_) return;  // an abandoned call: its end is all that matters
  const pb::DecodeResponse& msg = decode_->msg();
  if (stage_ == Stage::kReserving) {
    if (!msg.has_reserved()) {
      decode_failed_ = true;
      decode_status_ = grpc::Status(grpc::StatusCode::INTERNAL, "no reservation");
      decode_->Cancel();
      return;
    }
    // 2. Prefill on P with the reservation as destination; its first token goes out at once.
    StartPrefill();
    return;
  }
  if (stage_ != Stage::kDecoding && stage_ != Stage::kInPlace) return;
  last_progress_ = absl::Now();
  if (stage_ == Stage::kInPlace && msg.has_tokens() && inplace_first_) {
    inplace_first_ = false;
    registry_.Adjust(decode_worker_, 0, -consumed_);
  }
  if (stage_ == Stage::kInPlace && msg.has_done()) {
    usage_.set_prefill_seconds(usage_.prefill_seconds() + msg.done().prefill_seconds());
  }
  if (HandleDecodeMessage(msg)) {
    decode_->Next();
    return;
  }
  // Finished (or failed): release the decode worker and end.
  CancelCall(decode_id_);
  decode_id_ = 0;
  End();
}

bool RequestFlow::HandleDecodeMessage(const pb::DecodeResponse& msg) {
  if (msg.has_tokens()) {
    std::vector<int32_t> t(msg.tokens().token_ids().begin(), msg.tokens().token_ids().end());
    std::vector<const pb::PositionLogprobs*> lp;
    for (const auto& l : msg.tokens().logprobs()) lp.push_back(&l);
    return Emit(t, lp);
  }
  if (msg.has_done()) {
    if (finish_ == pb::FINISH_REASON_UNSPECIFIED) finish_ = FromDecodeFinish(msg);
    return false;
  }
  return true;
}

void RequestFlow::OnDecodeDone(uint64_t id, const grpc::Status& st) {
  if (id != decode_id_ || ended_) return;
  decode_id_ = 0;
  if (stage_ == Stage::kPrefilling) {
    // The prefill is still running (its push fails now): its end decides what happens.
    decode_failed_ = true;
    if (decode_status_.ok()) decode_status_ = st;
    return;
  }
  grpc::Status status = st;
  if (stage_ == Stage::kReserving) {
    if (decode_failed_ && !decode_status_.ok()) status = decode_status_;
    if (status.ok()) status = grpc::Status(grpc::StatusCode::INTERNAL, "no reservation");
  } else if (status.ok()) {
    status_ = absl::InternalError("decode worker ended the stream without a finish");
    End();
    return;
  }
  HandleOutcome(WorkerError(status, decode_worker_, true));
}

void RequestFlow::OnPrefillRead(uint64_t id) {
  if (id != prefill_id_ || ended_) return;
  const pb::PrefillResponse& pmsg = prefill_->msg();
  if (pmsg.has_first_token()) {
    got_first_ = true;
    registry_.Adjust(prefill_worker_, 0, -consumed_);
    usage_.set_prefill_seconds(usage_.prefill_seconds() + pmsg.first_token().prefill_seconds());
    std::vector<const pb::PositionLogprobs*> lp;
    if (pmsg.first_token().has_logprobs()) lp.push_back(&pmsg.first_token().logprobs());
    if (!Emit({static_cast<int32_t>(pmsg.first_token().token_id())}, lp)) {
      // Finished at the first token (or failed): the decode reservation is not needed.
      CancelAll();
      decode_id_ = prefill_id_ = 0;
      End();
      return;
    }
  } else if (pmsg.has_transfer()) {
    usage_.set_transfer_bytes(usage_.transfer_bytes() + pmsg.transfer().bytes());
    usage_.set_transfer_seconds(usage_.transfer_seconds() + pmsg.transfer().transfer_seconds());
  }
  prefill_->Next();
}

void RequestFlow::OnPrefillDone(uint64_t id, const grpc::Status& st) {
  if (id != prefill_id_ || ended_) return;
  prefill_id_ = 0;
  if (!st.ok()) {
    CancelCall(decode_id_);
    decode_id_ = 0;
    if (!got_first_) {
      registry_.Adjust(prefill_worker_, 0, -consumed_);
      HandleOutcome(WorkerError(st, prefill_worker_, false));
    } else if (!prefill_only_ && absl::StartsWith(st.error_message(), "push to ")) {
      // The first token was sent but the state did not reach the decode worker (the push to it
      // failed): continue elsewhere from the tokens sent so far.
      HandleOutcome(WorkerError(st, decode_worker_, true));
    } else {
      // The prefill worker itself failed after its first token (e.g. died during the push):
      // it is to blame, not the decode worker.
      HandleOutcome(WorkerError(st, prefill_worker_, false));
    }
    return;
  }
  if (prefill_only_) {
    // Its one token ended the request (Emit saw to that); anything else is the worker's fault.
    if (finish_ == pb::FINISH_REASON_UNSPECIFIED && status_.ok()) {
      status_ = absl::InternalError("prefill worker ended without its first token");
    }
    End();
    return;
  }
  if (decode_failed_) {
    // The decode call ended while the state was pushed: go on elsewhere.
    grpc::Status ds = decode_status_.ok()
                          ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "decode stream ended")
                          : decode_status_;
    CancelCall(decode_id_);
    decode_id_ = 0;
    HandleOutcome(WorkerError(ds, decode_worker_, true));
    return;
  }
  // 3. The state is on D: stream its tokens.
  stage_ = Stage::kDecoding;
  last_progress_ = absl::Now();
  decode_->Next();
}

void RequestFlow::HandleOutcome(Outcome o) {
  stage_ = Stage::kIdle;
  switch (o) {
    case Outcome::kFinished:
    case Outcome::kStop:
      End();
      return;
    case Outcome::kRetryPrefill:
      if (++prefill_failures_ > options_.prefill_retries) {
        status_ = absl::UnavailableError("prefill failed on every worker tried");
        metrics_.Failure("prefill_failed", client_->api());
        End();
        return;
      }
      break;
    case Outcome::kMigrate:
      if (migrations_ >= options_.migration_limit) {
        status_ = absl::UnavailableError(
            absl::StrCat("the decode worker failed and the migration limit (",
                         options_.migration_limit, ") is reached"));
        metrics_.Failure("migration_limit", client_->api());
        End();
        return;
      }
      ++migrations_;
      metrics_.migrations.Increment();
      Log(LogLevel::kInfo, "router", "migrating sequence",
          {{"request_id", req_.request_id},
           {"tokens_sent", generated_.size()},
           {"migration", migrations_}});
      break;
    case Outcome::kRetryDecode:
      break;
    case Outcome::kWaitCapacity:
      Park();
      return;
  }
  Place();
}

void RequestFlow::Park() {
  stage_ = Stage::kIdle;
  if (!parked_) {
    Log(LogLevel::kDebug, "router", "waiting for a worker with room",
        {{"request_id", req_.request_id}, {"tokens_sent", generated_.size()}});
  }
  parked_ = true;  // the next tick places it again
}

RequestFlow::Outcome RequestFlow::WorkerError(const grpc::Status& st, const std::string& worker,
                                              bool decode_side) {
  if (aborted_) {
    finish_ = pb::FINISH_REASON_ABORT;
    return Outcome::kFinished;
  }
  if (!status_.ok()) return Outcome::kStop;  // e.g. the client went away
  if (server_cancelled_) {
    status_ = client_->deadline() <= absl::Now()
                  ? absl::DeadlineExceededError("the request's deadline passed")
                  : absl::CancelledError("the client cancelled");
    metrics_.Failure(
        status_.code() == absl::StatusCode::kDeadlineExceeded ? "deadline" : "cancelled",
        client_->api());
    return Outcome::kStop;
  }
  if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
      client_->deadline() <= absl::Now() + absl::Milliseconds(50)) {
    status_ = absl::DeadlineExceededError("the request's deadline passed");
    metrics_.Failure("deadline", client_->api());
    return Outcome::kStop;
  }
  Log(LogLevel::kWarning, "router", decode_side ? "decode worker failed" : "prefill worker failed",
      {{"request_id", req_.request_id},
       {"worker", worker},
       {"code", st.error_code()},
       {"error", st.error_message()},
       {"tokens_sent", generated_.size()}});
  if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
    // Full, not failed: wait until it (or another worker) has room.
    registry_.MarkFull(worker);
    return Outcome::kWaitCapacity;
  }
  if (!Retryable(st.error_code())) {
    // The worker judged the request itself wrong: no other worker would do better.
    status_ = FromGrpcStatus(st);
    metrics_.Failure("internal", client_->api());
    return Outcome::kStop;
  }
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE)
    registry_.ReportFailure(worker, FromGrpcStatus(st));
  if (!decode_side) {
    bad_prefill_.insert(worker);
    return Outcome::kRetryPrefill;
  }
  bad_decode_.insert(worker);
  return generated_.empty() ? Outcome::kRetryDecode : Outcome::kMigrate;
}

}  // namespace sambay
