// `sambay-run --tp N`: the same ids as --tp 1 (greedy and seeded, one-shot and chunked
// prefill), the TP size in `info`, and one clear error line for a TP size the model cannot use.
#include <algorithm>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "tests/engine/test_util.h"

namespace sambay {
namespace {

using sambay::testing::ReadFileBytes;
using sambay::testing::TempDir;

using sambay::testing::RunResult;
using sambay::testing::RunTool;

class TpCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new TempDir();
    // 16 heads / 8 KV heads: 4 differential-attention KV pairs, so TP 1, 2 and 4 all work.
    RunResult r = RunTool(absl::StrCat("sambay-mkmodel --out ", tmp_->Sub("model"),
                                       " --preset tiny --heads 16 --kv-heads 8 --seed 6 "
                                       "--dtype bf16 --threads 2"),
                          *tmp_);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static void TearDownTestSuite() { delete tmp_; }
  static std::string Model() { return tmp_->Sub("model"); }
  static TempDir* tmp_;
};
TempDir* TpCliTest::tmp_ = nullptr;

TEST_F(TpCliTest, GenerateIdsDoNotDependOnTp) {
  const std::string ids = "3,14,15,92,65,35,89,79,32,38,46,26,43,38,32,79,50,28,84,19,71";
  for (const std::string flags : {"--max-new-tokens 24", "--max-new-tokens 24 --prefill-chunk 5",
                                  "--max-new-tokens 16 --temperature 0.8 --top-p 0.9 --seed 11"}) {
    std::string want;
    for (int tp : {1, 2, 4}) {
      RunResult r = RunTool(absl::StrCat("sambay-run generate --model ", Model(), " --ids ", ids,
                                         " ", flags, " --threads 4 --tp ", tp),
                            *tmp_);
      ASSERT_EQ(r.exit_code, 0) << r.err;
      EXPECT_NE(r.err.find(absl::StrCat("tp ", tp, ")")), std::string::npos) << r.err;
      if (tp == 1) {
        want = r.out;
        EXPECT_FALSE(want.empty());
      } else {
        EXPECT_EQ(r.out, want) << flags << " --tp " << tp;
      }
    }
  }
}

TEST_F(TpCliTest, InfoShowsTheTpSize) {
  RunResult r = RunTool(absl::StrCat("sambay-run info --model ", Model(), " --tp 2"), *tmp_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\ntp 2\n"), std::string::npos) << r.out;
}

TEST_F(TpCliTest, UnusableTpIsOneErrorLine) {
  for (const char* tp : {"3", "0", "8"}) {
    RunResult r = RunTool(
        absl::StrCat("sambay-run generate --model ", Model(), " --ids 1,2,3 --tp ", tp), *tmp_);
    EXPECT_EQ(r.exit_code, 1) << tp;
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find("sambay-run: error: tp: "), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace sambay
