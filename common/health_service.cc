#include "common/health_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace sambay {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

void HealthService::SetServingStatus(const std::string& service, bool serving) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shutdown_) return;
  auto [it, added] = status_.emplace(service, serving);
  if (!added && it->second == serving) return;
  it->second = serving;
  ++version_;
  cv_.notify_all();
}

void HealthService::Shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  shutdown_ = true;
  for (auto& [name, serving] : status_) serving = false;
  ++version_;
  cv_.notify_all();
}

grpc::Status HealthService::Check(grpc::ServerContext* ctx, const HealthCheckRequest* req,
                                  HealthCheckResponse* resp) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = status_.find(req->service());
  if (it == status_.end()) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "service: unknown name");
  }
  resp->set_status(it->second ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING);
  return grpc::Status::OK;
}

grpc::Status HealthService::Watch(grpc::ServerContext* ctx, const HealthCheckRequest* req,
                                  grpc::ServerWriter<HealthCheckResponse>* writer) {
  std::unique_lock<std::mutex> lock(mu_);
  if (watch_streams_ >= max_watch_streams_) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("Watch: ", watch_streams_,
                                     " streams are open, the most this server serves; use Check"));
  }
  ++watch_streams_;
  struct Count {
    int& n;
    ~Count() { --n; }  // runs with mu_ held: every return below holds `lock`
  } count{watch_streams_};
  uint64_t seen = ~uint64_t{0};
  HealthCheckResponse::ServingStatus last = HealthCheckResponse::UNKNOWN;
  for (;;) {
    if (version_ != seen) {
      seen = version_;
      auto it = status_.find(req->service());
      const HealthCheckResponse::ServingStatus now =
          it == status_.end() ? HealthCheckResponse::SERVICE_UNKNOWN
          : it->second        ? HealthCheckResponse::SERVING
                              : HealthCheckResponse::NOT_SERVING;
      if (now != last) {
        last = now;
        HealthCheckResponse resp;
        resp.set_status(now);
        lock.unlock();
        const bool ok = writer->Write(resp);
        lock.lock();
        if (!ok) return grpc::Status::OK;
      }
    }
    if (shutdown_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is stopping");
    if (ctx->IsCancelled()) return grpc::Status::CANCELLED;
    cv_.wait_for(lock, std::chrono::milliseconds(200));
  }
}

}  // namespace sambay
