// The router under load: many concurrent streams fed by sambay-token-source (a synthetic worker
// that streams (sum(prompt) + i) % 320 one token per step for every stream), so the router's
// completion-queue threads interleave hundreds of events per millisecond. Every stream must get
// exactly its own ids, in order, none lost or duplicated; streams cancelled mid-way must free
// their slots; the gauges must return to zero.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/router/router_harness.h"

namespace sambay::testing {
namespace {

namespace v1 = sambay::v1;

std::vector<uint32_t> Expected(const std::vector<uint32_t>& prompt, uint32_t n) {
  uint64_t base = 0;
  for (uint32_t id : prompt) base += id;
  std::vector<uint32_t> out;
  for (uint32_t i = 0; i < n; ++i) out.push_back(static_cast<uint32_t>((base + i) % 320));
  return out;
}

TEST(RouterLoad, SixtyFourStreamsGetExactlyTheirTokensAndCancelsFreeSlots) {
  ScratchDir dir;
  auto source = ServerProcess::Start(BinDir() + "/sambay-token-source",
                                     {"--step-us", "200", "--vocab", "320"}, dir.path(), "source");
  ASSERT_TRUE(source.ok()) << source.status();
  auto router = Router::Start({"--workers", (*source)->address(), "--io-threads", "2"}, dir.path(),
                              "router", /*workers_up=*/1);
  ASSERT_TRUE(router.ok()) << router.status();
  Router& r = **router;

  constexpr int kStreams = 64, kCancelled = 16;
  std::vector<std::vector<uint32_t>> prompts;
  std::vector<std::unique_ptr<Stream>> streams;
  for (int i = 0; i < kStreams; ++i) {
    std::vector<uint32_t> prompt;
    for (int j = 0; j < 4 + i % 5; ++j) prompt.push_back(static_cast<uint32_t>((i * 7 + j) % 300));
    prompts.push_back(prompt);
    // The cancelled ones are long, so they are surely still running when cancelled.
    const uint32_t n = i < kCancelled ? 4000 : 400 + i;
    streams.push_back(
        std::make_unique<Stream>(r.stub(), IdsRequest(prompt, Greedy(), n), absl::Seconds(60)));
  }
  for (int i = 0; i < kCancelled; ++i) {
    while (streams[i]->tokens() < 50 && !streams[i]->done()) absl::SleepFor(absl::Milliseconds(2));
    streams[i]->Cancel();
  }
  for (int i = 0; i < kStreams; ++i) {
    const StreamResult& res = streams[i]->Wait();
    EXPECT_TRUE(res.protocol_error.empty()) << i << ": " << res.protocol_error;
    const std::vector<uint32_t> want = Expected(
        prompts[i], static_cast<uint32_t>(streams[i]->request().stopping().max_new_tokens()));
    if (i < kCancelled) {
      EXPECT_EQ(res.status.error_code(), grpc::StatusCode::CANCELLED)
          << i << ": " << res.Describe();
      ASSERT_LE(res.ids.size(), want.size());
      EXPECT_EQ(res.ids, std::vector<uint32_t>(want.begin(), want.begin() + res.ids.size()))
          << i << ": a prefix of its own ids";
    } else {
      ASSERT_TRUE(res.status.ok()) << i << ": " << res.Describe() << "\n" << r.Logs();
      EXPECT_EQ(res.ids, want) << i;
      EXPECT_EQ(res.finish, v1::FINISH_REASON_LENGTH) << i;
      EXPECT_EQ(res.usage.completion_tokens(), want.size()) << i;
    }
  }
  EXPECT_EQ(r.WaitMetricSum("sambay_router_running_requests", {}, [](double v) { return v == 0; }),
            0);
  EXPECT_EQ(r.MetricSum("sambay_router_waiting_requests"), 0);
  EXPECT_EQ(r.MetricSum("sambay_router_requests_total", {{"finish_reason", "length"}}),
            kStreams - kCancelled);
}

}  // namespace
}  // namespace sambay::testing
