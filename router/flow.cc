#include "router/flow.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/log.h"
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

}  // namespace

RequestFlow::RequestFlow(WorkerRegistry& registry, PlacementPolicy& policy, RouterMetrics& metrics,
                         const Tokenizer& tokenizer, PreparedRequest request, FlowOptions options,
                         grpc::ServerContext* server_ctx, absl::Time received, double queue_seconds)
    : registry_(registry),
      policy_(policy),
      metrics_(metrics),
      req_(std::move(request)),
      options_(options),
      server_ctx_(server_ctx),
      received_(received),
      queue_seconds_(queue_seconds),
      decoder_(tokenizer),
      matcher_(req_.stop_strings) {
  for (const auto& [s, id] : tokenizer.special_tokens()) special_ids_.insert(id);
  usage_.set_prompt_tokens(static_cast<uint32_t>(req_.prompt.size()));
  usage_.set_queue_seconds(queue_seconds_);
}

std::unique_ptr<grpc::ClientContext> RequestFlow::NewContext() {
  // Cancel and deadline of the client's call propagate to the worker call.
  std::unique_ptr<grpc::ClientContext> ctx = grpc::ClientContext::FromServerContext(*server_ctx_);
  ctx->AddMetadata("x-request-id", req_.request_id);
  std::lock_guard<std::mutex> lock(mu_);
  active_.push_back(ctx.get());
  if (aborted_) ctx->TryCancel();
  return ctx;
}

void RequestFlow::Forget(grpc::ClientContext* ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  active_.erase(std::remove(active_.begin(), active_.end(), ctx), active_.end());
}

void RequestFlow::Abort() {
  std::lock_guard<std::mutex> lock(mu_);
  aborted_ = true;
  for (grpc::ClientContext* c : active_) c->TryCancel();
}

bool RequestFlow::Emit(const std::vector<int32_t>& ids,
                       const std::vector<const pb::PositionLogprobs*>& logprobs) {
  pb::GenerateResponse msg;
  if (!sent_first_) msg.set_request_id(req_.request_id);
  std::string text;
  bool stopped = false;
  for (size_t i = 0; i < ids.size() && !stopped; ++i) {
    const int32_t id = ids[i];
    if (static_cast<int64_t>(generated_.size()) >= req_.max_new_tokens) break;
    generated_.push_back(id);
    msg.add_token_ids(static_cast<uint32_t>(id));
    if (req_.logprobs && i < logprobs.size() && logprobs[i] != nullptr) {
      *msg.add_logprobs() = *logprobs[i];
    }
    if (special_ids_.count(id) == 0) {
      auto piece = decoder_.Push(id);
      if (piece.ok()) text += matcher_.Push(*piece, &stopped);
    }
    if (stopped || std::count(req_.stop_ids.begin(), req_.stop_ids.end(), id) > 0) {
      finish_ = pb::FINISH_REASON_STOP;
      stopped = true;
    } else if (static_cast<int64_t>(generated_.size()) >= req_.max_new_tokens) {
      finish_ = pb::FINISH_REASON_LENGTH;
    }
  }
  msg.set_text(text);
  const absl::Time now = absl::Now();
  if (!sent_first_) {
    first_token_at_ = now;
    metrics_.ttft.Observe(absl::ToDoubleSeconds(now - received_));
    usage_.set_time_to_first_token_seconds(absl::ToDoubleSeconds(now - received_));
  } else {
    // Several tokens in one message arrived together: count each gap once.
    const double gap = absl::ToDoubleSeconds(now - last_token_at_) / msg.token_ids_size();
    for (int i = 0; i < msg.token_ids_size(); ++i) metrics_.itl.Observe(gap);
  }
  sent_first_ = true;
  last_token_at_ = now;
  metrics_.generation_tokens.Increment(msg.token_ids_size());
  if (!(*write_)(msg)) {
    status_ = absl::CancelledError("the client went away");
    return false;
  }
  return finish_ == pb::FINISH_REASON_UNSPECIFIED;
}

