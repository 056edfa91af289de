#include "worker/service.h"

#include <grpcpp/server_context.h>

#include <chrono>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/limits.h"
#include "common/log.h"
#include "common/request_id.h"
#include "engine/state_io.h"
#include "worker/request_convert.h"
#include "worker/state_push.h"

namespace sambay {
namespace {

namespace pb = sambay::v1;

constexpr absl::Duration kPoll = absl::Milliseconds(50);
constexpr uint32_t kMinChunkBytes = 64 << 10;
constexpr uint32_t kMaxChunkBytes = 16 << 20;

// The id for logs and for the calls this worker makes: the request_id field, else the
// x-request-id header; "" when neither passes IsValidRequestId (a value gRPC would refuse to
// send on, which would abort the worker when passed to PushState).
std::string RequestId(const grpc::ServerContext* ctx, const std::string& field) {
  if (!field.empty()) return IsValidRequestId(field) ? field : "";
  auto it = ctx->client_metadata().find("x-request-id");
  if (it == ctx->client_metadata().end()) return "";
  const absl::string_view v(it->second.data(), it->second.size());
  return IsValidRequestId(v) ? std::string(v) : "";
}

void ToProto(const TokenLogprobs& lp, pb::PositionLogprobs* out) {
  out->mutable_token()->set_token_id(static_cast<uint32_t>(lp.token));
  out->mutable_token()->set_logprob(lp.logprob);
  for (const auto& [id, v] : lp.top) {
    pb::TokenLogprob* t = out->add_top();
    t->set_token_id(static_cast<uint32_t>(id));
    t->set_logprob(v);
  }
}

double Seconds(absl::Time a, absl::Time b) {
  if (a == absl::InfinitePast() || b == absl::InfinitePast()) return 0;
  return absl::ToDoubleSeconds(b - a);
}

// Why a call ended early, from the server's view: the caller's deadline or a cancel.
absl::Status CallEnded(const grpc::ServerContext* ctx) {
  if (absl::FromChrono(ctx->deadline()) <= absl::Now()) {
    return absl::DeadlineExceededError("the call's deadline passed");
  }
  return absl::CancelledError("the caller cancelled");
}

// Ends the sequence on every exit path of a handler (no-op if it already ended).
class SeqGuard {
 public:
  SeqGuard(Scheduler& scheduler, std::shared_ptr<Sequence> seq)
      : scheduler_(scheduler), seq_(std::move(seq)) {}
  ~SeqGuard() {
    if (handed_over_) {
      scheduler_.Retire(seq_, FinishKind::kCancelled);
    } else {
      scheduler_.Fail(seq_, absl::CancelledError("the call ended"));
    }
  }
  void set_handed_over() { handed_over_ = true; }

