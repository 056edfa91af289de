// SIGTERM drains: readiness goes NOT_SERVING, new work gets UNAVAILABLE, the running
// sequences finish with every token, and the process exits 0.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/mutex.h"
#include "gtest/gtest.h"
#include "tests/worker/http_get.h"
#include "tests/worker/worker_harness.h"

namespace sambay::testing {
namespace {

namespace v1 = sambay::v1;
using grpc::health::v1::HealthCheckResponse;

class DrainTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure() && worker_ != nullptr) {
      std::cerr << "---- " << worker_->name() << " log:\n" << worker_->Logs() << "\n";
    }
  }
  ScratchDir dir_;
  std::unique_ptr<Worker> worker_;
};

TEST_F(DrainTest, SigtermFinishesRunningStreamsAndExitsZero) {
  // Long enough that the streams are still running while the test probes the draining worker
  // (each stream is a few thousand tokens; the tiny model does thousands per second).
  constexpr int kStreams = 4;
  constexpr uint32_t kNewTokens = 1500;
  auto w =
      Worker::Start("both", {"--max-running", "8", "--drain-timeout", "60"}, dir_.path(), "drain");
  ASSERT_TRUE(w.ok()) << w.status();
  worker_ = std::move(*w);

  std::vector<GenerateSpec> specs(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    specs[i].prompt = PromptIds(5 + 7 * i, 900 + i);
    specs[i].sampling = i % 2 == 0 ? Greedy() : Seeded(0.9f, 0.95f, 50 + i);
    specs[i].max_new_tokens = kNewTokens;
    specs[i].timeout = absl::Seconds(90);
  }
  std::vector<Notification> started(kStreams);
  std::vector<std::vector<uint32_t>> tokens(kStreams);
  std::vector<v1::DecodeDone> done(kStreams);
  // char, not bool: the threads write their own elements, and vector<bool> packs them into
  // shared words (a data race ThreadSanitizer found).
  std::vector<char> got_done(kStreams, 0);
  std::vector<grpc::Status> status(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      DecodeStream s(worker_->stub(),
                     MakeLocalDecode(specs[i].prompt, specs[i].sampling, kNewTokens),
                     specs[i].timeout);
      v1::DecodeResponse msg;
      bool notified = false;
      while (s.Read(&msg)) {
        if (msg.has_tokens()) {
          tokens[i].insert(tokens[i].end(), msg.tokens().token_ids().begin(),
                           msg.tokens().token_ids().end());
        } else if (msg.has_done()) {
          done[i] = msg.done();
          got_done[i] = true;
        }
        if (!notified) {
          started[i].Notify();
          notified = true;
        }
      }
      status[i] = s.Finish();
      if (!notified) started[i].Notify();
    });
  }
  for (auto& n : started) n.WaitForNotificationWithTimeout(absl::Seconds(30));
  auto load = worker_->GetLoad();
  ASSERT_TRUE(load.ok()) << load.status();
  const uint32_t running_at_sigterm = load->running() + load->waiting();
  EXPECT_EQ(running_at_sigterm, static_cast<uint32_t>(kStreams))
      << "streams finished before SIGTERM; raise kNewTokens. " << load->ShortDebugString();

  ASSERT_TRUE(worker_->process().Signal(SIGTERM));
  const absl::Time sigterm_at = absl::Now();
  // Readiness goes NOT_SERVING.
  bool not_serving = false;
  while (absl::Now() - sigterm_at < absl::Seconds(5)) {
    auto h = worker_->Health("sambay.v1.Worker");
    ASSERT_TRUE(h.ok()) << "readiness probe failed while draining: " << h.status();
    if (*h == HealthCheckResponse::NOT_SERVING) {
      not_serving = true;
      break;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_TRUE(not_serving) << "readiness still SERVING 5 s after SIGTERM";
  // Liveness stays SERVING: the process is alive and finishing its work.
  auto live = worker_->Health("");
  ASSERT_TRUE(live.ok()) << live.status();
  EXPECT_EQ(*live, HealthCheckResponse::SERVING);
  auto drain_load = worker_->GetLoad();
  ASSERT_TRUE(drain_load.ok()) << drain_load.status();
  EXPECT_TRUE(drain_load->draining());
  EXPECT_GT(drain_load->running() + drain_load->waiting(), 0u)
      << "streams ended before the drain probes; raise kNewTokens";

  // New work is refused with UNAVAILABLE.
  GenerateSpec late;
  late.prompt = PromptIds(8, 1);
  late.max_new_tokens = 4;
  GenerateResult r = LocalGenerate(*worker_, late);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.Describe();
  {
    DecodeStream s(worker_->stub(), MakeHandleDecode(NewHandle(), 8, Greedy(), 4),
                   absl::Seconds(10));
    grpc::Status st = s.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << StatusString(st);
  }
  {
    grpc::Status st =
        RunPrefill(*worker_, MakePrefill(late.prompt, Greedy(), worker_->address(), NewHandle()),
                   absl::Seconds(10));
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << StatusString(st);
  }
  if (auto rej = worker_->Metric("sambay_worker_rejections_total", {{"reason", "draining"}});
      rej.ok()) {
    EXPECT_GE(*rej, 3);
  }

  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    SCOPED_TRACE(absl::StrCat("stream ", i));
    EXPECT_TRUE(status[i].ok()) << StatusString(status[i]);
    EXPECT_EQ(tokens[i].size(), kNewTokens);
    EXPECT_TRUE(got_done[i]);
    EXPECT_EQ(done[i].reason(), v1::DECODE_FINISH_LENGTH);
    EXPECT_EQ(done[i].tokens(), kNewTokens);
  }
  std::optional<int> exit_status = worker_->process().WaitExit(absl::Seconds(30));
  ASSERT_TRUE(exit_status.has_value()) << "still running 30 s after its streams ended";
  EXPECT_TRUE(WIFEXITED(*exit_status) && WEXITSTATUS(*exit_status) == 0)
      << DescribeWaitStatus(*exit_status);

  // The drained streams carry exactly sambay-run's tokens.
  for (int i : {0, 1}) {
    auto ref = ReferenceGenerate(specs[i].prompt, specs[i].sampling, kNewTokens, {}, dir_.path());
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_EQ(tokens[i], *ref) << "stream " << i;
  }
}