RequestFlow::Outcome RequestFlow::WorkerError(const grpc::Status& st, const std::string& worker,
                                              bool decode_side) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted_) {
      finish_ = pb::FINISH_REASON_ABORT;
      return Outcome::kFinished;
    }
  }
  if (server_ctx_->IsCancelled()) {
    status_ = absl::FromChrono(server_ctx_->deadline()) <= absl::Now()
                  ? absl::DeadlineExceededError("the request's deadline passed")
                  : absl::CancelledError("the client cancelled");
    metrics_.Failure(status_.code() == absl::StatusCode::kDeadlineExceeded ? "deadline"
                                                                           : "cancelled");
    return Outcome::kStop;
  }
  if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
      absl::FromChrono(server_ctx_->deadline()) <= absl::Now() + absl::Milliseconds(50)) {
    status_ = absl::DeadlineExceededError("the request's deadline passed");
    metrics_.Failure("deadline");
    return Outcome::kStop;
  }
  Log(LogLevel::kWarning, "router", decode_side ? "decode worker failed" : "prefill worker failed",
      {{"request_id", req_.request_id},
       {"worker", worker},
       {"code", st.error_code()},
       {"error", st.error_message()},
       {"tokens_sent", generated_.size()}});
  if (!Retryable(st.error_code())) {
    // The worker judged the request itself wrong: no other worker would do better.
    status_ = FromGrpcStatus(st);
    metrics_.Failure("internal");
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

RequestFlow::Outcome RequestFlow::InPlace(const WorkerSnapshot& w) {
  auto stub = registry_.Stub(w.address);
  if (stub == nullptr)
    return WorkerError(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"), w.address, true);
  pb::DecodeRequest dr;
  dr.set_request_id(req_.request_id);
  auto* ids = dr.mutable_local_prompt()->mutable_ids();
  ids->Add(req_.prompt.begin(), req_.prompt.end());
  ids->Add(generated_.begin(), generated_.end());
  dr.set_rng_draws(generated_.size());
  *dr.mutable_sampling() = req_.sampling;
  dr.set_max_new_tokens(static_cast<uint32_t>(req_.max_new_tokens - generated_.size()));
  dr.mutable_stop_token_ids()->Add(req_.stop_ids.begin(), req_.stop_ids.end());
  dr.set_return_logprobs(req_.logprobs);
  dr.set_top_logprobs(static_cast<uint32_t>(req_.top_logprobs));
  auto ctx = NewContext();
  registry_.Adjust(w.address, -1, static_cast<int64_t>(ids->size()));
  auto reader = stub->Decode(ctx.get(), dr);
  pb::DecodeResponse msg;
  bool more = true;
  bool first = true;
  while (more && reader->Read(&msg)) {
    if (msg.has_tokens()) {
      if (first) registry_.Adjust(w.address, 0, -static_cast<int64_t>(ids->size()));
      first = false;
      std::vector<int32_t> t(msg.tokens().token_ids().begin(), msg.tokens().token_ids().end());
      std::vector<const pb::PositionLogprobs*> lp;
      for (const auto& l : msg.tokens().logprobs()) lp.push_back(&l);
      more = Emit(t, lp);
    } else if (msg.has_done()) {
      usage_.set_prefill_seconds(usage_.prefill_seconds() + msg.done().prefill_seconds());
      if (finish_ == pb::FINISH_REASON_UNSPECIFIED) {
        finish_ = msg.done().reason() == pb::DECODE_FINISH_STOP ? pb::FINISH_REASON_STOP
                                                                : pb::FINISH_REASON_LENGTH;
      }
      more = false;
    }
  }
  if (finish_ != pb::FINISH_REASON_UNSPECIFIED || !status_.ok()) ctx->TryCancel();
  const grpc::Status st = reader->Finish();
  Forget(ctx.get());
  if (!status_.ok()) return Outcome::kStop;
  if (finish_ != pb::FINISH_REASON_UNSPECIFIED) return Outcome::kFinished;
  if (st.ok()) {
    status_ = absl::InternalError("worker ended the stream without a finish");
    return Outcome::kStop;
  }
  return WorkerError(st, w.address, true);
}

RequestFlow::Outcome RequestFlow::Split(const WorkerSnapshot& p, const WorkerSnapshot& d) {
  auto dstub = registry_.Stub(d.address);
  auto pstub = registry_.Stub(p.address);
  if (dstub == nullptr) {
    return WorkerError(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"), d.address, true);
  }
  if (pstub == nullptr) {
    return WorkerError(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"), p.address, false);
  }
  const int64_t consumed = static_cast<int64_t>(req_.prompt.size() + generated_.size());
  const int64_t remaining = req_.max_new_tokens - static_cast<int64_t>(generated_.size());
  const bool penalties =
      (req_.sampling.has_repetition_penalty() && req_.sampling.repetition_penalty() != 1.0f) ||
      req_.sampling.presence_penalty() != 0.0f;
  // 1. Reserve on the decode worker.
  const std::string handle = absl::StrCat(req_.request_id, "/", migrations_, ".", prefill_failures_,
                                          ".", absl::ToUnixNanos(absl::Now()));
  pb::DecodeRequest dr;
  dr.set_request_id(req_.request_id);
  dr.set_handle(handle);
  dr.set_prompt_tokens(static_cast<uint32_t>(consumed));
  *dr.mutable_sampling() = req_.sampling;
  if (penalties) {
    dr.mutable_history()->Add(req_.prompt.begin(), req_.prompt.end());
    dr.mutable_history()->Add(generated_.begin(), generated_.end());
  }
  // The prefill emits one token; the decode worker the rest.
  dr.set_max_new_tokens(static_cast<uint32_t>(std::max<int64_t>(1, remaining - 1)));
  dr.mutable_stop_token_ids()->Add(req_.stop_ids.begin(), req_.stop_ids.end());
  dr.set_return_logprobs(req_.logprobs);
  dr.set_top_logprobs(static_cast<uint32_t>(req_.top_logprobs));
  auto dctx = NewContext();
  // Count the reservation now, so concurrent placements spread before the next probe.
  registry_.Adjust(d.address, -1, 0);
  auto dreader = dstub->Decode(dctx.get(), dr);
  pb::DecodeResponse dmsg;
  if (!dreader->Read(&dmsg) || !dmsg.has_reserved()) {
    dctx->TryCancel();
    const grpc::Status st = dreader->Finish();
    Forget(dctx.get());
    return WorkerError(st.ok() ? grpc::Status(grpc::StatusCode::INTERNAL, "no reservation") : st,
                       d.address, true);
  }
  // Ends the decode call (used on every early exit below).
  auto end_decode = [&] {
    dctx->TryCancel();
    const grpc::Status st = dreader->Finish();
    Forget(dctx.get());
    return st;
  };

  // 2. Prefill, first token, push.
  pb::PrefillRequest pr;
  pr.set_request_id(req_.request_id);
  pr.mutable_token_ids()->Add(req_.prompt.begin(), req_.prompt.end());
  pr.mutable_token_ids()->Add(generated_.begin(), generated_.end());
  *pr.mutable_sampling() = req_.sampling;
  pr.set_rng_draws(generated_.size());
  pr.mutable_destination()->set_address(d.address);
  pr.mutable_destination()->set_handle(handle);
  pr.set_return_logprobs(req_.logprobs);
  pr.set_top_logprobs(static_cast<uint32_t>(req_.top_logprobs));
  auto pctx = NewContext();
  registry_.Adjust(p.address, -1, consumed);
  auto preader = pstub->Prefill(pctx.get(), pr);
  pb::PrefillResponse pmsg;
  bool got_first = false, more = true;
  while (preader->Read(&pmsg)) {
    if (pmsg.has_first_token()) {
      got_first = true;
      registry_.Adjust(p.address, 0, -consumed);
      usage_.set_prefill_seconds(usage_.prefill_seconds() + pmsg.first_token().prefill_seconds());
      std::vector<const pb::PositionLogprobs*> lp;
      if (pmsg.first_token().has_logprobs()) lp.push_back(&pmsg.first_token().logprobs());
      more = Emit({static_cast<int32_t>(pmsg.first_token().token_id())}, lp);
      if (!more) break;  // finished at the first token (or the client left)
    } else if (pmsg.has_transfer()) {
      usage_.set_transfer_bytes(usage_.transfer_bytes() + pmsg.transfer().bytes());
      usage_.set_transfer_seconds(usage_.transfer_seconds() + pmsg.transfer().transfer_seconds());
    }
  }
  if (!more) {
    // Done after the first token: the decode reservation is not needed.
    pctx->TryCancel();
    preader->Finish();
    Forget(pctx.get());
    end_decode();
    return status_.ok() ? Outcome::kFinished : Outcome::kStop;
  }
  const grpc::Status pst = preader->Finish();
  Forget(pctx.get());
  if (!pst.ok()) {
    end_decode();
    if (!got_first) {
      registry_.Adjust(p.address, 0, -consumed);
      return WorkerError(pst, p.address, false);
    }
    // The first token was sent but the state did not reach the decode worker: continue
    // elsewhere from the tokens sent so far.
    return WorkerError(pst, d.address, true);
  }

  // 3. The decode stream.
  while (more && dreader->Read(&dmsg)) {
    if (dmsg.has_tokens()) {
      std::vector<int32_t> t(dmsg.tokens().token_ids().begin(), dmsg.tokens().token_ids().end());
      std::vector<const pb::PositionLogprobs*> lp;
      for (const auto& l : dmsg.tokens().logprobs()) lp.push_back(&l);
      more = Emit(t, lp);
    } else if (dmsg.has_done()) {
      if (finish_ == pb::FINISH_REASON_UNSPECIFIED) {
        finish_ = dmsg.done().reason() == pb::DECODE_FINISH_STOP ? pb::FINISH_REASON_STOP
                                                                 : pb::FINISH_REASON_LENGTH;
      }
      more = false;
    }
  }
  if (finish_ != pb::FINISH_REASON_UNSPECIFIED || !status_.ok()) {
    end_decode();
    return status_.ok() ? Outcome::kFinished : Outcome::kStop;
  }
  const grpc::Status dst = dreader->Finish();
  Forget(dctx.get());
  if (dst.ok()) {
    status_ = absl::InternalError("decode worker ended the stream without a finish");
    return Outcome::kStop;
  }
  return WorkerError(dst, d.address, true);
}

RequestFlow::Outcome RequestFlow::Attempt(const WorkerSnapshot& p, const WorkerSnapshot& d) {
  auto add_worker = [&](const std::string& a) {
    if (usage_.workers_size() == 0 || usage_.workers(usage_.workers_size() - 1) != a) {
      usage_.add_workers(a);
    }
  };
  if (p.address == d.address) {
    add_worker(d.address);
    return InPlace(d);
  }
  add_worker(p.address);
  add_worker(d.address);
  return Split(p, d);
}

void RequestFlow::WriteFinal() {
  pb::GenerateResponse msg;
  if (!sent_first_) msg.set_request_id(req_.request_id);
  // Incomplete UTF-8 at the end, then whatever the stop matcher still holds (nothing once a
  // stop string matched).
  bool stopped = false;
  std::string text = matcher_.Push(decoder_.Finish(), &stopped);
  if (!stopped) text += matcher_.Flush();
  msg.set_text(text);
  msg.set_finish_reason(finish_);
  usage_.set_completion_tokens(static_cast<uint32_t>(generated_.size()));
  usage_.set_migrations(static_cast<uint32_t>(migrations_));
  if (sent_first_) {
    usage_.set_decode_seconds(absl::ToDoubleSeconds(last_token_at_ - first_token_at_));
  }
  *msg.mutable_usage() = usage_;
  (*write_)(msg);
}

absl::Status RequestFlow::Run(const Writer& write) {
  write_ = &write;
  metrics_.prompt_tokens.Increment(static_cast<double>(req_.prompt.size()));
  for (;;) {
    const std::vector<WorkerSnapshot> workers = registry_.Healthy();
    const int di = policy_.PickDecode(workers, bad_decode_);
    int pi = -1;
    if (di >= 0) {
      // In place on a role-both decode worker when it is also the best (or only) prefill pick.
      pi = policy_.PickPrefill(workers, bad_prefill_);
    }
    if (di < 0 || pi < 0) {
      status_ = absl::UnavailableError(absl::StrCat(
          "no healthy ", di < 0 ? "decode" : "prefill", " worker can take the request",
          generated_.empty() ? "" : absl::StrCat(" (after ", generated_.size(), " tokens)")));
      metrics_.Failure("no_worker");
      break;
    }
    const Outcome o = Attempt(workers[pi], workers[di]);
    if (o == Outcome::kFinished || o == Outcome::kStop) break;
    if (o == Outcome::kRetryPrefill && ++prefill_failures_ > options_.prefill_retries) {
      status_ = absl::UnavailableError("prefill failed on every worker tried");
      metrics_.Failure("prefill_failed");
      break;
    }
    if (o == Outcome::kMigrate) {
      if (migrations_ >= options_.migration_limit) {
        status_ = absl::UnavailableError(
            absl::StrCat("the decode worker failed and the migration limit (",
                         options_.migration_limit, ") is reached"));
        metrics_.Failure("migration_limit");
        break;
      }
      ++migrations_;
      metrics_.migrations.Increment();
      Log(LogLevel::kInfo, "router", "migrating sequence",
          {{"request_id", req_.request_id},
           {"tokens_sent", generated_.size()},
           {"migration", migrations_}});
    }
  }
  if (finish_ != pb::FINISH_REASON_UNSPECIFIED && status_.ok()) {
    WriteFinal();
  } else if (sent_first_ && !status_.ok() && status_.code() != absl::StatusCode::kCancelled) {
    metrics_.Finished("error");
  }
  const absl::Time end = absl::Now();
  metrics_.e2e.Observe(absl::ToDoubleSeconds(end - received_));
  if (status_.ok()) {
    metrics_.Finished(finish_ == pb::FINISH_REASON_STOP    ? "stop"
                      : finish_ == pb::FINISH_REASON_ABORT ? "abort"
                                                           : "length");
  }
  return status_;
}

}  // namespace sambay