 private:
  Scheduler& scheduler_;
  std::shared_ptr<Sequence> seq_;
  bool handed_over_ = false;
};

// Waits for the sequence's next event, ending it if the call is cancelled. nullopt: the call
// ended (the status is in *ended).
std::optional<SeqEvent> NextEvent(grpc::ServerContext* ctx, Scheduler& scheduler,
                                  const std::shared_ptr<Sequence>& seq, absl::Status* ended) {
  for (;;) {
    if (auto ev = seq->Next(kPoll)) return ev;
    if (ctx->IsCancelled()) {
      *ended = CallEnded(ctx);
      scheduler.Fail(seq, *ended,
                     ended->code() == absl::StatusCode::kDeadlineExceeded ? "deadline" : "");
      return std::nullopt;
    }
  }
}

}  // namespace

WorkerService::WorkerService(EngineBackend& model, Scheduler& scheduler, WorkerMetrics& metrics,
                             WorkerRoles roles, RpcLimits peer_limits, std::string version,
                             WorkerServiceOptions options)
    : model_(model),
      scheduler_(scheduler),
      metrics_(metrics),
      roles_(roles),
      options_(std::move(options)),
      peers_(peer_limits, options_.peer_channels),
      version_(std::move(version)) {}

absl::Status WorkerService::CheckDestination(const pb::StateDestination& d,
                                             const std::string& rid) const {
  if (d.address().empty() || d.handle().empty()) {
    return absl::InvalidArgumentError(
        "destination: address and handle are both required when a destination is given (the "
        "decode worker's reservation)");
  }
  if (d.handle().size() > kMaxHandleBytes) {
    return absl::InvalidArgumentError(absl::StrCat("destination.handle: must be at most ",
                                                   kMaxHandleBytes, " bytes, got ",
                                                   d.handle().size()));
  }
  absl::Status s = options_.push_allow.Check(d.address());
  if (!s.ok()) {
    Log(LogLevel::kWarning, "worker", "push destination refused",
        {{"request_id", rid}, {"error", s.ToString()}});
  }
  return s;
}

grpc::Status WorkerService::Prefill(grpc::ServerContext* ctx, const pb::PrefillRequest* req,
                                    grpc::ServerWriter<pb::PrefillResponse>* writer) {
  CallScope scope(inflight_);
  const std::string rid = RequestId(ctx, req->request_id());
  if (!roles_.prefill) {
    metrics_.Reject(RejectReason::kRole);
    return ToGrpcStatus(absl::FailedPreconditionError("this worker does not serve role prefill"));
  }
  // Without a destination the first token is all the caller wants (e.g. the last token the
  // context has room for): the state is dropped after it.
  const bool push = req->has_destination();
  if (push) {
    if (absl::Status s = CheckDestination(req->destination(), rid); !s.ok()) {
      return ToGrpcStatus(s);
    }
  }
  uint32_t chunk_bytes =
      req->max_chunk_bytes() == 0 ? kDefaultStateChunkBytes : req->max_chunk_bytes();
  if (chunk_bytes < kMinChunkBytes || chunk_bytes > kMaxChunkBytes) {
    return ToGrpcStatus(
        absl::InvalidArgumentError(absl::StrCat("max_chunk_bytes: must be in [", kMinChunkBytes,
                                                ", ", kMaxChunkBytes, "], got ", chunk_bytes)));
  }
  auto admitted = scheduler_.Admit(FromPrefillRequest(*req, rid));
  if (!admitted.ok()) return ToGrpcStatus(admitted.status());
  std::shared_ptr<Sequence> seq = *std::move(admitted);
  SeqGuard guard(scheduler_, seq);

  // 1. The first token, as soon as it is sampled.
  std::unique_ptr<SequenceState> state;
  absl::Status ended;
  while (state == nullptr) {
    std::optional<SeqEvent> ev = NextEvent(ctx, scheduler_, seq, &ended);
    if (!ev) return ToGrpcStatus(ended);
    if (ev->kind == SeqEvent::kError) return ToGrpcStatus(ev->status);
    if (ev->kind == SeqEvent::kToken) {
      const SeqTimes t = seq->times();
      pb::PrefillResponse msg;
      pb::FirstToken* ft = msg.mutable_first_token();
      ft->set_token_id(static_cast<uint32_t>(ev->token));
      if (ev->logprobs) ToProto(*ev->logprobs, ft->mutable_logprobs());
      ft->set_queue_seconds(Seconds(t.admitted, t.first_forward));
      ft->set_prefill_seconds(Seconds(t.first_forward, t.prefilled));
      if (!writer->Write(msg)) return ToGrpcStatus(CallEnded(ctx));
    } else if (ev->kind == SeqEvent::kStateReady) {
      guard.set_handed_over();
      state = seq->TakeState();
    }
  }

  if (!push) {
    state.reset();
    scheduler_.Retire(seq, FinishKind::kLength);
    return grpc::Status::OK;
  }
  // 2. Export and push to the destination, chunk by chunk (one chunk in memory beside the
  // state); the state is freed before the reply.
  const absl::Time deadline =
      std::min(absl::FromChrono(ctx->deadline()), absl::Now() + scheduler_.options().lease);
  auto stub = pb::Worker::NewStub(peers_.Get(req->destination().address()));
  absl::Status export_error;
  auto pushed = PushStateFrom(
      *stub, req->destination().handle(),
      [&](const StateChunkSink& sink) {
        bool sink_failed = false;
        absl::Status s = model_.ExportTo(*state, chunk_bytes, [&](std::string chunk) {
          absl::Status w = sink(std::move(chunk));
          sink_failed = !w.ok();
          return w;
        });
        if (!s.ok() && !sink_failed) export_error = s;
        return s;
      },
      deadline, rid, req->destination().address());
  state.reset();
  if (!export_error.ok()) {
    metrics_.Failure("internal");
    scheduler_.Retire(seq, FinishKind::kError);
    return ToGrpcStatus(export_error);
  }
  if (!pushed.ok()) {
    metrics_.Failure("push_failed");
    scheduler_.Retire(seq, FinishKind::kError);
    Log(LogLevel::kWarning, "worker", "state push failed",
        {{"request_id", rid}, {"error", pushed.status().ToString()}});
    return ToGrpcStatus(pushed.status());
  }
  const double export_s = pushed->produce_seconds;
  metrics_.sent_bytes.Increment(static_cast<double>(pushed->bytes));
  metrics_.sent_seconds.Observe(pushed->transfer_seconds);
  scheduler_.Retire(seq, FinishKind::kHandedOff);
  pb::PrefillResponse msg;
  pb::TransferResult* tr = msg.mutable_transfer();
  tr->set_bytes(static_cast<uint64_t>(pushed->bytes));
  tr->set_chunks(static_cast<uint32_t>(pushed->chunks));
  tr->set_export_seconds(export_s);
  tr->set_transfer_seconds(pushed->transfer_seconds);
  tr->set_import_seconds(pushed->import_seconds);
  writer->Write(msg);
  return grpc::Status::OK;
}

grpc::Status WorkerService::PushState(grpc::ServerContext* ctx,
                                      grpc::ServerReader<pb::StateChunk>* reader,
                                      pb::PushStateResponse* resp) {
  CallScope scope(inflight_);
  if (!roles_.decode) {
    metrics_.Reject(RejectReason::kRole);
    return ToGrpcStatus(absl::FailedPreconditionError("this worker does not serve role decode"));
  }
  // Each stream holds a server thread: past the cap, refuse at once (GetLoad, probes and the
  // Decode streams keep theirs).
  struct StreamSlot {
    std::atomic<int64_t>& n;
    ~StreamSlot() { n.fetch_sub(1); }
  } slot{push_streams_};
  if (const int64_t open = push_streams_.fetch_add(1) + 1; open > options_.max_push_streams) {
    metrics_.Reject(RejectReason::kSlots);
    return ToGrpcStatus(
        absl::ResourceExhaustedError(absl::StrCat("PushState: ", open - 1,
                                                  " streams are open, the most this worker serves "
                                                  "(--max-push-streams); retry later")));
  }
  CallWatchdog::Timer timer(watchdog_, ctx);
  const std::string first_late = absl::StrCat(
      "PushState: no chunk within ", absl::FormatDuration(options_.push_first_chunk_timeout),
      " of the stream's start (--push-first-chunk-timeout)");
  timer.Arm(absl::Now() + options_.push_first_chunk_timeout, first_late);
  pb::StateChunk msg;
  if (!reader->Read(&msg)) {
    if (timer.expired()) return ToGrpcStatus(absl::DeadlineExceededError(first_late));
    return ToGrpcStatus(ctx->IsCancelled() ? absl::UnavailableError("the sender went away")
                                           : absl::InvalidArgumentError("the stream has no chunk"));
  }
  if (msg.handle().empty()) {
    return ToGrpcStatus(absl::InvalidArgumentError("handle: required in the first message"));
  }
  if (msg.handle().size() > kMaxHandleBytes) {
    return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
        "handle: must be at most ", kMaxHandleBytes, " bytes, got ", msg.handle().size())));
  }
  auto claimed = scheduler_.BeginReceive(msg.handle());
  if (!claimed.ok()) return ToGrpcStatus(claimed.status());
  return ReceiveState(ctx, reader, *std::move(claimed), msg, timer, resp);
}

