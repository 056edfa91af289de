// The requests one attempt sends to its workers (router/worker_requests.h): pure functions of
// the prepared request and the tokens generated so far.
#include "router/worker_requests.h"

#include <vector>

#include "gtest/gtest.h"

namespace sambay {
namespace {

namespace v1 = sambay::v1;

PreparedRequest Prepared() {
  PreparedRequest p;
  p.request_id = "rid-1";
  p.prompt = {5, 6, 7};
  p.sampling.set_temperature(0.5f);
  p.sampling.set_seed(42);
  p.max_new_tokens = 10;
  p.stop_ids = {2, 9};
  p.logprobs = true;
  p.top_logprobs = 3;
  return p;
}

std::vector<uint32_t> Ids(const google::protobuf::RepeatedField<uint32_t>& f) {
  return {f.begin(), f.end()};
}

TEST(WorkerRequestsTest, InPlaceDecodePrefillsPromptAndGeneratedAndContinuesTheRandomStream) {
  const PreparedRequest p = Prepared();
  const v1::DecodeRequest fresh = InPlaceDecodeRequest(p, {});
  EXPECT_EQ(Ids(fresh.local_prompt().ids()), (std::vector<uint32_t>{5, 6, 7}));
  EXPECT_EQ(fresh.rng_draws(), 0u);
  EXPECT_EQ(fresh.max_new_tokens(), 10u);
  EXPECT_TRUE(fresh.handle().empty());

  const v1::DecodeRequest again = InPlaceDecodeRequest(p, {11, 12});
  EXPECT_EQ(again.request_id(), "rid-1");
  EXPECT_EQ(Ids(again.local_prompt().ids()), (std::vector<uint32_t>{5, 6, 7, 11, 12}));
  EXPECT_EQ(again.rng_draws(), 2u);
  EXPECT_EQ(again.max_new_tokens(), 8u);
  EXPECT_EQ(again.sampling().seed(), 42u);
  EXPECT_EQ(Ids(again.stop_token_ids()), (std::vector<uint32_t>{2, 9}));
  EXPECT_TRUE(again.return_logprobs());
  EXPECT_EQ(again.top_logprobs(), 3u);
}

TEST(WorkerRequestsTest, ReservationLeavesTheFirstTokenToThePrefill) {
  PreparedRequest p = Prepared();
  const v1::DecodeRequest r = ReserveDecodeRequest(p, {11}, "h1");
  EXPECT_EQ(r.handle(), "h1");
  EXPECT_EQ(r.prompt_tokens(), 4u);    // prompt + generated
  EXPECT_EQ(r.max_new_tokens(), 8u);   // 10 - 1 generated - 1 from the prefill
  EXPECT_EQ(r.history_size(), 0);      // no penalty: no history
  EXPECT_FALSE(r.has_local_prompt());  // the state comes by push
  EXPECT_EQ(Ids(r.stop_token_ids()), (std::vector<uint32_t>{2, 9}));

  p.max_new_tokens = 2;  // one left after the generated token: still at least 1
  EXPECT_EQ(ReserveDecodeRequest(p, {11}, "h1").max_new_tokens(), 1u);
}

TEST(WorkerRequestsTest, ReservationCarriesTheHistoryOnlyForPenalties) {
  PreparedRequest p = Prepared();
  p.sampling.set_repetition_penalty(1.0f);  // neutral: no history
  EXPECT_EQ(ReserveDecodeRequest(p, {11}, "h").history_size(), 0);
  p.sampling.set_repetition_penalty(1.3f);
  EXPECT_EQ(Ids(ReserveDecodeRequest(p, {11}, "h").history()),
            (std::vector<uint32_t>{5, 6, 7, 11}));
  p.sampling.clear_repetition_penalty();
  p.sampling.set_presence_penalty(0.5f);
  EXPECT_EQ(ReserveDecodeRequest(p, {}, "h").history_size(), 3);
  p.sampling.set_presence_penalty(0.0f);
  EXPECT_EQ(ReserveDecodeRequest(p, {}, "h").history_size(), 0);
  p.sampling.set_frequency_penalty(-0.5f);  // the frequency penalty alone
  EXPECT_EQ(Ids(ReserveDecodeRequest(p, {11, 12}, "h").history()),
            (std::vector<uint32_t>{5, 6, 7, 11, 12}));
}

TEST(WorkerRequestsTest, PrefillPushesToTheReservationOrNowhere) {
  const PreparedRequest p = Prepared();
  const v1::PrefillRequest split = SplitPrefillRequest(p, {11, 12}, "10.0.0.2:7000", "h2");
  EXPECT_EQ(Ids(split.token_ids()), (std::vector<uint32_t>{5, 6, 7, 11, 12}));
  EXPECT_EQ(split.rng_draws(), 2u);
  EXPECT_EQ(split.destination().address(), "10.0.0.2:7000");
  EXPECT_EQ(split.destination().handle(), "h2");
  EXPECT_EQ(split.sampling().seed(), 42u);
  EXPECT_TRUE(split.return_logprobs());

  const v1::PrefillRequest alone = SplitPrefillRequest(p, {}, "10.0.0.2:7000", "");
  EXPECT_FALSE(alone.has_destination());
  EXPECT_EQ(alone.rng_draws(), 0u);
}

}  // namespace
}  // namespace sambay
