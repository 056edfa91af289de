// RequestPreparer (router/preparer.h) in process: the request id rule, inline and pooled
// preparation giving the same result, and which prompts go to the pool.
#include "router/preparer.h"

#include <memory>
#include <string>

#include "common/mutex.h"
#include "gtest/gtest.h"
#include "tests/router/router_harness.h"
#include "tokenizer/tokenizer.h"

namespace sambay {
namespace {

namespace v1 = sambay::v1;

class PreparerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_ = testing::TinyTokenizer();
    ASSERT_NE(tokenizer_, nullptr);
    limits_.vocab_size = 320;  // the tiny model's
    limits_.max_context = 4096;
    limits_.eos_ids = {2};
    preparer_ = std::make_unique<RequestPreparer>(*tokenizer_, limits_);
  }

  std::unique_ptr<Tokenizer> tokenizer_;
  RouterLimits limits_;
  std::unique_ptr<RequestPreparer> preparer_;
};

TEST_F(PreparerTest, TheRequestsIdWinsElseANewOneIsMade) {
  v1::GenerateRequest req;
  req.set_text("hello");
  req.set_request_id("mine-1");
  Preparation p = preparer_->Prepare("", req);
  ASSERT_TRUE(p.request.ok()) << p.request.status();
  EXPECT_EQ(p.request_id, "mine-1");
  EXPECT_EQ(p.request->request_id, "mine-1");

  req.clear_request_id();
  Preparation a = preparer_->Prepare("", req);
  Preparation b = preparer_->Prepare("", req);
  ASSERT_TRUE(a.request.ok() && b.request.ok());
  EXPECT_EQ(a.request_id.rfind("req-", 0), 0u) << a.request_id;  // common/request_id.h
  EXPECT_NE(a.request_id, b.request_id);
  EXPECT_EQ(a.request->request_id, a.request_id);
  // No seed in the request: each gets its own, so a migrated sequence keeps its stream.
  EXPECT_TRUE(a.request->sampling.has_seed());
}

TEST_F(PreparerTest, AnInvalidRequestKeepsItsIdForTheLog) {
  v1::GenerateRequest req;
  req.set_request_id("bad-1");
  req.mutable_token_ids()->add_ids(100000);  // outside the vocabulary
  Preparation p = preparer_->Prepare("", req);
  EXPECT_EQ(p.request_id, "bad-1");
  ASSERT_FALSE(p.request.ok());
  EXPECT_EQ(p.request.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PreparerTest, OnlyLargePromptsGoToThePoolAndBothWaysAgree) {
  v1::GenerateRequest small;
  small.set_text("hi");
  EXPECT_FALSE(RequestPreparer::Deferred(small));
  v1::GenerateRequest large;
  large.set_text(std::string(kInlinePromptBytes + 1, 'a'));
  large.set_request_id("large-1");
  large.mutable_sampling()->set_seed(7);
  large.mutable_stopping()->set_max_new_tokens(1);
  limits_.max_context = 1 << 20;
  EXPECT_TRUE(RequestPreparer::Deferred(large));
  v1::GenerateRequest ids;
  ids.mutable_token_ids()->add_ids(1);
  EXPECT_FALSE(RequestPreparer::Deferred(ids));  // nothing to tokenize

  Notification done;  // the project's (instrumented for TSan), not absl's
  Preparation pooled;
  ASSERT_TRUE(preparer_->PrepareLater("", large, [&](Preparation p) {
    pooled = std::move(p);
    done.Notify();
  }));
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  Preparation inline_p = preparer_->Prepare("", large);
  ASSERT_TRUE(pooled.request.ok()) << pooled.request.status();
  ASSERT_TRUE(inline_p.request.ok()) << inline_p.request.status();
  EXPECT_EQ(pooled.request_id, "large-1");
  EXPECT_EQ(pooled.request->prompt, inline_p.request->prompt);
  EXPECT_EQ(pooled.request->sampling.seed(), 7u);
  EXPECT_FALSE(pooled.request->prompt.empty());
}

}  // namespace
}  // namespace sambay
