#include "common/health_service.h"

#include "absl/strings/str_cat.h"

namespace sambay {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

void HealthService::SetServingStatus(const std::string& service, bool serving) {
  MutexLock lock(&mu_);
  if (shutdown_) return;
  auto [it, added] = status_.emplace(service, serving);
  if (!added && it->second == serving) return;
  it->second = serving;
  ++version_;
  cv_.SignalAll();
}

void HealthService::Shutdown() {
  MutexLock lock(&mu_);
  shutdown_ = true;
  for (auto& [name, serving] : status_) serving = false;
  ++version_;
  cv_.SignalAll();
}

grpc::Status HealthService::Check(grpc::ServerContext* ctx, const HealthCheckRequest* req,
                                  HealthCheckResponse* resp) {
  MutexLock lock(&mu_);
  auto it = status_.find(req->service());
  if (it == status_.end()) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "service: unknown name");
  }
  resp->set_status(it->second ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING);
  return grpc::Status::OK;
}

grpc::Status HealthService::Watch(grpc::ServerContext* ctx, const HealthCheckRequest* req,
                                  grpc::ServerWriter<HealthCheckResponse>* writer) {
  MutexLock lock(&mu_);
  if (watch_streams_ >= max_watch_streams_) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("Watch: ", watch_streams_,
                                     " streams are open, the most this server serves; use Check"));
  }
  ++watch_streams_;
  grpc::Status status = WatchLoop(ctx, req->service(), writer);
  --watch_streams_;
  return status;
}

grpc::Status HealthService::WatchLoop(grpc::ServerContext* ctx, const std::string& service,
                                      grpc::ServerWriter<HealthCheckResponse>* writer) {
  uint64_t seen = ~uint64_t{0};
  HealthCheckResponse::ServingStatus last = HealthCheckResponse::UNKNOWN;
  for (;;) {
    if (version_ != seen) {
      seen = version_;
      auto it = status_.find(service);
      const HealthCheckResponse::ServingStatus now =
          it == status_.end() ? HealthCheckResponse::SERVICE_UNKNOWN
          : it->second        ? HealthCheckResponse::SERVING
                              : HealthCheckResponse::NOT_SERVING;
      if (now != last) {
        last = now;
        HealthCheckResponse resp;
        resp.set_status(now);
        mu_.Unlock();
        const bool ok = writer->Write(resp);
        mu_.Lock();
        if (!ok) return grpc::Status::OK;
      }
    }
    if (shutdown_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is stopping");
    if (ctx->IsCancelled()) return grpc::Status::CANCELLED;
    cv_.WaitWithTimeout(&mu_, absl::Milliseconds(200));
  }
}

}  // namespace sambay
