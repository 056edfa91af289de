// Bad requests get INVALID_ARGUMENT with the field named first in the message (docs/design.md
// "Errors, not crashes"),
// calls for a role the worker does not serve get FAILED_PRECONDITION, and the worker goes on
// serving valid requests with nothing leaked.
#include <cmath>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/worker/worker_harness.h"

namespace sambay::testing {
namespace {

namespace v1 = sambay::v1;

constexpr uint32_t kMaxContext = 64;

class ValidationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir();
    auto b =
        Worker::Start("both", {"--max-context", absl::StrCat(kMaxContext)}, dir_->path(), "both");
    auto p = Worker::Start("prefill", {}, dir_->path(), "prefill");
    auto d = Worker::Start("decode", {}, dir_->path(), "decode");
    if (!b.ok() || !p.ok() || !d.ok()) {
      start_error_ = new std::string(absl::StrCat(
          b.status().ToString(), "\n", p.status().ToString(), "\n", d.status().ToString()));
      return;
    }
    both_ = b->release();
    prefill_ = p->release();
    decode_ = d->release();
  }
  static void TearDownTestSuite() {
    delete both_;
    delete prefill_;
    delete decode_;
    delete dir_;
    delete start_error_;
    both_ = prefill_ = decode_ = nullptr;
    dir_ = nullptr;
    start_error_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(start_error_, nullptr) << *start_error_; }
  void TearDown() override {
    if (HasFailure()) {
      for (Worker* w : {both_, prefill_, decode_}) {
        if (w != nullptr) std::cerr << "---- " << w->name() << " log:\n" << w->Logs() << "\n";
      }
    }
  }

  // Expects `st` to be INVALID_ARGUMENT with a message starting with `field`.
  static void ExpectInvalid(const grpc::Status& st, const std::string& field,
                            const std::string& what) {
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << what << ": " << StatusString(st);
    EXPECT_TRUE(absl::StartsWith(st.error_message(), field))
        << what << ": message should start with \"" << field << "\": " << StatusString(st);
  }

  static grpc::Status DecodeStatus(Worker& w, const v1::DecodeRequest& req) {
    DecodeStream s(w.stub(), req, absl::Seconds(10));
    v1::DecodeResponse msg;
    if (s.Read(&msg)) {
      return grpc::Status(grpc::StatusCode::OK,
                          "test: the Decode stream sent " + msg.ShortDebugString());
    }
    return s.Finish();
  }

  // The worker still serves a good request identically to sambay-run, and is idle.
  void ExpectStillServing(Worker& w) {
    GenerateSpec spec;
    spec.prompt = PromptIds(12, 31);
    spec.sampling = Seeded(0.8f, 0.9f, 7);
    spec.max_new_tokens = 20;
    auto ref = ReferenceGenerate(spec.prompt, spec.sampling, spec.max_new_tokens, {}, dir_->path());
    ASSERT_TRUE(ref.ok()) << ref.status();
    GenerateResult r = LocalGenerate(w, spec);
    ASSERT_TRUE(r.status.ok()) << r.Describe();
    EXPECT_EQ(r.tokens, *ref);
    ExpectIdle(w);
  }

  static ScratchDir* dir_;
  static std::string* start_error_;
  static Worker* both_;
  static Worker* prefill_;
  static Worker* decode_;
};
ScratchDir* ValidationTest::dir_ = nullptr;
std::string* ValidationTest::start_error_ = nullptr;
Worker* ValidationTest::both_ = nullptr;
Worker* ValidationTest::prefill_ = nullptr;
Worker* ValidationTest::decode_ = nullptr;

struct SamplingCase {
  const char* what;
  const char* field;
  std::function<void(Sampling&)> mutate;
};

