// GenerationService: the public sambay.v1.Generation service of sambay-router.
//
// Generate: validates (PrepareRequest; INVALID_ARGUMENT naming the field, before any worker is
// touched), admits into a bounded queue (at most max_concurrent requests served at once and
// max_queue waiting; beyond that RESOURCE_EXHAUSTED at once; UNAVAILABLE while draining), then
// runs a RequestFlow. The request id comes from the request, else the x-request-id metadata,
// else a generated one; it is in every log line and sent to the workers.
// Abort / Tokenize / Detokenize / GetModelInfo as generate.proto documents.
//
// Ownership: borrows registry, policy, metrics, tokenizer (they outlive the server).
// Thread-safety: handlers run concurrently; shared state is under one mutex.
#ifndef SAMBAY_ROUTER_SERVICE_H_
#define SAMBAY_ROUTER_SERVICE_H_

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

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

class GenerationService final : public sambay::v1::Generation::Service {
 public:
  GenerationService(WorkerRegistry& registry, PlacementPolicy& policy, RouterMetrics& metrics,
                    const Tokenizer& tokenizer, RouterLimits limits, RouterServiceOptions options);

  grpc::Status Generate(grpc::ServerContext* ctx, const sambay::v1::GenerateRequest* req,
                        grpc::ServerWriter<sambay::v1::GenerateResponse>* writer) override;
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
  // Requests admitted or queued, not finished.
  int64_t active() const;

 private:
  // Takes a serving slot, waiting in the bounded queue if needed.
  absl::Status Enter(grpc::ServerContext* ctx);
  void Leave();

  WorkerRegistry& registry_;
  PlacementPolicy& policy_;
  RouterMetrics& metrics_;
  const Tokenizer& tokenizer_;
  const RouterLimits limits_;
  const RouterServiceOptions options_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  int64_t running_ = 0, waiting_ = 0;
  bool draining_ = false;
  std::multimap<std::string, RequestFlow*> flows_;
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_SERVICE_H_