grpc::Status WorkerService::ReceiveState(grpc::ServerContext* ctx,
                                         grpc::ServerReader<pb::StateChunk>* reader,
                                         std::shared_ptr<Sequence> seq, pb::StateChunk& msg,
                                         CallWatchdog::Timer& timer, pb::PushStateResponse* resp) {
  const std::string rid = RequestId(ctx, seq->request().request_id);
  const std::string handle = msg.handle();
  auto fail = [&](const absl::Status& s) {
    scheduler_.Fail(seq, s, WorkerMetrics::FailureReasonFor(s));
    Log(LogLevel::kWarning, "worker", "state import failed",
        {{"request_id", rid}, {"handle", handle}, {"error", s.ToString()}});
    return ToGrpcStatus(s);
  };
  StateImporter importer(model_.config(), model_.fingerprint(), seq->request().prompt_tokens,
                         model_.tp_size());
  const absl::Time start = absl::Now();
  absl::Duration import_time;
  int64_t bytes = 0, chunks = 0;
  for (;;) {
    // The reservation may have ended meanwhile (release, cancel).
    if (auto end = seq->end_status(); end.has_value()) {
      return ToGrpcStatus(end->ok() ? absl::CancelledError("the reservation ended") : *end);
    }
    const absl::Time t = absl::Now();
    absl::Status s = importer.AddChunk(msg.data());
    import_time += absl::Now() - t;
    bytes += static_cast<int64_t>(msg.data().size());
    ++chunks;
    if (!s.ok()) return fail(s);
    const std::string late =
        absl::StrCat("PushState: no chunk for ", absl::FormatDuration(options_.push_chunk_timeout),
                     " after chunk ", chunks, " (--push-chunk-timeout)");
    timer.Arm(absl::Now() + options_.push_chunk_timeout, late);
    if (!reader->Read(&msg)) {
      if (timer.expired()) return fail(absl::DeadlineExceededError(late));
      break;
    }
  }
  timer.Arm(absl::InfiniteFuture());
  if (ctx->IsCancelled()) {
    return fail(absl::UnavailableError(
        absl::StrCat("state transfer aborted: the sender went away after ", chunks, " chunks")));
  }
  const absl::Time t = absl::Now();
  auto state = importer.Finish();
  import_time += absl::Now() - t;
  if (!state.ok()) return fail(state.status());
  const double import_s = absl::ToDoubleSeconds(import_time);
  absl::Status s = scheduler_.CompleteReceive(seq, *std::move(state), import_s, bytes);
  if (!s.ok()) return ToGrpcStatus(s);
  metrics_.received_bytes.Increment(static_cast<double>(bytes));
  metrics_.received_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - start));
  resp->set_bytes(static_cast<uint64_t>(bytes));
  resp->set_chunks(static_cast<uint32_t>(chunks));
  resp->set_import_seconds(import_s);
  return grpc::Status::OK;
}