std::vector<SamplingCase> BadSamplings() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  return {
      {"temperature -1", "sampling.temperature", [](Sampling& s) { s.temperature = -1; }},
      {"temperature NaN", "sampling.temperature", [nan](Sampling& s) { s.temperature = nan; }},
      {"temperature inf", "sampling.temperature", [inf](Sampling& s) { s.temperature = inf; }},
      {"top_p 0", "sampling.top_p", [](Sampling& s) { s.top_p = 0; }},
      {"top_p 1.5", "sampling.top_p", [](Sampling& s) { s.top_p = 1.5f; }},
      {"top_p NaN", "sampling.top_p", [nan](Sampling& s) { s.top_p = nan; }},
      {"top_k -1", "sampling.top_k", [](Sampling& s) { s.top_k = -1; }},
      {"min_p 2", "sampling.min_p", [](Sampling& s) { s.min_p = 2; }},
      {"repetition_penalty 0", "sampling.repetition_penalty",
       [](Sampling& s) { s.repetition_penalty = 0; }},
      {"repetition_penalty -1", "sampling.repetition_penalty",
       [](Sampling& s) { s.repetition_penalty = -1; }},
      {"presence_penalty NaN", "sampling.presence_penalty",
       [nan](Sampling& s) { s.presence_penalty = nan; }},
      {"frequency_penalty NaN", "sampling.frequency_penalty",
       [nan](Sampling& s) { s.frequency_penalty = nan; }},
      {"frequency_penalty -inf", "sampling.frequency_penalty",
       [inf](Sampling& s) { s.frequency_penalty = -inf; }},
  };
}

TEST_F(ValidationTest, LocalPromptDecodeBadInput) {
  const Sampling ok = Seeded(0.8f, 0.9f, 1);
  const std::vector<uint32_t> prompt = PromptIds(10, 3);

  ExpectInvalid(DecodeStatus(*both_, MakeLocalDecode({}, ok, 8)), "local_prompt",
                "empty local_prompt");
  {
    std::vector<uint32_t> oov = prompt;
    oov[3] = kTinyVocab;  // 320: out of the vocabulary
    const grpc::Status st = DecodeStatus(*both_, MakeLocalDecode(oov, ok, 8));
    ExpectInvalid(st, "local_prompt", "id 320");
    EXPECT_NE(st.error_message().find("[3]"), std::string::npos) << StatusString(st);
    oov[3] = 0xFFFFFFFFu;
    ExpectInvalid(DecodeStatus(*both_, MakeLocalDecode(oov, ok, 8)), "local_prompt", "id 2^32-1");
  }
  ExpectInvalid(DecodeStatus(*both_, MakeLocalDecode(prompt, ok, 0)), "max_new_tokens",
                "max_new_tokens 0");
  // 40 + 30 > --max-context 64.
  ExpectInvalid(DecodeStatus(*both_, MakeLocalDecode(PromptIds(40, 4), ok, 30)), "max_new_tokens",
                "context overflow");
  // A prompt that alone fills the context.
  {
    const grpc::Status st = DecodeStatus(*both_, MakeLocalDecode(PromptIds(kMaxContext, 4), ok, 1));
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusString(st);
  }
  for (const SamplingCase& c : BadSamplings()) {
    Sampling s = ok;
    c.mutate(s);
    ExpectInvalid(DecodeStatus(*both_, MakeLocalDecode(prompt, s, 8)), c.field, c.what);
  }
  {
    v1::DecodeRequest req = MakeLocalDecode(prompt, ok, 8);
    req.set_return_logprobs(true);
    req.set_top_logprobs(21);
    ExpectInvalid(DecodeStatus(*both_, req), "top_logprobs", "top_logprobs 21");
  }
  {
    v1::DecodeRequest req = MakeLocalDecode(prompt, ok, 8);
    req.clear_local_prompt();  // no source at all
    const grpc::Status st = DecodeStatus(*both_, req);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusString(st);
  }
  ExpectIdle(*both_);
  ExpectStillServing(*both_);
}