TEST_F(DrainTest, IdleWorkerExitsZeroOnSigterm) {
  auto w = Worker::Start("decode", {}, dir_.path(), "idle");
  ASSERT_TRUE(w.ok()) << w.status();
  worker_ = std::move(*w);
  ASSERT_TRUE(worker_->process().Signal(SIGTERM));
  std::optional<int> exit_status = worker_->process().WaitExit(absl::Seconds(10));
  ASSERT_TRUE(exit_status.has_value()) << "an idle worker did not exit within 10 s of SIGTERM";
  EXPECT_TRUE(WIFEXITED(*exit_status) && WEXITSTATUS(*exit_status) == 0)
      << DescribeWaitStatus(*exit_status);
}

// A reservation still waiting for its state when SIGTERM comes: the drain does not hang on it
// past the lease, and the process still exits 0.
TEST_F(DrainTest, SigtermWithAWaitingReservationExitsZero) {
  auto w = Worker::Start("decode", {"--lease-timeout", "2", "--drain-timeout", "20"}, dir_.path(),
                         "reserved");
  ASSERT_TRUE(w.ok()) << w.status();
  worker_ = std::move(*w);
  DecodeStream s(worker_->stub(), MakeHandleDecode(NewHandle(), 8, Greedy(), 4), absl::Seconds(30));
  ASSERT_TRUE(s.ExpectReserved().ok());
  const absl::Time t0 = absl::Now();
  ASSERT_TRUE(worker_->process().Signal(SIGTERM));
  grpc::Status st = s.Finish();
  EXPECT_FALSE(st.ok());
  std::optional<int> exit_status = worker_->process().WaitExit(absl::Seconds(15));
  ASSERT_TRUE(exit_status.has_value()) << "still running 15 s after SIGTERM";
  EXPECT_TRUE(WIFEXITED(*exit_status) && WEXITSTATUS(*exit_status) == 0)
      << DescribeWaitStatus(*exit_status);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(10));
}

}  // namespace
}  // namespace sambay::testing