grpc::Status WorkerService::Decode(grpc::ServerContext* ctx, const pb::DecodeRequest* req,
                                   grpc::ServerWriter<pb::DecodeResponse>* writer) {
  CallScope scope(inflight_);
  auto converted = FromDecodeRequest(*req, RequestId(ctx, req->request_id()));
  if (!converted.ok()) return ToGrpcStatus(converted.status());
  if (converted->mode == SeqMode::kImported && !roles_.decode) {
    metrics_.Reject(RejectReason::kRole);
    return ToGrpcStatus(absl::FailedPreconditionError("this worker does not serve role decode"));
  }
  if (converted->mode == SeqMode::kLocal && (!roles_.decode || !roles_.prefill)) {
    metrics_.Reject(RejectReason::kRole);
    return ToGrpcStatus(absl::FailedPreconditionError(
        "local_prompt: needs a worker with role both (prefill and decode)"));
  }
  auto admitted = scheduler_.Admit(*std::move(converted));
  if (!admitted.ok()) return ToGrpcStatus(admitted.status());
  std::shared_ptr<Sequence> seq = *std::move(admitted);
  SeqGuard guard(scheduler_, seq);
  if (seq->request().mode == SeqMode::kImported) {
    pb::DecodeResponse msg;
    msg.mutable_reserved()->set_handle(seq->request().handle);
    msg.mutable_reserved()->set_lease_seconds(absl::ToDoubleSeconds(scheduler_.options().lease));
    if (!writer->Write(msg)) return ToGrpcStatus(CallEnded(ctx));
  }
  absl::Status ended;
  uint32_t emitted = 0;
  for (;;) {
    std::optional<SeqEvent> first = NextEvent(ctx, scheduler_, seq, &ended);
    if (!first) return ToGrpcStatus(ended);
    // Coalesce whatever else is already queued into one message.
    std::vector<SeqEvent> events;
    events.push_back(*std::move(first));
    for (SeqEvent& e : seq->Drain()) events.push_back(std::move(e));
    pb::DecodeResponse msg;
    for (SeqEvent& ev : events) {
      if (ev.kind == SeqEvent::kToken) {
        msg.mutable_tokens()->add_token_ids(static_cast<uint32_t>(ev.token));
        if (ev.logprobs) ToProto(*ev.logprobs, msg.mutable_tokens()->add_logprobs());
        ++emitted;
      } else if (ev.kind == SeqEvent::kError) {
        if (msg.has_tokens()) writer->Write(msg);
        return ToGrpcStatus(ev.status);
      } else if (ev.kind == SeqEvent::kDone) {
        if (msg.has_tokens() && !writer->Write(msg)) return ToGrpcStatus(CallEnded(ctx));
        const SeqTimes t = seq->times();
        pb::DecodeResponse done;
        pb::DecodeDone* d = done.mutable_done();
        d->set_reason(ev.finish == SeqFinish::kStop ? pb::DECODE_FINISH_STOP
                                                    : pb::DECODE_FINISH_LENGTH);
        d->set_tokens(emitted);
        d->set_queue_seconds(Seconds(t.admitted, t.first_forward));
        d->set_decode_seconds(Seconds(t.running, t.finished));
        d->set_transfer_bytes(static_cast<uint64_t>(t.transfer_bytes));
        d->set_import_seconds(t.import_seconds);
        d->set_prefill_seconds(Seconds(t.first_forward, t.prefilled));
        writer->Write(done);
        return grpc::Status::OK;
      }
    }
    if (msg.has_tokens() && !writer->Write(msg)) return ToGrpcStatus(CallEnded(ctx));
  }
}