TEST_F(ValidationTest, HandleDecodeBadInput) {
  const Sampling ok = Greedy();
  ExpectInvalid(DecodeStatus(*decode_, MakeHandleDecode(NewHandle(), 10, ok, 0)), "max_new_tokens",
                "max_new_tokens 0");
  ExpectInvalid(DecodeStatus(*both_, MakeHandleDecode(NewHandle(), 40, ok, 30)), "max_new_tokens",
                "context overflow (handle)");
  ExpectInvalid(DecodeStatus(*decode_, MakeHandleDecode(std::string(129, 'h'), 10, ok, 8)),
                "handle", "129-byte handle");
  ExpectInvalid(DecodeStatus(*decode_, MakeHandleDecode("", 10, ok, 8)), "handle", "empty handle");
  {
    const grpc::Status st = DecodeStatus(*decode_, MakeHandleDecode(NewHandle(), 0, ok, 8));
    ExpectInvalid(st, "prompt_tokens", "prompt_tokens 0");
  }
  for (const SamplingCase& c : BadSamplings()) {
    Sampling s = ok;
    c.mutate(s);
    ExpectInvalid(DecodeStatus(*decode_, MakeHandleDecode(NewHandle(), 10, s, 8)), c.field, c.what);
  }
  {
    // Penalties with a handle need the history (prompt_tokens entries): missing, a wrong
    // length, an id out of the vocabulary.
    Sampling s = ok;
    s.repetition_penalty = 1.2f;
    v1::DecodeRequest req = MakeHandleDecode(NewHandle(), 10, s, 8);
    ExpectInvalid(DecodeStatus(*decode_, req), "history", "no history");
    for (uint32_t id : PromptIds(3, 1)) req.add_history(id);
    ExpectInvalid(DecodeStatus(*decode_, req), "history", "short history");
    req.clear_history();
    for (uint32_t id : PromptIds(10, 1)) req.add_history(id);
    req.set_history(4, kTinyVocab);
    ExpectInvalid(DecodeStatus(*decode_, req), "history", "history id 320");
    // The frequency penalty alone needs it too.
    Sampling f = ok;
    f.frequency_penalty = 0.5f;
    ExpectInvalid(DecodeStatus(*decode_, MakeHandleDecode(NewHandle(), 10, f, 8)), "history",
                  "no history, frequency_penalty");
  }
  ExpectIdle(*decode_);
  ExpectIdle(*both_);
}

TEST_F(ValidationTest, PrefillBadInput) {
  const Sampling ok = Seeded(0.8f, 0.9f, 1);
  const std::vector<uint32_t> prompt = PromptIds(10, 3);
  // The destination is never reached: validation comes first.
  const std::string dest = decode_->address();
  auto status_of = [&](const v1::PrefillRequest& req) {
    return RunPrefill(*both_, req, absl::Seconds(10));
  };
  ExpectInvalid(status_of(MakePrefill({}, ok, dest, "h")), "token_ids", "empty token_ids");
  {
    std::vector<uint32_t> oov = prompt;
    oov[3] = kTinyVocab;
    const grpc::Status st = status_of(MakePrefill(oov, ok, dest, "h"));
    ExpectInvalid(st, "token_ids[3]", "id 320");
  }
  // At most max_context - 1 tokens.
  ExpectInvalid(status_of(MakePrefill(PromptIds(kMaxContext, 5), ok, dest, "h")), "token_ids",
                "prompt of max_context tokens");
  for (const SamplingCase& c : BadSamplings()) {
    Sampling s = ok;
    c.mutate(s);
    ExpectInvalid(status_of(MakePrefill(prompt, s, dest, "h")), c.field, c.what);
  }
  {
    v1::PrefillRequest req = MakePrefill(prompt, ok, "", "h");
    ExpectInvalid(status_of(req), "destination", "empty destination.address");
    req = MakePrefill(prompt, ok, dest, "");
    ExpectInvalid(status_of(req), "destination", "empty destination.handle");
    req = MakePrefill(prompt, ok, dest, "h");
    req.set_max_chunk_bytes(1000);
    ExpectInvalid(status_of(req), "max_chunk_bytes", "max_chunk_bytes 1000");
    req.set_max_chunk_bytes(17u << 20);
    ExpectInvalid(status_of(req), "max_chunk_bytes", "max_chunk_bytes 17 MiB");
    req = MakePrefill(prompt, ok, dest, "h");
    req.set_return_logprobs(true);
    req.set_top_logprobs(21);
    ExpectInvalid(status_of(req), "top_logprobs", "top_logprobs 21");
    // rng_draws past the context once looped 2^64 times on the engine thread: every later
    // prefill hung and SIGTERM could not drain the worker.
    req = MakePrefill(prompt, ok, dest, "h");
    req.set_rng_draws(~uint64_t{0});
    ExpectInvalid(status_of(req), "rng_draws", "rng_draws 2^64-1");
    req.set_rng_draws(kMaxContext + 1);
    ExpectInvalid(status_of(req), "rng_draws", "rng_draws max_context + 1");
  }
  {
    v1::DecodeRequest local = MakeLocalDecode(prompt, ok, 8);
    local.set_rng_draws(~uint64_t{0});
    ExpectInvalid(DecodeStatus(*both_, local), "rng_draws", "local decode rng_draws 2^64-1");
  }
  ExpectIdle(*both_);
  ExpectIdle(*decode_);
  ExpectStillServing(*both_);
}

