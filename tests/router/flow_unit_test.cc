// RequestFlow in process: a real gRPC server and completion queue in the test, the flow's host
// faked, so that an exact interleaving of host and client events can be forced (no worker
// process is needed for what is checked here).
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "router/flow.h"
#include "router/metrics.h"
#include "router/placement.h"
#include "router/registry.h"
#include "tests/router/router_harness.h"
#include "tokenizer/tokenizer.h"

namespace sambay {
namespace {

namespace v1 = sambay::v1;

// Records what the flow asks of its host. FlowDequeue answers false: the host already took the
// flow off its queue to start it (the moment the race is about).
class FakeHost : public FlowHost {
 public:
  void FlowAccepted(const std::shared_ptr<RequestFlow>& flow) override {
    PreparedRequest p;
    p.request_id = "unit-1";
    p.prompt = {1, 2, 3};
    p.max_new_tokens = 4;
    flow->SetPrepared(p);
    std::lock_guard<std::mutex> lock(mu);
    accepted.push_back(flow);
  }
  void FlowEnded(RequestFlow*) override { ++ended; }
  bool FlowDequeue(RequestFlow*) override {
    ++dequeues;
    return false;
  }
  void FlowGone(RequestFlow*) override { ++gone; }

  std::mutex mu;
  std::vector<std::shared_ptr<RequestFlow>> accepted;
  std::atomic<int> ended{0}, dequeues{0}, gone{0};
};

class FlowUnitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_ = testing::TinyTokenizer();
    ASSERT_NE(tokenizer_, nullptr);
    auto policy = MakePlacementPolicy("least-loaded");
    ASSERT_TRUE(policy.ok());
    policy_ = *std::move(policy);
    registry_ = std::make_unique<WorkerRegistry>(RegistryOptions{}, &metrics_);  // no workers
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service_);
    cq_ = builder.AddCompletionQueue();
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    FlowDeps deps;
    deps.host = &host_;
    deps.registry = registry_.get();
    deps.policy = policy_.get();
    deps.metrics = &metrics_;
    deps.tokenizer = tokenizer_.get();
    deps.service = &service_;
    RequestFlow::Listen(deps, cq_.get());
    poller_ = std::thread([this] {
      void* tag;
      bool ok;
      while (cq_->Next(&tag, &ok)) RequestFlow::Dispatch(tag, ok);
    });
    stub_ = v1::Generation::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    host_.accepted.clear();
    if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now()));
    if (cq_ != nullptr) cq_->Shutdown();
    if (poller_.joinable()) poller_.join();
  }

  RouterMetrics metrics_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<PlacementPolicy> policy_;
  std::unique_ptr<WorkerRegistry> registry_;
  GenerationAsyncBase service_;
  FakeHost host_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::unique_ptr<grpc::Server> server_;
  std::thread poller_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

// The client cancels while the host is taking the queued flow off its queue to start it: the
// flow ends as cancelled (its FlowDequeue finds nothing), then the host's Start arrives. The
// serving slot the host gave it must come back (FlowEnded), or the router slowly stops serving.
TEST_F(FlowUnitTest, StartAfterTheClientCancelledGivesTheSlotBack) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  auto reader = stub_->Generate(&ctx, v1::GenerateRequest());
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        std::lock_guard<std::mutex> lock(host_.mu);
        return !host_.accepted.empty();
      },
      absl::Seconds(5)));
  ctx.TryCancel();
  ASSERT_TRUE(testing::WaitFor([&] { return host_.dequeues.load() == 1; }, absl::Seconds(5)));
  std::shared_ptr<RequestFlow> flow;
  {
    std::lock_guard<std::mutex> lock(host_.mu);
    flow = host_.accepted[0];
  }
  flow->Start();  // what the host does with the slot it took for this flow
  EXPECT_TRUE(testing::WaitFor([&] { return host_.ended.load() == 1; }, absl::Seconds(5)))
      << "the flow kept the serving slot it was started with";
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(host_.ended.load(), 1);
}

}  // namespace
}  // namespace sambay
