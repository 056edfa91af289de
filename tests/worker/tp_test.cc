// sambay-worker --tp: a TP=2 prefill worker hands sequences to a TP=1 decode worker and a TP=1
// prefill worker to a TP=2 decode worker (logical state on the wire, gathered and scattered by
// the engine); the tokens equal sambay-run's, and GetInfo reports each worker's TP size.
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/worker/process.h"
#include "tests/worker/worker_harness.h"

namespace sambay::testing {
namespace {

TEST(WorkerTpTest, HandoffBetweenTp2AndTp1MatchesSambayRun) {
  ScratchDir dir;
  const std::string model = dir.path() + "/model";
  // 16 heads / 8 KV heads (4 differential-attention KV pairs): TP 1, 2 and 4 all split it.
  auto made = RunToCompletion(BinDir() + "/sambay-mkmodel",
                              {"--out", model, "--preset", "tiny", "--heads", "16", "--kv-heads",
                               "8", "--seed", "12", "--dtype", "bf16", "--threads", "2"},
                              dir.path());
  ASSERT_TRUE(made.ok()) << made.status();
  auto p2 = Worker::Start("prefill", {"--model", model, "--tp", "2", "--threads", "2"}, dir.path(),
                          "prefill-tp2");
  ASSERT_TRUE(p2.ok()) << p2.status();
  auto d1 = Worker::Start("decode", {"--model", model}, dir.path(), "decode-tp1");
  ASSERT_TRUE(d1.ok()) << d1.status();
  auto p1 = Worker::Start("prefill", {"--model", model}, dir.path(), "prefill-tp1");
  ASSERT_TRUE(p1.ok()) << p1.status();
  auto d2 = Worker::Start("decode", {"--model", model, "--tp", "2", "--threads", "2"}, dir.path(),
                          "decode-tp2");
  ASSERT_TRUE(d2.ok()) << d2.status();
  Worker& prefill2 = **p2;
  Worker& decode1 = **d1;
  Worker& prefill1 = **p1;
  Worker& decode2 = **d2;
  for (Worker* w : {&prefill2, &decode2}) {
    auto info = w->GetInfo();
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->tp_size(), 2u);
  }
  auto info1 = decode1.GetInfo();
  ASSERT_TRUE(info1.ok()) << info1.status();
  EXPECT_EQ(info1->tp_size(), 1u);
  EXPECT_EQ(info1->fingerprint(), prefill2.GetInfo()->fingerprint());

  for (const Sampling& sampling : {Greedy(), Seeded(0.8f, 0.9f, 5)}) {
    for (size_t len : {size_t{5}, size_t{40}}) {  // shorter and longer than the window (16)
      GenerateSpec spec;
      spec.prompt = PromptIds(len, 100 + len);
      spec.sampling = sampling;
      spec.max_new_tokens = 12;
      std::vector<std::string> args = {
          "generate",         "--model", model,       "--ids", JoinIds(spec.prompt),
          "--max-new-tokens", "12",      "--threads", "1"};
      for (std::string& a : SambayRunSamplingArgs(sampling)) args.push_back(std::move(a));
      auto out = RunToCompletion(BinDir() + "/sambay-run", args, dir.path());
      ASSERT_TRUE(out.ok()) << out.status();
      std::vector<uint32_t> want;
      for (absl::string_view piece :
           absl::StrSplit(*out, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
        uint32_t id = 0;
        ASSERT_TRUE(absl::SimpleAtoi(piece, &id)) << piece;
        want.push_back(id);
      }
      ASSERT_EQ(want.size(), 12u);
      GenerateResult a = DisaggregatedGenerate(prefill2, decode1, spec);
      ASSERT_TRUE(a.status.ok()) << a.Describe() << prefill2.Logs();
      EXPECT_EQ(a.tokens, want) << "TP2 -> TP1, prompt " << len;
      GenerateResult b = DisaggregatedGenerate(prefill1, decode2, spec);
      ASSERT_TRUE(b.status.ok()) << b.Describe() << decode2.Logs();
      EXPECT_EQ(b.tokens, want) << "TP1 -> TP2, prompt " << len;
    }
  }
  for (Worker* w : {&prefill2, &decode1, &prefill1, &decode2}) ExpectIdle(*w);
}

}  // namespace
}  // namespace sambay::testing
