// Command-line behaviour of sambay-run and sambay-mkmodel on good and bad input: the documented
// output forms, and one clear error line plus a non-zero exit for every bad checkpoint.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/npy.h"
#include "engine/checkpoint.h"
#include "engine/weights.h"
#include "tests/engine/test_util.h"
#include "tokenizer/pretokenize.h"

namespace sambay {
namespace {

using sambay::testing::ReadFileBytes;
using sambay::testing::TempDir;

using sambay::testing::RunResult;
using sambay::testing::RunTool;

int CountLines(const std::string& s) {
  return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = tmp_.Sub("model");
    ASSERT_EQ(
        RunTool("sambay-mkmodel --out " + model_ + " --preset tiny --seed 1 --dtype f32", tmp_)
            .exit_code,
        0);
  }
  // Copies the good model into a new dir for corruption.
  std::string CopyModel(const std::string& name) {
    const std::string d = tmp_.Sub(name);
    std::filesystem::copy(model_, d, std::filesystem::copy_options::recursive);
    return d;
  }
  // Expects exactly one stderr line containing `needle`, exit code 1, empty stdout.
  void ExpectOneLineError(const std::string& dir, const std::string& needle) {
    RunResult r = RunTool("sambay-run generate --model " + dir + " --ids 1,2,3", tmp_);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_EQ(CountLines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find("sambay-run: error: "), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << "wanted \"" << needle << "\" in " << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
  TempDir tmp_;
  std::string model_;
};

TEST_F(CliTest, GeneratePrintsIdsOnOneStdoutLine) {
  RunResult r = RunTool("sambay-run generate --model " + model_ +
                            " --ids 3,14,15 --max-new-tokens 16 --temperature 0 --prefill-chunk 2",
                        tmp_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(CountLines(r.out), 1);
  std::istringstream ss(r.out);
  int n = 0, id;
  while (ss >> id) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, 320);
    ++n;
  }
  EXPECT_EQ(n, 16);
  // Same ids without chunking.
  RunResult r2 =
      RunTool("sambay-run generate --model " + model_ + " --ids 3,14,15 --max-new-tokens 16", tmp_);
  EXPECT_EQ(r.out, r2.out);
}

TEST_F(CliTest, TextPromptAndChatStreamText) {
  // tokenize: the byte tokenizer of the tiny model, chat markers as special ids.
  RunResult r = RunTool("sambay-run tokenize --model " + model_ + " --chat hi", tmp_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "258 104 105 260 259\n");
  r = RunTool("sambay-run tokenize --model " + model_ + " --prompt '<|user|>hi'", tmp_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "258 104 105\n");
  // generate --chat prints text (one line, valid UTF-8), the same as --ids on the same prompt
  // decoded, up to the first stop token.
  r = RunTool(
      "sambay-run generate --model " + model_ + " --chat hi --max-new-tokens 24 --ignore-eos",
      tmp_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  RunResult ids = RunTool(
      "sambay-run generate --model " + model_ + " --ids 258,104,105,260,259 --max-new-tokens 24",
      tmp_);
  ASSERT_EQ(ids.exit_code, 0) << ids.err;
  std::istringstream ss(ids.out);
  std::string bytes;
  int id;
  while (ss >> id) {
    if (id < 256) bytes += static_cast<char>(id);
  }
  // The CLI replaces invalid sequences with U+FFFD; compare only when the bytes are valid.
  if (ValidateUtf8(bytes).ok()) {
    EXPECT_EQ(r.out, bytes + "\n");
  }
  EXPECT_TRUE(ValidateUtf8(r.out).ok());
  r = RunTool("sambay-run generate --model " + model_ + " --prompt hi --chat hi", tmp_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("exactly one of"), std::string::npos) << r.err;
  r = RunTool("sambay-run generate --model " + model_ + " --prompt \"$(printf '\\377')\"", tmp_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--prompt"), std::string::npos) << r.err;
}

TEST_F(CliTest, ScoreWritesNpyOfAllPositions) {
  const std::string npy = tmp_.Sub("logits.npy");
  RunResult r = RunTool("sambay-run score --model " + model_ + " --ids 3,14,15 --out " + npy, tmp_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto a = ReadNpy(npy);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{3, 320}));
  const std::string header = ReadFileBytes(npy).substr(0, 80);
  EXPECT_NE(header.find("'descr': '<f4'"), std::string::npos);
}

TEST_F(CliTest, BadRequestsGiveOneLineErrors) {
  RunResult r = RunTool("sambay-run generate --model " + model_ + " --ids 1,x", tmp_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--ids"), std::string::npos) << r.err;
  r = RunTool("sambay-run generate --model " + model_ + " --ids 1,320", tmp_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("token id 320"), std::string::npos) << r.err;
  r = RunTool("sambay-run generate --model " + model_ + " --ids 1 --top-p 1.5", tmp_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("top_p"), std::string::npos) << r.err;
  r = RunTool("sambay-run frobnicate --model " + model_, tmp_);
  EXPECT_EQ(r.exit_code, 1);
  r = RunTool("sambay-mkmodel --out " + tmp_.Sub("x") + " --preset huge", tmp_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--preset"), std::string::npos) << r.err;
  r = RunTool("sambay-mkmodel --out " + tmp_.Sub("x") + " --layers 6", tmp_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("num_hidden_layers"), std::string::npos) << r.err;
}

TEST_F(CliTest, BadJsonConfig) {
  const std::string d = CopyModel("badjson");
  std::ofstream(d + "/config.json", std::ios::trunc) << "{\"model_type\": \"phi4flash\", ";
  ExpectOneLineError(d, "invalid JSON");
}

TEST_F(CliTest, ConfigFieldOfWrongTypeIsNamed) {
  const std::string d = CopyModel("badfield");
  std::string cfg = ReadFileBytes(d + "/config.json");
  const std::string from = "\"num_key_value_heads\": 2";
  cfg.replace(cfg.find(from), from.size(), "\"num_key_value_heads\": \"two\"");
  std::ofstream(d + "/config.json", std::ios::trunc) << cfg;
  ExpectOneLineError(d, "num_key_value_heads");
}

TEST_F(CliTest, MissingConfig) {
  const std::string d = CopyModel("nocfg");
  std::filesystem::remove(d + "/config.json");
  ExpectOneLineError(d, "config.json");
}

TEST_F(CliTest, TruncatedSafetensors) {
  const std::string d = CopyModel("trunc");
  const std::string f = d + "/model.safetensors";
  std::filesystem::resize_file(f, std::filesystem::file_size(f) - 1000);
  ExpectOneLineError(d, "model.safetensors");
}

TEST_F(CliTest, UnknownDtype) {
  const std::string d = CopyModel("dtype");
  std::string bytes = ReadFileBytes(d + "/model.safetensors");
  // Same length: the header stays well formed, one tensor claims F64.
  const size_t pos = bytes.find("\"F32\"");
  ASSERT_NE(pos, std::string::npos);
  bytes.replace(pos, 5, "\"F64\"");
  std::ofstream(d + "/model.safetensors", std::ios::binary | std::ios::trunc) << bytes;
  ExpectOneLineError(d, "F64");
}

// Rewrites the tiny model without `drop` and with `reshape` given a wrong shape.
std::string WriteVariant(const TempDir& tmp, const std::string& name, const std::string& drop,
                         const std::string& reshape) {
  auto config = PresetConfig("tiny");
  std::vector<std::vector<float>> storage;
  std::vector<TensorToWrite> tensors;
  for (const TensorSpec& s : ExpectedTensors(*config)) {
    if (s.name == drop) continue;
    std::vector<int64_t> shape = s.shape;
    if (s.name == reshape) shape[0] += 1;
    int64_t n = 1;
    for (int64_t x : shape) n *= x;
    storage.emplace_back(n, 0.01f);
    tensors.push_back({s.name, DType::kF32, shape, storage.back().data()});
  }
  const std::string d = tmp.Sub(name);
  EXPECT_TRUE(WriteCheckpoint(d, tensors, 1).ok());
  std::ofstream(d + "/config.json") << ModelConfigToJson(*config);
  return d;
}

TEST_F(CliTest, MissingTensorIsNamedWithItsShape) {
  const std::string d = WriteVariant(tmp_, "missing", "model.layers.3.attn.Wqkv.weight", "");
  ExpectOneLineError(d,
                     "missing tensor model.layers.3.attn.Wqkv.weight (expected shape [256, 128])");
}

TEST_F(CliTest, WrongShapeNamesBothShapes) {
  const std::string d = WriteVariant(tmp_, "shape", "", "model.layers.0.attn.A_log");
  ExpectOneLineError(d, "model.layers.0.attn.A_log has shape [257, 16], expected [256, 16]");
}

TEST_F(CliTest, UnknownTensorsAreReportedNotFatal) {
  const std::string d = CopyModel("extra");
  // Add a shard-free extra tensor by rewriting: unknown tensors only warn.
  auto config = PresetConfig("tiny");
  std::vector<std::vector<float>> storage;
  std::vector<TensorToWrite> tensors;
  for (const TensorSpec& s : ExpectedTensors(*config)) {
    int64_t n = 1;
    for (int64_t x : s.shape) n *= x;
    storage.emplace_back(n, 0.01f);
    tensors.push_back({s.name, DType::kF32, s.shape, storage.back().data()});
  }
  std::vector<float> extra(4, 1.0f);
  tensors.push_back({"model.critic_head.weight", DType::kF32, {4}, extra.data()});
  ASSERT_TRUE(WriteCheckpoint(d, tensors, 1).ok());
  RunResult r = RunTool("sambay-run generate --model " + d + " --ids 1,2 --max-new-tokens 2", tmp_);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("unknown tensors ignored: model.critic_head.weight"), std::string::npos)
      << r.err;
}

}  // namespace
}  // namespace sambay
