// RouterMetrics: the router's Prometheus series (prefix sambay_router_, base units), kept by
// prometheus-cpp and served on their own port by MetricsHttpServer (common/metrics_http.h).
// Latency histograms use vLLM's bucket boundaries so existing dashboards and alerts carry over.
//
//   sambay_router_time_to_first_token_seconds      histogram  request received -> first token sent
//   sambay_router_inter_token_latency_seconds      histogram  gap between consecutive tokens
//   sambay_router_e2e_request_latency_seconds      histogram  request received -> stream ended
//   sambay_router_request_queue_time_seconds       histogram  time in the router's queue
//   sambay_router_prompt_tokens_total              counter
//   sambay_router_generation_tokens_total          counter
//   sambay_router_requests_total{finish_reason=stop|length|abort|error,api}  counter  ended streams
//   sambay_router_request_failures_total{reason=...,api}   counter  see kFailureReasons
//   sambay_router_rejections_total{reason=queue_full|invalid|draining,api}  counter
//     (api: grpc|http, the wire format the request came in; kApis)
//   sambay_router_migrations_total                 counter  sequences moved to another decode
//   worker sambay_router_running_requests / _waiting_requests  gauge
//   sambay_router_worker_up{worker,role}           gauge  1 healthy, 0 not (removed with the
//   worker)
//
// Ownership: owns the registry of series and the HTTP server. Thread-safety: all methods.
#ifndef SAMBAY_ROUTER_METRICS_H_
#define SAMBAY_ROUTER_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "common/metrics_http.h"
#include "common/mutex.h"

namespace sambay {

class RouterMetrics {
 public:
  static constexpr const char* kFailureReasons[] = {
      "no_worker", "prefill_failed", "decode_failed", "migration_limit",
      "deadline",  "cancelled",      "internal",      "slow_client"};
  static constexpr const char* kRejectReasons[] = {"queue_full", "invalid", "draining",
                                                   "unauthenticated"};
  static constexpr const char* kFinishReasons[] = {"stop", "length", "abort", "error"};
  static constexpr const char* kApis[] = {"grpc", "http"};

  RouterMetrics();
  absl::StatusOr<int> Serve(const std::string& host, int port,
                            const MetricsHttpOptions& options = {});

 private:
  std::shared_ptr<prometheus::Registry> registry_;  // first: the references below point into it

 public:
  prometheus::Histogram& ttft;
  prometheus::Histogram& itl;
  prometheus::Histogram& e2e;
  prometheus::Histogram& queue_time;
  prometheus::Counter& prompt_tokens;
  prometheus::Counter& generation_tokens;
  prometheus::Counter& migrations;
  prometheus::Gauge& running;
  prometheus::Gauge& waiting;

  // `api`: one of kApis (ClientStream::api()).
  void Finished(const std::string& finish_reason, const std::string& api);
  void Failure(const std::string& reason, const std::string& api);
  void Reject(const std::string& reason, const std::string& api);
  void WorkerUp(const std::string& address, const std::string& role, bool up);
  void WorkerRemoved(const std::string& address);

 private:
  std::unique_ptr<MetricsHttpServer> http_;         // null until Serve
  using Key = std::pair<std::string, std::string>;  // {reason, api}
  std::map<Key, prometheus::Counter*> finished_, failures_, rejections_;
  prometheus::Family<prometheus::Gauge>* worker_up_family_;
  Mutex mu_;
  std::map<std::string, prometheus::Gauge*> worker_up_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_METRICS_H_
