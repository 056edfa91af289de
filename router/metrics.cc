#include "router/metrics.h"

namespace sambay {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

// vLLM's boundaries (vllm/v1/metrics/loggers.py).
const Histogram::BucketBoundaries kTtft = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                           0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                           20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
const Histogram::BucketBoundaries kItl = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                          0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
const Histogram::BucketBoundaries kRequest = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                              5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                              60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

Histogram& H(prometheus::Registry& r, const char* name, const char* help,
             const Histogram::BucketBoundaries& b) {
  return BuildHistogram().Name(name).Help(help).Register(r).Add({}, b);
}

}  // namespace

RouterMetrics::RouterMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      ttft(H(*registry_, "sambay_router_time_to_first_token_seconds",
             "Time from receiving a request to sending its first token.", kTtft)),
      itl(H(*registry_, "sambay_router_inter_token_latency_seconds",
            "Time between consecutive tokens sent on a stream.", kItl)),
      e2e(H(*registry_, "sambay_router_e2e_request_latency_seconds",
            "Time from receiving a request to the end of its stream.", kRequest)),
      queue_time(H(*registry_, "sambay_router_request_queue_time_seconds",
                   "Time a request waited in the router's queue.", kRequest)),
      prompt_tokens(BuildCounter()
                        .Name("sambay_router_prompt_tokens_total")
                        .Help("Prompt tokens of admitted requests.")
                        .Register(*registry_)
                        .Add({})),
      generation_tokens(BuildCounter()
                            .Name("sambay_router_generation_tokens_total")
                            .Help("Tokens streamed to clients.")
                            .Register(*registry_)
                            .Add({})),
      migrations(BuildCounter()
                     .Name("sambay_router_migrations_total")
                     .Help("Sequences moved to another decode worker after a failure.")
                     .Register(*registry_)
                     .Add({})),
      running(BuildGauge()
                  .Name("sambay_router_running_requests")
                  .Help("Requests being served by workers.")
                  .Register(*registry_)
                  .Add({})),
      waiting(BuildGauge()
                  .Name("sambay_router_waiting_requests")
                  .Help("Requests in the router's queue.")
                  .Register(*registry_)
                  .Add({})) {
  auto& fin = BuildCounter()
                  .Name("sambay_router_requests_total")
                  .Help("Finished requests by finish reason.")
                  .Register(*registry_);
  for (const char* api : kApis) {
    for (const char* r : kFinishReasons)
      finished_[{r, api}] = &fin.Add({{"finish_reason", r}, {"api", api}});
  }
  auto& fail = BuildCounter()
                   .Name("sambay_router_request_failures_total")
                   .Help("Requests that ended with an error status, by reason.")
                   .Register(*registry_);
  for (const char* api : kApis) {
    for (const char* r : kFailureReasons)
      failures_[{r, api}] = &fail.Add({{"reason", r}, {"api", api}});
  }
  auto& rej = BuildCounter()
                  .Name("sambay_router_rejections_total")
                  .Help("Requests refused before reaching a worker, by reason.")
                  .Register(*registry_);
  for (const char* api : kApis) {
    for (const char* r : kRejectReasons)
      rejections_[{r, api}] = &rej.Add({{"reason", r}, {"api", api}});
  }
  worker_up_family_ = &BuildGauge()
                           .Name("sambay_router_worker_up")
                           .Help("1 if the worker is healthy and serving the cluster's model.")
                           .Register(*registry_);
}

absl::StatusOr<int> RouterMetrics::Serve(const std::string& host, int port,
                                         const MetricsHttpOptions& options) {
  return ServeMetrics(registry_, host, port, &http_, options);
}

void RouterMetrics::Finished(const std::string& r, const std::string& api) {
  auto it = finished_.find({r, api});
  if (it != finished_.end()) it->second->Increment();
}
void RouterMetrics::Failure(const std::string& r, const std::string& api) {
  auto it = failures_.find({r, api});
  if (it == failures_.end()) it = failures_.find({"internal", api});
  if (it != failures_.end()) it->second->Increment();
}
void RouterMetrics::Reject(const std::string& r, const std::string& api) {
  auto it = rejections_.find({r, api});
  if (it != rejections_.end()) it->second->Increment();
}

void RouterMetrics::WorkerUp(const std::string& address, const std::string& role, bool up) {
  MutexLock lock(&mu_);
  auto& g = worker_up_[address];
  if (g == nullptr) g = &worker_up_family_->Add({{"worker", address}, {"role", role}});
  g->Set(up ? 1 : 0);
}

void RouterMetrics::WorkerRemoved(const std::string& address) {
  MutexLock lock(&mu_);
  auto it = worker_up_.find(address);
  if (it == worker_up_.end()) return;
  worker_up_family_->Remove(it->second);
  worker_up_.erase(it);
}

}  // namespace sambay
