// WorkerMetrics: the worker's Prometheus series (prefix sambay_worker_, base units), kept by
// prometheus-cpp and served on its own port by MetricsHttpServer (common/metrics_http.h).
//
// Series (labels in braces):
//   sambay_worker_info{fingerprint,role,version}          gauge, always 1
//   sambay_worker_running_sequences                         gauge  sequences in the decode batch
//   sambay_worker_waiting_sequences                         gauge  admitted, not decoding yet
//   sambay_worker_slots_used / _slots_limit                 gauge  admitted sequences / limit
//   sambay_worker_state_memory_used_bytes / _total_bytes    gauge  reserved state memory / budget
//   sambay_worker_prefill_seconds                           histogram  one prompt's prefill
//   sambay_worker_decode_step_seconds                       histogram  one batched forward step
//   sambay_worker_batch_size                                histogram  sequences per step
//   sambay_worker_queue_seconds                             histogram  admission -> first forward
//   sambay_worker_tokens_total{phase=prefill|decode}        counter    tokens run through the model
//   sambay_worker_state_transfer_bytes_total{direction=sent|received}  counter
//   sambay_worker_state_transfer_seconds{direction=sent|received}      histogram
//   sambay_worker_sequences_finished_total{reason=stop|length|handed_off|cancelled|error}
//   sambay_worker_rejections_total{reason=slots|memory|draining|role}  counter
//   sambay_worker_failures_total{reason=...}                counter  (see kFailureReasons)
//
// Ownership: owns its registry and the HTTP server (if started), which shares the registry.
// Thread-safety: every method may be called from any thread (prometheus-cpp metrics are atomic;
// label children are created once in the constructor).
#ifndef SAMBAY_WORKER_METRICS_H_
#define SAMBAY_WORKER_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/metrics_http.h"

namespace sambay {

enum class RejectReason { kSlots, kMemory, kDraining, kRole };
enum class FinishKind { kStop, kLength, kHandedOff, kCancelled, kError };

class WorkerMetrics {
 public:
  // Failure reasons (label values): a failure is counted once per sequence.
  static constexpr const char* kFailureReasons[] = {"data_loss",     "wrong_model", "invalid_state",
                                                    "lease_expired", "peer_gone",   "push_failed",
                                                    "deadline",      "internal"};

  WorkerMetrics(const std::string& fingerprint, const std::string& role,
                const std::string& version);

  // Serves /metrics on host:port (port 0 = any free port). Returns the bound port.
  absl::StatusOr<int> Serve(const std::string& host, int port,
                            const MetricsHttpOptions& options = {});

  prometheus::Registry& registry() { return *registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;  // first: the references below point into it

 public:
  prometheus::Gauge& running;
  prometheus::Gauge& waiting;
  prometheus::Gauge& slots_used;
  prometheus::Gauge& slots_total;
  prometheus::Gauge& state_used_bytes;
  prometheus::Gauge& state_total_bytes;
  prometheus::Histogram& prefill_seconds;
  prometheus::Histogram& decode_step_seconds;
  prometheus::Histogram& batch_size;
  prometheus::Histogram& queue_seconds;
  prometheus::Counter& prefill_tokens;
  prometheus::Counter& decode_tokens;
  prometheus::Counter& sent_bytes;
  prometheus::Counter& received_bytes;
  prometheus::Histogram& sent_seconds;
  prometheus::Histogram& received_seconds;

  void Reject(RejectReason reason);
  void Finished(FinishKind kind);
  // `reason` must be one of kFailureReasons (else counted as "internal").
  void Failure(const std::string& reason);
  // Maps an import/transfer status to a failure reason.
  static const char* FailureReasonFor(const absl::Status& status);

 private:
  std::unique_ptr<MetricsHttpServer> http_;  // null until Serve
  std::map<RejectReason, prometheus::Counter*> rejections_;
  std::map<FinishKind, prometheus::Counter*> finished_;
  std::map<std::string, prometheus::Counter*> failures_;
};

}  // namespace sambay

#endif  // SAMBAY_WORKER_METRICS_H_
