// GenerationService: the public sambay.v1.Generation service of sambay-router.
//
// Generate (gRPC's asynchronous completion-queue API; each call is a RequestFlow driven by the
// tags its queue returns, so no thread is held per stream): the RequestPreparer (preparer.h)
// gives the call its request id and validates and tokenizes it (INVALID_ARGUMENT naming the
// field, before any worker is touched; a large prompt on the preparer's pool, after which the
// admission continues on the flow's queue). The service only admits: into a bounded queue (at
// most max_concurrent requests served at once and max_queue waiting, started in arrival order as
// slots free; beyond that RESOURCE_EXHAUSTED at once; UNAVAILABLE while draining), then the flow
// runs. The request id is in every log line and sent to the workers. Abort / Tokenize / Detokenize
// / GetModelInfo (synchronous handlers) as generate.proto documents. Abort reaches only the
// requests of the same owner: the API key's name when --api-keys-file is set (router/api_keys.h;
// every method then needs a key), else the caller (common/peer_identity.h); for anyone else's
// request it answers as for an unknown id, so ids cannot be probed.
//
// Ownership: borrows registry, policy, metrics, tokenizer (they outlive the server). Holds weak
// references to the live flows (for Abort), strong ones to the waiting flows, and the preparer
// (destroyed first, which drops the prompts not yet tokenized).
// Thread-safety: handlers and flow callbacks run concurrently. mu_ guards the admission state
// (running_, waiting_, draining_) and the flow tables (flows_, preparing_); it is never held
// while calling into a flow, except for SetPrepared (FlowGone reads the request id it writes).
#ifndef SAMBAY_ROUTER_SERVICE_H_
#define SAMBAY_ROUTER_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "router/api_keys.h"
#include "router/flow.h"
#include "router/metrics.h"
#include "router/placement.h"
#include "router/preparer.h"
#include "router/registry.h"
#include "router/request.h"
#include "sambay/v1/generate.grpc.pb.h"
#include "tokenizer/tokenizer.h"

namespace sambay {

struct RouterServiceOptions {
  int64_t max_concurrent = 256;
  int64_t max_queue = 1024;
  FlowOptions flow;
  // With keys, every method needs one (UNAUTHENTICATED otherwise) and a request's owner is
  // "key:NAME"; null = no keys, the owner is the peer. Borrowed: outlives the service.
  const ApiKeys* api_keys = nullptr;
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
                     sambay::v1::AbortResponse* resp) override ABSL_LOCKS_EXCLUDED(mu_);
  grpc::Status Tokenize(grpc::ServerContext* ctx, const sambay::v1::TokenizeRequest* req,
                        sambay::v1::TokenizeResponse* resp) override;
  grpc::Status Detokenize(grpc::ServerContext* ctx, const sambay::v1::DetokenizeRequest* req,
                          sambay::v1::DetokenizeResponse* resp) override;
  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const sambay::v1::GetModelInfoRequest* req,
                            sambay::v1::ModelInfo* resp) override;

  // A request that arrived another way (HTTP): its flow runs on one of the serving queues
  // (round robin) and is admitted as a gRPC call is. Call after Serve, before StopServing.
  void Submit(std::unique_ptr<ClientStream> client, sambay::v1::GenerateRequest request);

  // The owner of a call with this authorization value from `peer` (common/peer_identity.h):
  // "key:NAME" with API keys, UNAUTHENTICATED without a valid one; `peer` without keys.
  absl::StatusOr<std::string> Authenticate(absl::string_view authorization, std::string peer) const;

  // New Generate calls get UNAVAILABLE; running and queued ones continue.
  void StartDrain() ABSL_LOCKS_EXCLUDED(mu_);
  bool draining() const ABSL_LOCKS_EXCLUDED(mu_);
  // Generate calls not yet done (being tokenized, running, queued, or flushing their last
  // messages).
  int64_t active() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // FlowHost
  void FlowAccepted(const std::shared_ptr<RequestFlow>& flow) override ABSL_LOCKS_EXCLUDED(mu_);
  void FlowEnded(RequestFlow* flow) override ABSL_LOCKS_EXCLUDED(mu_);
  bool FlowDequeue(RequestFlow* flow) override ABSL_LOCKS_EXCLUDED(mu_);
  void FlowGone(RequestFlow* flow) override ABSL_LOCKS_EXCLUDED(mu_);
  // Starts flows without nesting one flow's start inside another's (a cascade of flows that end
  // at once, e.g. with no worker, runs as a loop, not a recursion).
  static void StartFlow(std::shared_ptr<RequestFlow> flow);
  void UpdateGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Admits a prepared flow (or rejects it). `pooled`: it was prepared on the pool, and is
  // dropped if gRPC finished with it meanwhile (FlowGone). On the flow's queue.
  void Admit(const std::shared_ptr<RequestFlow>& flow, Preparation prepared, bool pooled,
             std::string caller) ABSL_LOCKS_EXCLUDED(mu_);
  // Authenticate for a synchronous handler: the owner, or the status to answer. A null ctx is an
  // in-process call (the HTTP API's, which authenticated its request itself).
  absl::StatusOr<std::string> CallerOf(const grpc::ServerContext* ctx) const;

  WorkerRegistry& registry_;
  PlacementPolicy& policy_;
  RouterMetrics& metrics_;
  const Tokenizer& tokenizer_;
  const RouterLimits limits_;
  const RouterServiceOptions options_;

  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs_;
  std::vector<std::thread> threads_;
  FlowDeps deps_;                     // set by Serve
  std::atomic<uint64_t> next_cq_{0};  // Submit's round robin
  std::atomic<int64_t> live_flows_{0};

  mutable Mutex mu_;
  int64_t running_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<std::shared_ptr<RequestFlow>> waiting_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  struct FlowRef {
    RequestFlow* flow;
    std::weak_ptr<RequestFlow> ref;
    std::string caller;  // the Generate call's owner (Authenticate)
  };
  std::multimap<std::string, FlowRef> flows_ ABSL_GUARDED_BY(mu_);  // by request id
  // Accepted, prompt being prepared on preparer_'s pool.
  std::set<RequestFlow*> preparing_ ABSL_GUARDED_BY(mu_);

  // Last member: destroyed (its pool joined) first, while what its tasks use still exists.
  RequestPreparer preparer_{tokenizer_, limits_};
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_SERVICE_H_
