// PrepareRequest (router/request.h) in process: the defaults it applies (max_new_tokens, seed,
// stop ids), how each kind of prompt becomes token ids, and the INVALID_ARGUMENT naming the field
// for each limit; PromptTextBytes.
#include "router/request.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/router/router_harness.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

namespace sambay {
namespace {

namespace v1 = sambay::v1;

constexpr uint64_t kRandomSeed = 12345;

// A prompt of `n` token ids (1, 2, 3, ...; all in the tiny vocabulary).
v1::GenerateRequest IdsPrompt(int n) {
  v1::GenerateRequest r;
  for (int i = 0; i < n; ++i) r.mutable_token_ids()->add_ids(1 + i % 200);
  return r;
}

v1::ChatMessage Message(const std::string& role, const std::string& content) {
  v1::ChatMessage m;
  m.set_role(role);
  m.set_content(content);
  return m;
}

class PrepareRequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_ = testing::TinyTokenizer();
    ASSERT_NE(tokenizer_, nullptr);
    limits_.vocab_size = 320;  // the tiny model's
    limits_.max_context = 100;
    limits_.eos_ids = {260, 256};
    limits_.default_max_new_tokens = 32;
    limits_.max_new_tokens_limit = 50;
  }

  absl::StatusOr<PreparedRequest> Prepare(const v1::GenerateRequest& req) {
    return PrepareRequest(req, *tokenizer_, limits_, kRandomSeed);
  }

  // The message of the INVALID_ARGUMENT that `req` gets ("" plus a test failure otherwise).
  std::string ErrorOf(const v1::GenerateRequest& req) {
    auto p = Prepare(req);
    if (p.ok()) {
      ADD_FAILURE() << "accepted: " << req.ShortDebugString();
      return "";
    }
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << p.status();
    return std::string(p.status().message());
  }

  std::unique_ptr<Tokenizer> tokenizer_;
  RouterLimits limits_;
};

TEST_F(PrepareRequestTest, TokenIdPromptGetsTheDefaults) {
  v1::GenerateRequest req = IdsPrompt(3);
  req.set_request_id("prep-1");
  req.mutable_sampling()->set_temperature(0.5f);
  auto p = Prepare(req);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->request_id, "prep-1");
  EXPECT_EQ(p->prompt, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(p->max_new_tokens, 32);  // default_max_new_tokens
  ASSERT_TRUE(p->sampling.has_seed());
  EXPECT_EQ(p->sampling.seed(), kRandomSeed);  // none given: the router's
  EXPECT_FLOAT_EQ(p->sampling.temperature(), 0.5f);
  EXPECT_EQ(p->stop_ids, (std::vector<int32_t>{260, 256}));  // EOS
  EXPECT_TRUE(p->stop_strings.empty());
  EXPECT_FALSE(p->logprobs);
  EXPECT_EQ(p->top_logprobs, 0);
}

TEST_F(PrepareRequestTest, DefaultMaxNewTokensStopsAtTheContextLength) {
  auto p = Prepare(IdsPrompt(90));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->max_new_tokens, 10);  // 100 - 90 < default 32
}

TEST_F(PrepareRequestTest, AGivenSeedIsKeptEvenZero) {
  v1::GenerateRequest req = IdsPrompt(3);
  req.mutable_sampling()->set_seed(0);
  auto p = Prepare(req);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE(p->sampling.has_seed());
  EXPECT_EQ(p->sampling.seed(), 0u);
  req.mutable_sampling()->set_seed(77);
  p = Prepare(req);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->sampling.seed(), 77u);
}

TEST_F(PrepareRequestTest, StopIdsAreTheUsersPlusEosUnlessIgnored) {
  v1::GenerateRequest req = IdsPrompt(3);
  req.mutable_stopping()->set_max_new_tokens(5);
  req.mutable_stopping()->add_stop_token_ids(5);
  req.mutable_stopping()->add_stop_token_ids(260);  // an EOS id too: not repeated
  auto p = Prepare(req);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->max_new_tokens, 5);
  EXPECT_EQ(p->stop_ids, (std::vector<int32_t>{5, 260, 256}));

  req.mutable_stopping()->set_ignore_eos(true);
  p = Prepare(req);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->stop_ids, (std::vector<int32_t>{5, 260}));
}

