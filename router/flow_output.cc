// RequestFlow's side toward the client: tokens to messages (stop matching, metrics), handed to
// the coalescing ClientWriter (client_writer.h), and the end of the stream (flow.h).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "router/flow.h"

namespace sambay {

namespace pb = sambay::v1;

// ---- Streaming to the client ---------------------------------------------------------------

bool RequestFlow::Emit(const std::vector<int32_t>& ids,
                       const std::vector<const pb::PositionLogprobs*>& logprobs) {
  if (!status_.ok() || finish_ != pb::FINISH_REASON_UNSPECIFIED) return false;
  pb::GenerateResponse msg;
  std::string text;
  bool stopped = false;
  int added = 0;
  for (size_t i = 0; i < ids.size() && !stopped; ++i) {
    const int32_t id = ids[i];
    if (static_cast<int64_t>(generated_.size()) >= req_.max_new_tokens) break;
    generated_.push_back(id);
    ++added;
    msg.add_token_ids(static_cast<uint32_t>(id));
    if (req_.logprobs && i < logprobs.size() && logprobs[i] != nullptr) {
      *msg.add_logprobs() = *logprobs[i];
    }
    if (special_ids_.count(id) == 0) {
      auto piece = decoder_.Push(id);
      if (piece.ok()) text += matcher_->Push(*piece, &stopped);
    }
    if (stopped || std::count(req_.stop_ids.begin(), req_.stop_ids.end(), id) > 0) {
      finish_ = pb::FINISH_REASON_STOP;
      stopped = true;
    } else if (static_cast<int64_t>(generated_.size()) >= req_.max_new_tokens) {
      finish_ = pb::FINISH_REASON_LENGTH;
    }
  }
  msg.set_text(std::move(text));
  const absl::Time now = absl::Now();
  if (!sent_first_) {
    first_token_at_ = now;
    metrics_.ttft.Observe(absl::ToDoubleSeconds(now - received_));
    usage_.set_time_to_first_token_seconds(absl::ToDoubleSeconds(now - received_));
  } else if (added > 0) {
    // Several tokens in one message arrived together: count each gap once.
    const double gap = absl::ToDoubleSeconds(now - last_token_at_) / added;
    for (int i = 0; i < added; ++i) metrics_.itl.Observe(gap);
  }
  sent_first_ = true;
  last_token_at_ = now;
  metrics_.generation_tokens.Increment(added);
  Queue(msg);
  return finish_ == pb::FINISH_REASON_UNSPECIFIED && status_.ok();
}

void RequestFlow::Queue(const pb::GenerateResponse& msg) {
  const int64_t pending = out_.Add(msg);
  if (pending > options_.max_pending_output_bytes && out_.writing() && !ended_) {
    SlowClient(absl::StrCat("more than ", options_.max_pending_output_bytes,
                            " bytes of output wait for the client to read them"));
    return;
  }
  PumpWrites();
}

void RequestFlow::SlowClient(const std::string& why) {
  // Once: after the cut, the write in flight returns only when the cancel reaches it, and a tick
  // (or another queued message) may come first.
  if (cut_off_) return;
  cut_off_ = true;
  status_ = absl::ResourceExhaustedError(absl::StrCat("the client reads too slowly: ", why));
  metrics_.Failure("slow_client", client_->api());
  Log(LogLevel::kWarning, "router", "client cut off",
      {{"request_id", req_.request_id}, {"reason", why}});
  out_.DropPending();
  CancelAll();
  decode_id_ = prefill_id_ = 0;
  // The write in flight returns (false) once the call is cancelled; then Finish goes out.
  client_->Cancel();
  End();
}

void RequestFlow::PumpWrites() {
  if (!out_.Pump(ended_, status_, req_.request_id)) return;
  ++server_pending_;
  if (out_.finish_called() && ticking_) alarm_.Cancel();  // nothing left to watch
}

void RequestFlow::OnWriteDone(bool ok) {
  out_.WriteDone();
  if (!ok && !ended_) {
    // The client is gone: stop the workers and end.
    status_ = absl::CancelledError("the client went away");
    metrics_.Failure("cancelled", client_->api());
    out_.DropPending();
    CancelAll();
    decode_id_ = prefill_id_ = 0;
    End();
    return;
  }
  if (!ok) out_.DropPending();
  PumpWrites();
}

void RequestFlow::End() {
  if (ended_) return;
  ended_ = true;
  stage_ = Stage::kEnded;
  parked_ = false;
  CancelAll();
  if (finish_ != pb::FINISH_REASON_UNSPECIFIED && status_.ok()) {
    pb::GenerateResponse msg;
    // Incomplete UTF-8 at the end, then whatever the stop matcher still holds (nothing once a
    // stop string matched).
    bool stopped = false;
    std::string text = matcher_->Push(decoder_.Finish(), &stopped);
    if (!stopped) text += matcher_->Flush();
    msg.set_text(text);
    msg.set_finish_reason(finish_);
    usage_.set_completion_tokens(static_cast<uint32_t>(generated_.size()));
    usage_.set_migrations(static_cast<uint32_t>(migrations_));
    if (sent_first_) {
      usage_.set_decode_seconds(absl::ToDoubleSeconds(last_token_at_ - first_token_at_));
    }
    *msg.mutable_usage() = usage_;
    Queue(msg);
  } else if (sent_first_ && !status_.ok() && status_.code() != absl::StatusCode::kCancelled) {
    metrics_.Finished("error", client_->api());
  }
  if (started_) {
    metrics_.e2e.Observe(absl::ToDoubleSeconds(absl::Now() - received_));
    if (status_.ok()) {
      metrics_.Finished(finish_ == pb::FINISH_REASON_STOP    ? "stop"
                        : finish_ == pb::FINISH_REASON_ABORT ? "abort"
                                                             : "length",
                        client_->api());
    }
  }
  // Rejected calls were logged by the admission (and have no request id yet when invalid).
  if (started_)
    Log(status_.ok() ? LogLevel::kDebug : LogLevel::kWarning, "router", "request ended",
        {{"request_id", req_.request_id},
         {"owner", req_.owner},
         {"status", status_.ToString()},
         {"tokens", generated_.size()},
         {"seconds", absl::ToDoubleSeconds(absl::Now() - received_)}});
  PumpWrites();
  if (started_) host_.FlowEnded(this);  // last: it may start the next queued flow
}

}  // namespace sambay
