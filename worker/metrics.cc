#include "worker/metrics.h"

#include <cstring>

namespace sambay {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;
using prometheus::Registry;

prometheus::Gauge& G(Registry& r, const char* name, const char* help) {
  return BuildGauge().Name(name).Help(help).Register(r).Add({});
}

prometheus::Histogram& H(Registry& r, const char* name, const char* help,
                         const Histogram::BucketBoundaries& b,
                         const std::map<std::string, std::string>& labels = {}) {
  return BuildHistogram().Name(name).Help(help).Register(r).Add(labels, b);
}

// Seconds, 1 ms .. 5 min (vLLM's request-latency style boundaries).
const Histogram::BucketBoundaries kSeconds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,  0.075,
                                              0.1,   0.25,   0.5,   0.75, 1.0,   2.5,   5.0,
                                              7.5,   10.0,   20.0,  40.0, 80.0,  160.0, 320.0};
const Histogram::BucketBoundaries kBatch = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};

}  // namespace

WorkerMetrics::WorkerMetrics(const std::string& fingerprint, const std::string& role,
                             const std::string& version)
    : registry_(std::make_shared<Registry>()),
      running(G(*registry_, "sambay_worker_running_sequences",
                "Sequences in the running decode batch.")),
      waiting(G(*registry_, "sambay_worker_waiting_sequences",
                "Sequences admitted but not decoding: queued or running prefills, reservations "
                "waiting for their state, states being pushed.")),
      slots_used(G(*registry_, "sambay_worker_slots_used", "Sequence slots in use.")),
      slots_total(G(*registry_, "sambay_worker_slots_limit", "Sequence slots (--max-running).")),
      state_used_bytes(G(*registry_, "sambay_worker_state_memory_used_bytes",
                         "State memory reserved by admitted sequences.")),
      state_total_bytes(G(*registry_, "sambay_worker_state_memory_total_bytes",
                          "State memory budget (--state-memory-mib).")),
      prefill_seconds(H(*registry_, "sambay_worker_prefill_seconds",
                        "Time from a prompt's first forward chunk to its sampled token.",
                        kSeconds)),
      decode_step_seconds(H(
          *registry_, "sambay_worker_decode_step_seconds",
          "Time of one batched decode forward: every running sequence, one token each.", kSeconds)),
      batch_size(H(*registry_, "sambay_worker_batch_size",
                   "Sequences in one forward step (decode rows plus a prefill chunk).", kBatch)),
      queue_seconds(H(*registry_, "sambay_worker_queue_seconds",
                      "Time from admission to the sequence's first forward step.", kSeconds)),
      prefill_tokens(BuildCounter()
                         .Name("sambay_worker_tokens_total")
                         .Help("Tokens run through the model, by phase.")
                         .Register(*registry_)
                         .Add({{"phase", "prefill"}})),
      decode_tokens(BuildCounter()
                        .Name("sambay_worker_tokens_total")
                        .Help("Tokens run through the model, by phase.")
                        .Register(*registry_)
                        .Add({{"phase", "decode"}})),
      sent_bytes(BuildCounter()
                     .Name("sambay_worker_state_transfer_bytes_total")
                     .Help("Sequence-state bytes moved between workers (chunk frames).")
                     .Register(*registry_)
                     .Add({{"direction", "sent"}})),
      received_bytes(BuildCounter()
                         .Name("sambay_worker_state_transfer_bytes_total")
                         .Help("Sequence-state bytes moved between workers (chunk frames).")
                         .Register(*registry_)
                         .Add({{"direction", "received"}})),
      sent_seconds(H(*registry_, "sambay_worker_state_transfer_seconds",
                     "Time of one state transfer: push start to acknowledged import (sent), "
                     "first chunk to imported state (received).",
                     kSeconds, {{"direction", "sent"}})),
      received_seconds(H(*registry_, "sambay_worker_state_transfer_seconds",
                         "Time of one state transfer: push start to acknowledged import (sent), "
                         "first chunk to imported state (received).",
                         kSeconds, {{"direction", "received"}})) {
  BuildGauge()
      .Name("sambay_worker_info")
      .Help("Static worker facts as labels; always 1.")
      .Register(*registry_)
      .Add({{"fingerprint", fingerprint}, {"role", role}, {"version", version}})
      .Set(1);
  auto& rej = BuildCounter()
                  .Name("sambay_worker_rejections_total")
                  .Help("Requests refused at admission, by reason.")
                  .Register(*registry_);
  rejections_[RejectReason::kSlots] = &rej.Add({{"reason", "slots"}});
  rejections_[RejectReason::kMemory] = &rej.Add({{"reason", "memory"}});
  rejections_[RejectReason::kDraining] = &rej.Add({{"reason", "draining"}});
  rejections_[RejectReason::kRole] = &rej.Add({{"reason", "role"}});
  auto& fin = BuildCounter()
                  .Name("sambay_worker_sequences_finished_total")
                  .Help("Sequences that left the worker, by how they ended.")
                  .Register(*registry_);
  finished_[FinishKind::kStop] = &fin.Add({{"reason", "stop"}});
  finished_[FinishKind::kLength] = &fin.Add({{"reason", "length"}});
  finished_[FinishKind::kHandedOff] = &fin.Add({{"reason", "handed_off"}});
  finished_[FinishKind::kCancelled] = &fin.Add({{"reason", "cancelled"}});
  finished_[FinishKind::kError] = &fin.Add({{"reason", "error"}});
  auto& fail = BuildCounter()
                   .Name("sambay_worker_failures_total")
                   .Help("Sequences that failed, by reason.")
                   .Register(*registry_);
  for (const char* r : kFailureReasons) failures_[r] = &fail.Add({{"reason", r}});
}

absl::StatusOr<int> WorkerMetrics::Serve(const std::string& host, int port,
                                         const MetricsHttpOptions& options) {
  return ServeMetrics(registry_, host, port, &http_, options);
}

void WorkerMetrics::Reject(RejectReason reason) { rejections_.at(reason)->Increment(); }
void WorkerMetrics::Finished(FinishKind kind) { finished_.at(kind)->Increment(); }

void WorkerMetrics::Failure(const std::string& reason) {
  auto it = failures_.find(reason);
  (it == failures_.end() ? failures_.at("internal") : it->second)->Increment();
}

const char* WorkerMetrics::FailureReasonFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kDataLoss:
      return "data_loss";
    case absl::StatusCode::kFailedPrecondition:
      return "wrong_model";
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return "invalid_state";
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
      return "peer_gone";
    case absl::StatusCode::kDeadlineExceeded:
      return "deadline";
    default:
      return "internal";
  }
}

}  // namespace sambay
