// HealthService: grpc.health.v1.Health (Check and Watch) as a plain synchronous service.
//
// Used instead of gRPC's default health service, which runs on gRPC's callback API: in gRPC
// 1.51 that API starts its own polling threads, which then pick up the events of a server's
// asynchronous completion queues and hand them over with a thread switch each (the router
// streams on such queues). "" is liveness; other names are set by the server (readiness).
//
// A synchronous Watch holds one of the server's threads for as long as it is open, so at most
// `max_watch_streams` are served at once; more answer RESOURCE_EXHAUSTED at once (a client
// holding many Watch streams open cannot take the threads that probes (Check) need).
//
// Ownership: owns the status table.
// Thread-safety: all methods are thread-safe. mu_ guards the status table, the shutdown flag, the
// change counter and the count of open Watch calls; Watch writes to its stream with mu_ released.
#ifndef SAMBAY_COMMON_HEALTH_SERVICE_H_
#define SAMBAY_COMMON_HEALTH_SERVICE_H_

#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace sambay {

class HealthService final : public grpc::health::v1::Health::Service {
 public:
  static constexpr int kDefaultMaxWatchStreams = 8;
  explicit HealthService(int max_watch_streams = kDefaultMaxWatchStreams)
      : max_watch_streams_(max_watch_streams) {}

  // Unknown names answer NOT_FOUND (Check) or SERVICE_UNKNOWN (Watch) until set.
  void SetServingStatus(const std::string& service, bool serving) ABSL_LOCKS_EXCLUDED(mu_);
  // Every name NOT_SERVING from now on, and open Watch calls end (call before Server::Shutdown).
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  grpc::Status Check(grpc::ServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
                     grpc::health::v1::HealthCheckResponse* resp) override ABSL_LOCKS_EXCLUDED(mu_);
  grpc::Status Watch(grpc::ServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
                     grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>* writer) override
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Watch's loop, for a call already counted in watch_streams_: sends each change of the status
  // of `service` until the stream breaks, the server shuts down or the call is cancelled. Releases
  // mu_ while it writes.
  grpc::Status WatchLoop(grpc::ServerContext* ctx, const std::string& service,
                         grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>* writer)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int max_watch_streams_;
  Mutex mu_;
  CondVar cv_;  // signalled on every change of version_
  std::map<std::string, bool> status_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;   // bumped on every change
  int watch_streams_ ABSL_GUARDED_BY(mu_) = 0;  // Watch calls being served
};

// The same statuses on a second server (the plaintext health-only port, common/server_util.h):
// a gRPC service object can be registered on one server only. Check and Watch are `target`'s.
// Ownership: does not own `target`, which must outlive it. Thread-safety: as HealthService.
class HealthMirror final : public grpc::health::v1::Health::Service {
 public:
  explicit HealthMirror(HealthService* target) : target_(target) {}
  grpc::Status Check(grpc::ServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
                     grpc::health::v1::HealthCheckResponse* resp) override {
    return target_->Check(ctx, req, resp);
  }
  grpc::Status Watch(grpc::ServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
                     grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>* writer) override {
    return target_->Watch(ctx, req, writer);
  }

 private:
  HealthService* const target_;
};

}  // namespace sambay

#endif  // SAMBAY_COMMON_HEALTH_SERVICE_H_
