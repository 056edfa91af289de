#include "router/client_writer.h"

#include "absl/time/clock.h"
#include "common/tsan.h"

namespace sambay {

namespace pb = sambay::v1;

int64_t ClientWriter::Add(const pb::GenerateResponse& msg) {
  if (finish_called_) return 0;
  const int64_t bytes = static_cast<int64_t>(msg.ByteSizeLong());
  if (!has_pending_) {
    pending_ = msg;
    pending_bytes_ = bytes;
    has_pending_ = true;
    return pending_bytes_;
  }
  pending_bytes_ += bytes;
  // Merge: tokens, text and logprobs append; finish and usage come only in the last one.
  pending_.mutable_token_ids()->MergeFrom(msg.token_ids());
  pending_.mutable_text()->append(msg.text());
  pending_.mutable_logprobs()->MergeFrom(msg.logprobs());
  if (msg.finish_reason() != pb::FINISH_REASON_UNSPECIFIED) {
    pending_.set_finish_reason(msg.finish_reason());
  }
  if (msg.has_usage()) *pending_.mutable_usage() = msg.usage();
  return pending_bytes_;
}

bool ClientWriter::Pump(bool ended, const absl::Status& status, const std::string& request_id) {
  if (writing_ || finish_called_) return false;
  if (has_pending_) {
    if (!wrote_any_) pending_.set_request_id(request_id);
    wrote_any_ = true;
    inflight_.Swap(&pending_);
    pending_.Clear();
    has_pending_ = false;
    pending_bytes_ = 0;
    writing_ = true;
    write_started_ = absl::Now();
    client_->Write(inflight_, HandOff(write_tag_));
    return true;
  }
  if (!ended) return false;
  finish_called_ = true;
  client_->Finish(status, HandOff(finish_tag_));
  return true;
}

void ClientWriter::DropPending() {
  has_pending_ = false;
  pending_.Clear();
  pending_bytes_ = 0;
}

}  // namespace sambay
