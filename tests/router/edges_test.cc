// Edges of the router's request flow, with real processes: the last token the context has room
// for in split mode, requests waiting for a free worker slot, a client that does not read its
// stream, and usage.workers off by default.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/router/router_harness.h"

namespace sambay::testing {
namespace {

namespace v1 = sambay::v1;

// Context 64, split mode: a 63-token prompt has room for exactly one new token, which the
// prefill worker samples (no decode reservation, which would need room for a second one); a
// 62-token prompt gets its two. Both equal the single-process run.
TEST(RouterEdges, LastTokensOfTheContextInSplitMode) {
  Cluster c;
  ASSERT_STARTED(c.Start(1, 1, 0, {"--max-context", "64"}, {"--max-context", "64"}));
  for (int n : {63, 62}) {
    v1::GenerateRequest req = IdsRequest(PromptIds(n, 17), Seeded(0.7f, 0.95f, 3), 0);
    auto ref_req = req;
    ref_req.mutable_stopping()->set_max_new_tokens(64 - n);
    auto ref = ReferenceIds(ref_req, c.dir());
    ASSERT_TRUE(ref.ok()) << ref.status();
    const StreamResult r = Generate(c.stub(), req, absl::Seconds(20));
    ASSERT_TRUE(r.status.ok()) << n << ": " << r.Describe() << "\n" << c.Logs();
    EXPECT_EQ(r.finish, v1::FINISH_REASON_LENGTH) << r.Describe();
    EXPECT_EQ(r.ids, *ref) << n << ": " << r.Describe();
    EXPECT_EQ(r.ids.size(), static_cast<size_t>(64 - n));
  }
  EXPECT_EQ(c.router().MetricSum("sambay_router_request_failures_total"), 0) << c.Logs();
  EXPECT_TRUE(c.WaitWorkersIdle().ok());
}

// The decode reservation's handle used to be the request id plus 24 bytes, so ids of 105 to 128
// bytes (valid) always failed in split mode. Handles are random 128-bit values now.
TEST(RouterEdges, LongestRequestIdWorksInSplitMode) {
  Cluster c;
  ASSERT_STARTED(c.Start(1, 1, 0));
  v1::GenerateRequest req = IdsRequest(PromptIds(12, 8), Greedy(), 6);
  req.set_request_id(std::string(128, 'r'));
  const StreamResult r = Generate(c.stub(), req, absl::Seconds(20));
  ASSERT_TRUE(r.status.ok()) << r.Describe() << "\n" << c.Logs();
  EXPECT_EQ(r.request_id, req.request_id());
  EXPECT_EQ(r.ids.size(), 6u);
  EXPECT_EQ(r.usage.workers_size(), 2) << r.Describe();  // prefill, then decode elsewhere
}

// One decode slot, 4 requests at once: the router keeps the ones that find the worker full
// waiting (they are admitted, the worker answers RESOURCE_EXHAUSTED or has no free slot) and
// places them as the slot frees, instead of failing them UNAVAILABLE.
TEST(RouterEdges, AdmittedRequestsWaitForAFreeWorkerSlot) {
  Cluster c;
  ASSERT_STARTED(c.Start(1, 1, 0, {}, {"--max-running", "1"}));
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 4; ++i) {
    requests.push_back(IdsRequest(PromptIds(8 + i, 40 + i), Greedy(), 300));
  }
  const std::vector<Reference> refs = References(requests, c.dir());
  const std::vector<StreamResult> results = GenerateAll(c.stub(), requests, absl::Seconds(60));
  for (size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << i << ": " << results[i].Describe() << "\n" << c.Logs();
    EXPECT_EQ(results[i].ids, refs[i].ids) << results[i].Describe();
  }
  EXPECT_EQ(c.router().MetricSum("sambay_router_request_failures_total"), 0);
}

// Runs `node tests/router/unread_stream.js` (a client that never reads its stream) against the
// router for at most `seconds`; its JSON line, or "" when node is missing.
std::string UnreadStream(const std::string& address, const v1::GenerateRequest& req, int seconds) {
  return RunNodeScript("unread_stream.js",
                       {address.substr(address.rfind(':') + 1), "/sambay.v1.Generation/Generate",
                        absl::BytesToHexString(req.SerializeAsString()), absl::StrCat(seconds)});
}

// A client that opens a long stream and never reads it: the router cuts it off within the write
// timeout (its output may not pile up in the router), resets the stream, and frees the worker.
TEST(RouterEdges, ClientThatDoesNotReadIsCutOff) {
  Cluster c;
  ASSERT_STARTED(
      c.Start(0, 0, 1, {"--write-timeout-seconds", "2", "--max-pending-output-bytes", "4096"}));
  v1::GenerateRequest req = IdsRequest(PromptIds(10, 5), Greedy(), 4000);
  req.set_return_logprobs(true);
  req.set_top_logprobs(20);  // large messages: the flow-control windows fill fast
  const std::string out = UnreadStream(c.router().address(), req, 5);
  if (out.empty()) GTEST_SKIP() << "node is not installed (scripts/install-deps.sh installs it)";
  // Ended by the router (CANCELLED, or a reset) after one flow-control window, long before
  // 4,000 tokens with 20 logprobs each could be sent.
  EXPECT_TRUE(absl::StrContains(out, "\"closed\":true")) << out << "\n" << c.Logs();
  EXPECT_TRUE(absl::StrContains(out, "\"grpc_status\":\"1\"") ||
              absl::StrContains(out, "\"rst_code\":8"))
      << out;
  EXPECT_EQ(
      c.router().MetricSum("sambay_router_request_failures_total", {{"reason", "slow_client"}}), 1)
      << out << "\n"
      << c.Logs();
  EXPECT_EQ(c.router().WaitMetricSum("sambay_router_running_requests", {},
                                     [](double v) { return v == 0; }),
            0);
  EXPECT_TRUE(c.WaitWorkersIdle(absl::Seconds(10)).ok()) << c.Logs();
  // Other clients are served.
  const StreamResult r =
      Generate(c.stub(), IdsRequest(PromptIds(6, 2), Greedy(), 8), absl::Seconds(20));
  EXPECT_TRUE(r.status.ok()) << r.Describe();
}

// usage.workers names internal addresses: empty unless the router runs with --usage-workers.
TEST(RouterEdges, UsageWorkersIsOptIn) {
  Cluster c;
  ASSERT_STARTED(c.Start(1, 1, 0, {"--usage-workers", "false"}));
  const StreamResult r =
      Generate(c.stub(), IdsRequest(PromptIds(6, 2), Greedy(), 8), absl::Seconds(20));
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.usage.workers_size(), 0) << r.Describe();
  EXPECT_EQ(r.usage.completion_tokens(), 8u);
}

}  // namespace
}  // namespace sambay::testing
