// common/health_service (the router's synchronous grpc.health.v1 service) and the call-cap
// interceptor of common/server_util, in process: Watch streams held open never take the
// threads Check needs.
#include "common/health_service.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/server_util.h"
#include "gtest/gtest.h"

namespace sambay {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

constexpr int kThreads = 16;  // the server's thread cap
constexpr int kFlood = 100;

class HealthFloodTest : public ::testing::Test {
 protected:
  // A sync server with HealthService(max_watch) and, when `cap` > 0, Watch also capped by the
  // call-cap interceptor.
  void StartServer(int max_watch, int cap) {
    health_ = std::make_unique<HealthService>(max_watch);
    health_->SetServingStatus("", true);
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(health_.get());
    grpc::ResourceQuota quota("health-test");
    quota.SetMaxThreads(kThreads);
    b.SetResourceQuota(quota);
    if (cap > 0) {
      std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> c;
      c.push_back(MakeCallCapInterceptor({{"/grpc.health.v1.Health/Watch", cap}}));
      b.experimental().SetInterceptorCreators(std::move(c));
    }
    server_ = b.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = Health::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    for (auto& c : ctxs_) c->TryCancel();
    for (auto& w : watches_) w->Finish();
    if (health_) health_->Shutdown();
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }
  // Opens n Watch streams; returns how many answered SERVING first, and the codes of the others.
  int OpenWatches(int n, std::vector<grpc::StatusCode>* refused) {
    int serving = 0;
    for (int i = 0; i < n; ++i) {
      ctxs_.push_back(std::make_unique<grpc::ClientContext>());
      ctxs_.back()->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      HealthCheckRequest req;
      watches_.push_back(stub_->Watch(ctxs_.back().get(), req));
      HealthCheckResponse resp;
      if (watches_.back()->Read(&resp)) {
        ++serving;
      } else {
        refused->push_back(watches_.back()->Finish().error_code());
        watches_.pop_back();
        ctxs_.pop_back();
      }
    }
    return serving;
  }
  grpc::Status Check() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    HealthCheckRequest req;
    HealthCheckResponse resp;
    return stub_->Check(&ctx, req, &resp);
  }

  std::unique_ptr<HealthService> health_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Health::Stub> stub_;
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs_;
  std::vector<std::unique_ptr<grpc::ClientReader<HealthCheckResponse>>> watches_;
};

TEST_F(HealthFloodTest, WatchStreamsAreCappedAndCheckStillAnswers) {
  StartServer(HealthService::kDefaultMaxWatchStreams, 0);
  std::vector<grpc::StatusCode> refused;
  EXPECT_EQ(OpenWatches(kFlood, &refused), HealthService::kDefaultMaxWatchStreams);
  ASSERT_EQ(refused.size(), static_cast<size_t>(kFlood - HealthService::kDefaultMaxWatchStreams));
  for (grpc::StatusCode c : refused) EXPECT_EQ(c, grpc::StatusCode::RESOURCE_EXHAUSTED);
  for (int i = 0; i < 20; ++i) {
    grpc::Status st = Check();
    EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  }
  // A closed stream frees its place.
  ctxs_.front()->TryCancel();
  watches_.front()->Finish();
  ctxs_.erase(ctxs_.begin());
  watches_.erase(watches_.begin());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the handler sees the cancel
  refused.clear();
  EXPECT_EQ(OpenWatches(1, &refused), 1);
}

TEST_F(HealthFloodTest, CallCapInterceptorCancelsCallsPastTheCap) {
  StartServer(1000, 3);
  std::vector<grpc::StatusCode> refused;
  EXPECT_EQ(OpenWatches(kFlood, &refused), 3);
  ASSERT_EQ(refused.size(), static_cast<size_t>(kFlood - 3));
  for (grpc::StatusCode c : refused) EXPECT_EQ(c, grpc::StatusCode::CANCELLED);
  for (int i = 0; i < 20; ++i) EXPECT_TRUE(Check().ok());
}

}  // namespace
}  // namespace sambay