TEST_F(PrepareRequestTest, StopStringsAndLogprobsAreCarried) {
  v1::GenerateRequest req = IdsPrompt(3);
  req.mutable_stopping()->add_stop_strings("\n\n");
  req.mutable_stopping()->add_stop_strings("END");
  req.set_top_logprobs(3);
  auto p = Prepare(req);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->stop_strings, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_TRUE(p->logprobs);  // top_logprobs implies logprobs
  EXPECT_EQ(p->top_logprobs, 3);

  req.set_top_logprobs(0);
  req.set_return_logprobs(true);
  p = Prepare(req);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->logprobs);
  EXPECT_EQ(p->top_logprobs, 0);
}

TEST_F(PrepareRequestTest, TextPromptIsTokenizedWithoutSpecialTokens) {
  v1::GenerateRequest req;
  req.set_text("Hello, <|end|> world");
  auto p = Prepare(req);
  ASSERT_TRUE(p.ok()) << p.status();
  auto want = tokenizer_->Encode(req.text(), /*allow_special=*/false);
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_EQ(p->prompt, *want);
  EXPECT_EQ(p->prompt.size(), req.text().size());  // byte tokens: "<|end|>" stays text
}

TEST_F(PrepareRequestTest, ChatPromptIsTokenizedWithTheChatFormat) {
  v1::GenerateRequest req;
  *req.mutable_chat()->add_messages() = Message("system", "Be brief.");
  *req.mutable_chat()->add_messages() = Message("user", "Hi");
  auto p = Prepare(req);
  ASSERT_TRUE(p.ok()) << p.status();
  auto want = EncodeChat(*tokenizer_, {{"system", "Be brief."}, {"user", "Hi"}});
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_EQ(p->prompt, *want);
  EXPECT_EQ(p->prompt.back(), *tokenizer_->SpecialTokenId("<|assistant|>"));
}

TEST_F(PrepareRequestTest, PromptErrorsNameTheField) {
  v1::GenerateRequest none;
  EXPECT_EQ(ErrorOf(none), "prompt: set one of text, token_ids or chat");
  v1::GenerateRequest empty_ids;
  empty_ids.mutable_token_ids();
  EXPECT_EQ(ErrorOf(empty_ids), "token_ids: the prompt must not be empty");
  v1::GenerateRequest empty_text;
  empty_text.set_text("");
  EXPECT_EQ(ErrorOf(empty_text), "text: the prompt must not be empty");
  v1::GenerateRequest outside = IdsPrompt(1);
  outside.mutable_token_ids()->add_ids(320);
  EXPECT_EQ(ErrorOf(outside), "token_ids.ids[1]: token id 320 is outside the vocabulary [0, 320)");
  EXPECT_EQ(ErrorOf(IdsPrompt(100)),
            "prompt: 100 tokens leave no room to generate in the context length 100");
}

TEST_F(PrepareRequestTest, ChatErrorsNameTheMessage) {
  v1::GenerateRequest empty;
  empty.mutable_chat();
  EXPECT_EQ(ErrorOf(empty), "chat.messages: must not be empty");
  v1::GenerateRequest robot;
  *robot.mutable_chat()->add_messages() = Message("robot", "beep");
  EXPECT_EQ(ErrorOf(robot),
            "chat.messages[0].role: must be system, user, assistant or tool, got \"robot\"");
  v1::GenerateRequest tool;
  *tool.mutable_chat()->add_messages() = Message("user", "hi");
  *tool.mutable_chat()->add_messages() = Message("tool", "{}");
  EXPECT_EQ(ErrorOf(tool), absl::StrCat("chat.messages[1].role: \"tool\" is not supported by the "
                                        "model's tokenizer (",
                                        tokenizer_->name(), " has no <|tool|> token)"));
}

TEST_F(PrepareRequestTest, MaxNewTokensErrorsNameTheField) {
  v1::GenerateRequest over = IdsPrompt(3);
  over.mutable_stopping()->set_max_new_tokens(51);
  EXPECT_EQ(ErrorOf(over), "stopping.max_new_tokens: must be <= 50, got 51");
  v1::GenerateRequest past_context = IdsPrompt(60);
  past_context.mutable_stopping()->set_max_new_tokens(41);
  EXPECT_EQ(ErrorOf(past_context),
            "stopping.max_new_tokens: prompt (60 tokens) + 41 new tokens exceeds the context "
            "length 100");
  past_context.mutable_stopping()->set_max_new_tokens(40);  // exactly fills the context
  EXPECT_TRUE(Prepare(past_context).ok());
}