TEST_F(ValidationTest, WrongRoleIsFailedPrecondition) {
  const Sampling ok = Greedy();
  const std::vector<uint32_t> prompt = PromptIds(10, 3);
  // Prefill on a decode-only worker.
  grpc::Status st =
      RunPrefill(*decode_, MakePrefill(prompt, ok, decode_->address(), "h"), absl::Seconds(10));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << StatusString(st);
  // Decode (handle) and PushState on a prefill-only worker.
  st = DecodeStatus(*prefill_, MakeHandleDecode(NewHandle(), 10, ok, 8));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << StatusString(st);
  st = PushChunks(*prefill_, NewHandle(), {std::string(64, 'x')}, absl::Seconds(10));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << StatusString(st);
  // local_prompt needs role both.
  st = DecodeStatus(*decode_, MakeLocalDecode(prompt, ok, 8));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << StatusString(st);
  st = DecodeStatus(*prefill_, MakeLocalDecode(prompt, ok, 8));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << StatusString(st);
  for (Worker* w : {prefill_, decode_}) ExpectIdle(*w);
  // Both still serve their role: a handoff P -> D matches sambay-run.
  GenerateSpec spec;
  spec.prompt = prompt;
  spec.max_new_tokens = 12;
  auto ref = ReferenceGenerate(spec.prompt, spec.sampling, spec.max_new_tokens, {}, dir_->path());
  ASSERT_TRUE(ref.ok()) << ref.status();
  GenerateResult r = DisaggregatedGenerate(*prefill_, *decode_, spec);
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.tokens, *ref);
  for (Worker* w : {prefill_, decode_}) ExpectIdle(*w);
}

// A prefill whose destination cannot take the state fails with the destination's status, and
// both workers are left idle.
TEST_F(ValidationTest, PrefillToUnknownHandleFailsCleanly) {
  const std::vector<uint32_t> prompt = PromptIds(10, 3);
  uint32_t first = 0;
  grpc::Status st =
      RunPrefill(*prefill_, MakePrefill(prompt, Greedy(), decode_->address(), "never-reserved"),
                 absl::Seconds(10), &first);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << StatusString(st);
  // Nothing listens on port 1: the push cannot connect.
  st = RunPrefill(*prefill_, MakePrefill(prompt, Greedy(), "127.0.0.1:1", "h"), absl::Seconds(10),
                  &first);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << StatusString(st);
  for (Worker* w : {prefill_, decode_}) ExpectIdle(*w);
}

}  // namespace
}  // namespace sambay::testing