grpc::Status WorkerService::Release(grpc::ServerContext* ctx, const pb::ReleaseRequest* req,
                                    pb::ReleaseResponse* resp) {
  std::string handle, rid;
  if (req->target_case() == pb::ReleaseRequest::kHandle) handle = req->handle();
  if (req->target_case() == pb::ReleaseRequest::kRequestId) rid = req->request_id();
  if (handle.empty() && rid.empty()) {
    return ToGrpcStatus(absl::InvalidArgumentError("target: set a handle or a request_id"));
  }
  const int n = scheduler_.Release(handle, rid);
  if (n == 0) {
    return ToGrpcStatus(absl::NotFoundError(absl::StrCat(handle.empty() ? "request_id" : "handle",
                                                         ": no live sequence \"",
                                                         handle.empty() ? rid : handle, "\"")));
  }
  resp->set_released(static_cast<uint32_t>(n));
  return grpc::Status::OK;
}

grpc::Status WorkerService::RenewLease(grpc::ServerContext* ctx, const pb::RenewLeaseRequest* req,
                                       pb::RenewLeaseResponse* resp) {
  if (!roles_.decode) {
    return ToGrpcStatus(absl::FailedPreconditionError("this worker does not serve role decode"));
  }
  if (req->handle().empty() || req->handle().size() > kMaxHandleBytes) {
    return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
        "handle: must be 1 to ", kMaxHandleBytes, " bytes, got ", req->handle().size())));
  }
  if (absl::Status s = scheduler_.RenewLease(req->handle()); !s.ok()) return ToGrpcStatus(s);
  resp->set_lease_seconds(absl::ToDoubleSeconds(scheduler_.options().lease));
  return grpc::Status::OK;
}

grpc::Status WorkerService::GetLoad(grpc::ServerContext* ctx, const pb::GetLoadRequest* req,
                                    pb::WorkerLoad* resp) {
  const LoadSnapshot l = scheduler_.Load();
  resp->set_running(static_cast<uint32_t>(l.running));
  resp->set_waiting(static_cast<uint32_t>(l.waiting));
  resp->set_queued_prefill_tokens(static_cast<uint64_t>(l.queued_prefill_tokens));
  resp->set_free_slots(static_cast<uint32_t>(std::max<int64_t>(0, l.free_slots)));
  resp->set_state_bytes_used(static_cast<uint64_t>(l.state_bytes_used));
  resp->set_state_bytes_total(static_cast<uint64_t>(l.state_bytes_total));
  resp->set_free_kv_blocks(static_cast<uint64_t>(l.free_kv_blocks));
  resp->set_draining(l.draining);
  return grpc::Status::OK;
}

grpc::Status WorkerService::GetInfo(grpc::ServerContext* ctx, const pb::GetInfoRequest* req,
                                    pb::WorkerInfo* resp) {
  const ModelConfig& c = model_.config();
  resp->set_fingerprint(model_.fingerprint());
  resp->set_model_type("phi4flash");
  resp->set_vocab_size(static_cast<uint32_t>(c.vocab_size));
  resp->set_num_layers(static_cast<uint32_t>(c.num_layers));
  if (roles_.prefill) resp->add_roles("prefill");
  if (roles_.decode) resp->add_roles("decode");
  resp->set_tp_size(static_cast<uint32_t>(model_.tp_size()));
  const SchedulerOptions& o = scheduler_.options();
  resp->set_max_running(static_cast<uint32_t>(o.max_running));
  resp->set_max_context_tokens(static_cast<uint32_t>(o.max_context));
  resp->set_state_bytes_total(static_cast<uint64_t>(o.state_budget_bytes));
  resp->set_prefill_chunk_tokens(static_cast<uint32_t>(o.prefill_chunk));
  resp->set_lease_seconds(absl::ToDoubleSeconds(o.lease));
  // Past the sliding window the payload grows only with the global K/V:
  // bytes(n) = fixed + n * per_token for n >= sliding_window.
  const int64_t w = c.sliding_window;
  const int64_t per_token = StatePayloadBytes(c, w + 1) - StatePayloadBytes(c, w);
  resp->set_state_bytes_fixed(static_cast<uint64_t>(StatePayloadBytes(c, w) - w * per_token));
  resp->set_state_bytes_per_token(static_cast<uint64_t>(per_token));
  resp->set_version(version_);
  return grpc::Status::OK;
}

}  // namespace sambay