TEST_F(PrepareRequestTest, StopErrorsNameTheField) {
  v1::GenerateRequest bad_id = IdsPrompt(3);
  bad_id.mutable_stopping()->add_stop_token_ids(999);
  EXPECT_EQ(ErrorOf(bad_id),
            "stopping.stop_token_ids[0]: token id 999 is outside the vocabulary [0, 320)");
  v1::GenerateRequest many_ids = IdsPrompt(3);
  for (int i = 0; i < 1025; ++i) many_ids.mutable_stopping()->add_stop_token_ids(i % 300);
  EXPECT_EQ(ErrorOf(many_ids), "stopping.stop_token_ids: at most 1024 ids, got 1025");
  v1::GenerateRequest many = IdsPrompt(3);
  for (int i = 0; i < 17; ++i) many.mutable_stopping()->add_stop_strings(absl::StrCat("s", i));
  EXPECT_EQ(ErrorOf(many), "stopping.stop_strings: at most 16 strings, got 17");
  v1::GenerateRequest too_long = IdsPrompt(3);
  too_long.mutable_stopping()->add_stop_strings("ok");
  too_long.mutable_stopping()->add_stop_strings(std::string(257, 'x'));
  EXPECT_EQ(ErrorOf(too_long), "stopping.stop_strings[1]: must be 1 to 256 bytes");
  v1::GenerateRequest empty = IdsPrompt(3);
  empty.mutable_stopping()->add_stop_strings("");
  EXPECT_EQ(ErrorOf(empty), "stopping.stop_strings[0]: must be 1 to 256 bytes");
}

TEST_F(PrepareRequestTest, OtherFieldErrorsNameTheField) {
  v1::GenerateRequest top = IdsPrompt(3);
  top.set_top_logprobs(21);
  EXPECT_EQ(ErrorOf(top), "top_logprobs: must be in [0, 20], got 21");
  v1::GenerateRequest temp = IdsPrompt(3);
  temp.mutable_sampling()->set_temperature(-1);
  EXPECT_EQ(ErrorOf(temp), "sampling.temperature: must be finite and >= 0, got -1");
  v1::GenerateRequest top_p = IdsPrompt(3);
  top_p.mutable_sampling()->set_top_p(1.5f);
  EXPECT_EQ(ErrorOf(top_p), "sampling.top_p: must be in (0, 1], got 1.5");
  v1::GenerateRequest spaced = IdsPrompt(3);
  spaced.set_request_id("a b");
  EXPECT_EQ(ErrorOf(spaced), "request_id: must be printable ASCII without spaces");
  v1::GenerateRequest long_id = IdsPrompt(3);
  long_id.set_request_id(std::string(129, 'x'));
  EXPECT_EQ(ErrorOf(long_id), "request_id: must be at most 128 bytes");
}

TEST_F(PrepareRequestTest, RequestLargerThanTheLimitIsRefused) {
  limits_.max_request_bytes = 1024;
  v1::GenerateRequest req;
  req.set_text(std::string(2000, 'a'));
  EXPECT_EQ(ErrorOf(req), absl::StrCat("request: ", req.ByteSizeLong(),
                                       " bytes exceeds the limit of 1024 (--max-request-bytes)"));
}

TEST(PromptTextBytesTest, CountsTheTextToTokenize) {
  v1::GenerateRequest text;
  text.set_text("abc");
  EXPECT_EQ(PromptTextBytes(text), 3u);
  v1::GenerateRequest chat;
  *chat.mutable_chat()->add_messages() = Message("user", "hi");
  *chat.mutable_chat()->add_messages() = Message("assistant", "yo!");
  EXPECT_EQ(PromptTextBytes(chat), 4u + 2u + 9u + 3u);  // roles and contents
  EXPECT_EQ(PromptTextBytes(IdsPrompt(50)), 0u);
  EXPECT_EQ(PromptTextBytes(v1::GenerateRequest()), 0u);
}

}  // namespace
}  // namespace sambay
