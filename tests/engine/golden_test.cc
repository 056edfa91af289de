// Golden logits: the engine against the independent float64 NumPy reference
// (tools/reference/sambay_ref.py), on checkpoints made by sambay-mkmodel. The golden files
// come from tools/reference/make_goldens.py. Prompts are 2-6x the sliding window.
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/npy.h"
#include "engine/generate.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_util.h"

namespace sambay {
namespace {

using sambay::testing::RelErr;
using sambay::testing::TempDir;

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, LogitsAndGreedyIdsMatchReference) {
  const std::string dir = absl::StrCat(SAMBAY_SOURCE_DIR, "/tests/data/golden/", GetParam());
  std::ifstream in(dir + "/manifest.json");
  ASSERT_TRUE(in) << dir;
  std::stringstream ss;
  ss << in.rdbuf();
  const nlohmann::json m = nlohmann::json::parse(ss.str());

  TempDir tmp;
  std::string cmd = absl::StrCat(SAMBAY_BIN_DIR, "/sambay-mkmodel --out ", tmp.path());
  for (const auto& a : m["mkmodel_args"]) absl::StrAppend(&cmd, " ", a.get<std::string>());
  absl::StrAppend(&cmd, " 2>/dev/null");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto model = Model::Load(tmp.path(), {.num_threads = 2});
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ((*model)->fingerprint(), m["fingerprint"].get<std::string>())
      << "sambay-mkmodel now makes different weights: regenerate the goldens with "
         "tools/reference/make_goldens.py";

  auto golden = ReadNpy(dir + "/logits.npy");
  ASSERT_TRUE(golden.ok()) << golden.status();
  const std::vector<int32_t> ids = m["ids"].get<std::vector<int32_t>>();
  const int64_t vocab = (*model)->config().vocab_size;
  ASSERT_EQ(golden->shape, (std::vector<int64_t>{static_cast<int64_t>(ids.size()), vocab}));

  auto state = (*model)->NewState();
  std::vector<float> logits;
  ASSERT_TRUE((*model)->Score(*state, ids, &logits).ok());
  double worst = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    const double e = RelErr(logits.data() + t * vocab, golden->data.data() + t * vocab, vocab);
    worst = std::max(worst, e);
    EXPECT_LE(e, 1e-4) << "position " << t;
  }
  RecordProperty("max_rel_err", std::to_string(worst));
  std::printf("[ golden %s ] T=%zu max relative error %.3g\n", GetParam().c_str(), ids.size(),
              worst);

  // Greedy generation gives the reference's ids.
  GenerateOptions g;
  g.max_new_tokens = static_cast<int64_t>(m["gen_ids"].size());
  const std::vector<int32_t> prompt = m["gen_prompt"].get<std::vector<int32_t>>();
  auto gen_state = (*model)->NewState();
  auto out = Generate(**model, *gen_state, prompt, g);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, m["gen_ids"].get<std::vector<int32_t>>());
}

INSTANTIATE_TEST_SUITE_P(Variants, GoldenTest,
                         ::testing::Values("tiny8_f32", "tiny12_f32", "tiny8_bf16", "tiny8_f16",
                                           "gqa4_f32"));

}  // namespace
}  // namespace sambay
