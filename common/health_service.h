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
// Thread-safety: all methods are thread-safe.
#ifndef SAMBAY_COMMON_HEALTH_SERVICE_H_
#define SAMBAY_COMMON_HEALTH_SERVICE_H_

#include <condition_variable>
#include <map>
#include <mutex>
#include <string>

#include "grpc/health/v1/health.grpc.pb.h"

namespace sambay {

class HealthService final : public grpc::health::v1::Health::Service {
 public:
  static constexpr int kDefaultMaxWatchStreams = 8;
  explicit HealthService(int max_watch_streams = kDefaultMaxWatchStreams)
      : max_watch_streams_(max_watch_streams) {}

  // Unknown names answer NOT_FOUND (Check) or SERVICE_UNKNOWN (Watch) until set.
  void SetServingStatus(const std::string& service, bool serving);
  // Every name NOT_SERVING from now on, and open Watch calls end (call before Server::Shutdown).
  void Shutdown();

  grpc::Status Check(grpc::ServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
                     grpc::health::v1::HealthCheckResponse* resp) override;
  grpc::Status Watch(grpc::ServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
                     grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>* writer) override;

 private:
  const int max_watch_streams_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, bool> status_;  // guarded by mu_
  bool shutdown_ = false;               // guarded by mu_
  uint64_t version_ = 0;                // guarded by mu_; bumped on every change
  int watch_streams_ = 0;               // guarded by mu_; Watch calls being served
};

}  // namespace sambay

#endif  // SAMBAY_COMMON_HEALTH_SERVICE_H_
