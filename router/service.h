// GenerationService: the public sambay.v1.Generation service of sambay-router.
//
// Generate (gRPC callback API; the RequestFlow is the call's reactor, so no thread is held per
// stream): validates (PrepareRequest; INVALID_ARGUMENT naming the field, before any worker is
// touched), admits into a bounded queue (at most max_concurrent requests served at once and
// max_queue waiting, started in arrival order as slots free; beyond that RESOURCE_EXHAUSTED at
// once; UNAVAILABLE while draining), then runs the flow. The request id comes from the request,
// else the x-request-id metadata, else a generated one; it is in every log line and sent to the
// workers. Abort / Tokenize / Detokenize / GetModelInfo (synchronous handlers) as
// generate.proto documents.
//
// Ownership: borrows registry, policy, metrics, tokenizer (they outlive the server). Holds weak
// references to the live flows (for Abort) and strong ones to the waiting flows.
// Thread-safety: handlers and flow callbacks run concurrently; shared state is under one mutex,
// never held while calling into a flow.
#ifndef SAMBAY_ROUTER_SERVICE_H_
#define SAMBAY_ROUTER_SERVICE_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "engine/tokenizer/tokenizer.h"
#include "router/flow.h"
#include "router/metrics.h"
#include "router/placement.h"
#include "router/registry.h"
#include "router/request.h"
#include "sambay/v1/generate.grpc.pb.h"

namespace sambay {

struct RouterServiceOptions {
  int64_t max_concurrent = 256;
  int64_t max_queue = 1024;
  FlowOptions flow;
};

class GenerationService final : public GenerationAsyncBase, private FlowHost {
 public:
  GenerationService(WorkerRegistry& registry, PlacementPolicy& policy, RouterMetrics& metrics,
                    const Tokenizer& tokenizer, RouterLimits limits, RouterServiceOptions options);

  // Serves Generate on these queues (added to the ServerBuilder), one thread each; call after
  // BuildAndStart.
  void Serve(std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs);
  // Call after Server::Shutdown: waits (at most `timeout`) for the flows to end, then shuts the
  // queues down and joins their threads.
  void StopServing(absl::Duration timeout);
  grpc::Status Abort(grpc::ServerContext* ctx, const sambay::v1::AbortRequest* req,
                     sambay::v1::AbortResponse* resp) override;
  grpc::Status Tokenize(grpc::ServerContext* ctx, const sambay::v1::TokenizeRequest* req,
                        sambay::v1::TokenizeResponse* resp) override;
  grpc::Status Detokenize(grpc::ServerContext* ctx, const sambay::v1::DetokenizeRequest* req,
                          sambay::v1::DetokenizeResponse* resp) override;
  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const sambay::v1::GetModelInfoRequest* req,
                            sambay::v1::ModelInfo* resp) override;

  // New Generate calls get UNAVAILABLE; running and queued ones continue.
  void StartDrain();
  // Generate calls not yet done (running, queued, or flushing their last messages).
  int64_t active() const;

 private:
  // FlowHost
  void FlowAccepted(const std::shared_ptr<RequestFlow>& flow) override;
  void FlowEnded(RequestFlow* flow) override;
  bool FlowDequeue(RequestFlow* flow) override;
  void FlowGone(RequestFlow* flow) override;
  // Starts flows without nesting one flow's start inside another's (a cascade of flows that end
  // at once, e.g. with no worker, runs as a loop, not a recursion).
  static void StartFlow(std::shared_ptr<RequestFlow> flow);
  void UpdateGauges();  // under mu_

  WorkerRegistry& registry_;
  PlacementPolicy& policy_;
  RouterMetrics& metrics_;
  const Tokenizer& tokenizer_;
  const RouterLimits limits_;
  const RouterServiceOptions options_;

  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs_;
  std::vector<std::thread> threads_;
  std::atomic<int64_t> live_flows_{0};

  mutable std::mutex mu_;
  int64_t running_ = 0;
  std::deque<std::shared_ptr<RequestFlow>> waiting_;
  bool draining_ = false;
  struct FlowRef {
    RequestFlow* flow;
    std::weak_ptr<RequestFlow> ref;
  };
  std::multimap<std::string, FlowRef> flows_;  // by request id
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_SERVICE_H_
