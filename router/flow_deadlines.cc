// RequestFlow's timer (flow.h "Hangs and capacity"): every options.tick on the flow's queue it
// checks the client's pending write, the current attempt's progress and workers, renews the
// decode reservation's lease while the prefill runs, and places a parked flow again.
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "router/flow.h"
#include "sambay/v1/worker.grpc.pb.h"

namespace sambay {

namespace pb = sambay::v1;

void RequestFlow::ArmTick() {
  // After the end the timer still watches the client's last writes, until Finish went out.
  if (ticking_ || out_.finish_called()) return;
  ticking_ = true;
  ++server_pending_;
  alarm_.Set(cq_, absl::ToChronoTime(absl::Now() + options_.tick), HandOff(&tick_tag_));
}

void RequestFlow::OnTick(bool ok) {
  ticking_ = false;
  if (!ok || out_.finish_called()) return;
  const absl::Time now = absl::Now();
  if (out_.writing() && now - out_.write_started() > options_.write_timeout) {
    SlowClient(
        absl::StrCat("one write waited more than ", absl::FormatDuration(options_.write_timeout)));
    return;
  }
  if (ended_) {  // only the client's writes are left to watch
    ArmTick();
    return;
  }
  if (parked_) {
    Place();
  } else {
    CheckAttempt(now);
  }
  ArmTick();
}

void RequestFlow::CheckAttempt(absl::Time now) {
  switch (stage_) {
    case Stage::kDecoding:
    case Stage::kInPlace: {
      // In place, before the first token, the stream is still prefilling: only the probes
      // judge it then. Either way the decode worker is to blame.
      const bool streaming = stage_ == Stage::kDecoding || !inplace_first_;
      if (streaming && now - last_progress_ > options_.stall_timeout) {
        const std::string why =
            absl::StrCat("no token for ", absl::FormatDuration(options_.stall_timeout));
        registry_.ReportFailure(decode_worker_, absl::UnavailableError(why));
        AbandonAttempt(decode_worker_, true, why);
      } else if (!registry_.IsHealthy(decode_worker_)) {
        AbandonAttempt(decode_worker_, true, "taken out by the health probes");
      }
      return;
    }
    case Stage::kReserving:
    case Stage::kPrefilling:
      if (!registry_.IsHealthy(prefill_worker_)) {
        AbandonAttempt(prefill_worker_, false, "taken out by the health probes");
      } else if (!prefill_only_ && !registry_.IsHealthy(decode_worker_)) {
        AbandonAttempt(decode_worker_, true, "taken out by the health probes");
      } else if (stage_ == Stage::kPrefilling && !prefill_only_ &&
                 now - last_renew_ >= options_.lease_renew_interval) {
        last_renew_ = now;
        RenewLease();
      }
      return;
    default:
      return;
  }
}

void RequestFlow::AbandonAttempt(const std::string& worker, bool decode_side,
                                 const std::string& why) {
  Log(LogLevel::kWarning, "router", "abandoning the attempt on a hung worker",
      {{"request_id", req_.request_id}, {"worker", worker}, {"reason", why}});
  CancelCall(decode_id_);
  CancelCall(prefill_id_);
  decode_id_ = prefill_id_ = 0;
  HandleOutcome(WorkerError(grpc::Status(grpc::StatusCode::UNAVAILABLE, why), worker, decode_side));
}

void RequestFlow::RenewLease() {
  std::shared_ptr<pb::Worker::Stub> stub = registry_.Stub(decode_worker_);
  if (stub == nullptr) return;
  // Fire and forget (the callback touches only the call's own objects): a failed renewal shows
  // up as a failed push or reservation, which the attempt handles.
  struct Call {
    grpc::ClientContext ctx;
    pb::RenewLeaseRequest req;
    pb::RenewLeaseResponse resp;
  };
  auto call = std::make_shared<Call>();
  call->ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.lease_renew_interval));
  call->req.set_handle(handle_);
  stub->async()->RenewLease(&call->ctx, &call->req, &call->resp,
                            [call, stub](const grpc::Status&) {});
}

}  // namespace sambay
