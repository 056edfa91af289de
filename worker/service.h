// WorkerService: the sambay.v1.Worker gRPC service (proto/sambay/v1/worker.proto) on top of the
// Scheduler. Converts requests to SequenceRequests (INVALID_ARGUMENT naming the field), streams
// sequence events, runs the state export + push for Prefill and the strict import for
// PushState, and maps every absl::Status to grpc::Status in one place (common/grpc_status.h).
//
// Every handler that admits a sequence ends it on every exit path (client cancel, deadline,
// write failure, error), so slots and state memory are never leaked.
//
// Ownership: borrows the model, scheduler and metrics (they outlive the server); owns a cache
// of channels to peer workers.
// Thread-safety: gRPC calls handlers concurrently from its thread pool; all shared state is in
// the (thread-safe) scheduler, metrics and channel cache.
#ifndef SAMBAY_WORKER_SERVICE_H_
#define SAMBAY_WORKER_SERVICE_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "common/grpc_channel.h"
#include "engine/model.h"
#include "sambay/v1/worker.grpc.pb.h"
#include "worker/engine_backend.h"
#include "worker/metrics.h"
#include "worker/scheduler.h"

namespace sambay {

struct WorkerRoles {
  bool prefill = true;
  bool decode = true;
};

class WorkerService final : public sambay::v1::Worker::Service {
 public:
  // `engine` is the scheduler's (EngineBackend; the CPU Model or a GPU).
  WorkerService(EngineBackend& engine, Scheduler& scheduler, WorkerMetrics& metrics,
                WorkerRoles roles, RpcLimits peer_limits, std::string version);

  grpc::Status Prefill(grpc::ServerContext* ctx, const sambay::v1::PrefillRequest* req,
                       grpc::ServerWriter<sambay::v1::PrefillResponse>* writer) override;
  grpc::Status PushState(grpc::ServerContext* ctx,
                         grpc::ServerReader<sambay::v1::StateChunk>* reader,
                         sambay::v1::PushStateResponse* resp) override;
  grpc::Status Decode(grpc::ServerContext* ctx, const sambay::v1::DecodeRequest* req,
                      grpc::ServerWriter<sambay::v1::DecodeResponse>* writer) override;
  grpc::Status Release(grpc::ServerContext* ctx, const sambay::v1::ReleaseRequest* req,
                       sambay::v1::ReleaseResponse* resp) override;
  grpc::Status GetLoad(grpc::ServerContext* ctx, const sambay::v1::GetLoadRequest* req,
                       sambay::v1::WorkerLoad* resp) override;
  grpc::Status GetInfo(grpc::ServerContext* ctx, const sambay::v1::GetInfoRequest* req,
                       sambay::v1::WorkerInfo* resp) override;

  // Prefill, PushState and Decode calls running now (the drain waits for them).
  int inflight() const { return inflight_.load(); }

 private:
  // Counts a streaming call for its whole duration.
  class CallScope {
   public:
    explicit CallScope(std::atomic<int>& n) : n_(n) { n_.fetch_add(1); }
    ~CallScope() { n_.fetch_sub(1); }

   private:
    std::atomic<int>& n_;
  };

  std::atomic<int> inflight_{0};
  EngineBackend& model_;
  Scheduler& scheduler_;
  WorkerMetrics& metrics_;
  const WorkerRoles roles_;
  ChannelCache peers_;
  const std::string version_;
};

}  // namespace sambay

#endif  // SAMBAY_WORKER_SERVICE_H_
