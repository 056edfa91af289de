// WorkerService: the sambay.v1.Worker gRPC service (proto/sambay/v1/worker.proto) on top of the
// Scheduler. Converts requests to SequenceRequests (INVALID_ARGUMENT naming the field), streams
// sequence events, runs the state export + push for Prefill and the strict import for
// PushState, and maps every absl::Status to grpc::Status in one place (common/grpc_status.h).
//
// Every handler that admits a sequence ends it on every exit path (client cancel, deadline,
// write failure, error), so slots and state memory are never leaked.
//
// Robustness: Prefill pushes only to destinations its PushAllowList admits
// (PERMISSION_DENIED naming destination.address otherwise), through a bounded LRU of channels;
// PushState streams are capped (RESOURCE_EXHAUSTED past max_push_streams, so idle senders cannot
// take the threads GetLoad needs) and bounded in time by a CallWatchdog (first chunk, then
// between chunks: DEADLINE_EXCEEDED, the reservation freed).
//
// Ownership: borrows the model, scheduler and metrics (they outlive the server); owns a cache
// of channels to peer workers and the PushState watchdog (its thread).
// Thread-safety: gRPC calls handlers concurrently from its thread pool; all shared state is in
// the (thread-safe) scheduler, metrics, channel cache and watchdog, or atomic.
#ifndef SAMBAY_WORKER_SERVICE_H_
#define SAMBAY_WORKER_SERVICE_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "common/grpc_channel.h"
#include "engine/backend.h"
#include "engine/model.h"
#include "sambay/v1/worker.grpc.pb.h"
#include "worker/call_watchdog.h"
#include "worker/metrics.h"
#include "worker/push_policy.h"
#include "worker/scheduler.h"

namespace sambay {

struct WorkerRoles {
  bool prefill = true;
  bool decode = true;
};

struct WorkerServiceOptions {
  PushAllowList push_allow = PushAllowList::Loopback();   // Prefill destinations
  size_t peer_channels = PeerChannels::kDefaultCapacity;  // cached channels to decode workers
  // PushState: the first chunk must arrive within this of the stream's start, each next chunk
  // (or the end of the stream) within push_chunk_timeout of the one before.
  absl::Duration push_first_chunk_timeout = absl::Seconds(10);
  absl::Duration push_chunk_timeout = absl::Seconds(10);
  int64_t max_push_streams = 64;  // PushState calls served at once
};

class WorkerService final : public sambay::v1::Worker::Service {
 public:
  // `engine` is the scheduler's (EngineBackend; the CPU Model or a GPU).
  WorkerService(EngineBackend& engine, Scheduler& scheduler, WorkerMetrics& metrics,
                WorkerRoles roles, RpcLimits peer_limits, std::string version,
                WorkerServiceOptions options = {});

  grpc::Status Prefill(grpc::ServerContext* ctx, const sambay::v1::PrefillRequest* req,
                       grpc::ServerWriter<sambay::v1::PrefillResponse>* writer) override;
  grpc::Status PushState(grpc::ServerContext* ctx,
                         grpc::ServerReader<sambay::v1::StateChunk>* reader,
                         sambay::v1::PushStateResponse* resp) override;
  grpc::Status Decode(grpc::ServerContext* ctx, const sambay::v1::DecodeRequest* req,
                      grpc::ServerWriter<sambay::v1::DecodeResponse>* writer) override;
  grpc::Status Release(grpc::ServerContext* ctx, const sambay::v1::ReleaseRequest* req,
                       sambay::v1::ReleaseResponse* resp) override;
  grpc::Status RenewLease(grpc::ServerContext* ctx, const sambay::v1::RenewLeaseRequest* req,
                          sambay::v1::RenewLeaseResponse* resp) override;
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

  // Prefill's destination: address and handle present, the handle's size, --push-allow.
  absl::Status CheckDestination(const sambay::v1::StateDestination& d,
                                const std::string& rid) const;
  // PushState after the first message claimed the reservation: the chunks, the import.
  grpc::Status ReceiveState(grpc::ServerContext* ctx,
                            grpc::ServerReader<sambay::v1::StateChunk>* reader,
                            std::shared_ptr<Sequence> seq, sambay::v1::StateChunk& first,
                            CallWatchdog::Timer& timer, sambay::v1::PushStateResponse* resp);

  std::atomic<int> inflight_{0};
  std::atomic<int64_t> push_streams_{0};  // PushState calls being served
  EngineBackend& model_;
  Scheduler& scheduler_;
  WorkerMetrics& metrics_;
  const WorkerRoles roles_;
  const WorkerServiceOptions options_;
  PeerChannels peers_;
  CallWatchdog watchdog_;
  const std::string version_;
};

}  // namespace sambay

#endif  // SAMBAY_WORKER_SERVICE_H_
