#include "engine/checkpoint.h"

#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_util.h"

namespace sambay {
namespace {

using sambay::testing::MakeTempDirPath;
using sambay::testing::ReadFileBytes;
using sambay::testing::WriteFileBytes;

using ::testing::HasSubstr;

// Deterministic test tensors of mixed dtypes and sizes; owns their data.
struct TestTensors {
  std::vector<std::vector<uint8_t>> storage;
  std::vector<TensorToWrite> list;

  void Add(const std::string& name, DType dtype, std::vector<int64_t> shape) {
    int64_t n = DTypeSize(dtype);
    for (int64_t d : shape) n *= d;
    std::vector<uint8_t> bytes(static_cast<size_t>(n));
    for (size_t i = 0; i < bytes.size(); ++i) {
      bytes[i] = static_cast<uint8_t>((i * 131 + name.size() * 17 + storage.size() * 7) & 0xff);
    }
    storage.push_back(std::move(bytes));
    list.push_back({name, dtype, std::move(shape), storage.back().data()});
  }
};

TestTensors MakeTensors() {
  TestTensors t;
  t.storage.reserve(16);
  t.Add("model.embed_tokens.weight", DType::kBF16, {64, 16});
  t.Add("model.layers.0.attn.A_log", DType::kF32, {8, 4});
  t.Add("model.layers.0.attn.D", DType::kF32, {8});
  t.Add("model.layers.0.mlp.fc1.weight", DType::kBF16, {32, 16});
  t.Add("model.layers.1.attn.Wqkv.weight", DType::kF16, {48, 16});
  t.Add("model.layers.1.attn.Wqkv.bias", DType::kF16, {48});
  t.Add("model.final_layernorm.weight", DType::kBF16, {16});
  return t;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDirPath("checkpoint_test_");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string Sub(const std::string& name) const { return dir_ + "/" + name; }

  // Expects the checkpoint in `dir` to hold exactly `tensors`, bit-exact.
  void ExpectMatches(const Checkpoint& ckpt, const std::vector<TensorToWrite>& tensors) {
    ASSERT_EQ(ckpt.tensors().size(), tensors.size());
    int64_t total = 0;
    for (const TensorToWrite& t : tensors) {
      const TensorInfo* info = ckpt.Find(t.name);
      ASSERT_NE(info, nullptr) << t.name;
      EXPECT_EQ(info->name, t.name);
      EXPECT_EQ(info->dtype, t.dtype) << t.name;
      EXPECT_EQ(info->shape, t.shape) << t.name;
      ASSERT_EQ(info->nbytes, info->numel() * DTypeSize(t.dtype)) << t.name;
      EXPECT_EQ(std::memcmp(info->data, t.data, static_cast<size_t>(info->nbytes)), 0) << t.name;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(info->data) % DTypeSize(t.dtype), 0u);
      total += info->nbytes;
    }
    EXPECT_EQ(ckpt.total_bytes(), total);
  }

  std::string dir_;
};

TEST_F(CheckpointTest, SingleFileRoundTrip) {
  TestTensors t = MakeTensors();
  ASSERT_TRUE(WriteCheckpoint(dir_, t.list, 1).ok());
  EXPECT_TRUE(std::filesystem::exists(Sub("model.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(Sub("model.safetensors.index.json")));
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->num_files(), 1);
  ExpectMatches(**ckpt, t.list);
  EXPECT_EQ((*ckpt)->Find("no.such.tensor"), nullptr);
  EXPECT_EQ((*ckpt)->Find("model.layers.0.attn.D")->file, Sub("model.safetensors"));
}

TEST_F(CheckpointTest, ShardedMatchesSingle) {
  TestTensors t = MakeTensors();
  std::vector<std::string> per_shard_bytes;
  for (int shards : {1, 2, 3}) {
    const std::string dir = Sub(absl::StrCat("s", shards));
    ASSERT_TRUE(WriteCheckpoint(dir, t.list, shards).ok()) << shards;
    auto ckpt = Checkpoint::Open(dir);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    EXPECT_EQ((*ckpt)->num_files(), shards);
    ExpectMatches(**ckpt, t.list);
    std::string all;  // every tensor's name, dtype, shape and bytes, in name order
    for (const auto& [name, info] : (*ckpt)->tensors()) {
      all += name + "|" + std::string(DTypeName(info->dtype)) + ShapeString(info->shape) + "|";
      all.append(static_cast<const char*>(info->data), static_cast<size_t>(info->nbytes));
    }
    per_shard_bytes.push_back(all);
  }
  EXPECT_EQ(per_shard_bytes[0], per_shard_bytes[1]);
  EXPECT_EQ(per_shard_bytes[0], per_shard_bytes[2]);
}

TEST_F(CheckpointTest, ShardFilesAndIndexContents) {
  TestTensors t = MakeTensors();
  ASSERT_TRUE(WriteCheckpoint(dir_, t.list, 3).ok());
  for (int k = 1; k <= 3; ++k) {
    EXPECT_TRUE(
        std::filesystem::exists(Sub(absl::StrCat("model-0000", k, "-of-00003.safetensors"))));
  }
  EXPECT_FALSE(std::filesystem::exists(Sub("model.safetensors")));
  const auto index = nlohmann::json::parse(ReadFileBytes(Sub("model.safetensors.index.json")));
  int64_t total = 0;
  for (const auto& s : t.storage) total += static_cast<int64_t>(s.size());
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), total);
  ASSERT_EQ(index["weight_map"].size(), t.list.size());
  // Tensors are split in order into contiguous, non-empty groups.
  std::vector<std::string> files;
  for (const TensorToWrite& w : t.list)
    files.push_back(index["weight_map"][w.name].get<std::string>());
  EXPECT_EQ(files.front(), "model-00001-of-00003.safetensors");
  EXPECT_EQ(files.back(), "model-00003-of-00003.safetensors");
  for (size_t i = 1; i < files.size(); ++i) EXPECT_LE(files[i - 1], files[i]);
  EXPECT_EQ(std::set<std::string>(files.begin(), files.end()).size(), 3u);
}

TEST_F(CheckpointTest, ShardsAreBalancedByBytes) {
  TestTensors t;
  for (int i = 0; i < 12; ++i) t.Add(absl::StrCat("w", i), DType::kF32, {256});
  ASSERT_TRUE(WriteCheckpoint(dir_, t.list, 4).ok());
  const auto index = nlohmann::json::parse(ReadFileBytes(Sub("model.safetensors.index.json")));
  std::map<std::string, int> counts;
  for (const auto& [name, file] : index["weight_map"].items()) counts[file.get<std::string>()]++;
  ASSERT_EQ(counts.size(), 4u);
  for (const auto& [file, count] : counts) EXPECT_EQ(count, 3) << file;

  // One huge tensor first: the remaining shards still each get at least one tensor.
  TestTensors u;
  u.Add("huge", DType::kF32, {4096});
  u.Add("s1", DType::kF32, {1});
  u.Add("s2", DType::kF32, {1});
  const std::string dir = Sub("skewed");
  ASSERT_TRUE(WriteCheckpoint(dir, u.list, 3).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->num_files(), 3);
  ExpectMatches(**ckpt, u.list);
}

TEST_F(CheckpointTest, InvalidShardCounts) {
  TestTensors t = MakeTensors();
  for (int shards : {0, -1, 8, 100}) {
    const absl::Status st = WriteCheckpoint(dir_, t.list, shards);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << shards;
  }
  EXPECT_TRUE(WriteCheckpoint(Sub("seven"), t.list, 7).ok());
  EXPECT_EQ(WriteCheckpoint(Sub("empty"), {}, 1).code(), absl::StatusCode::kInvalidArgument);
  TestTensors dup;
  dup.Add("x", DType::kF32, {2});
  dup.Add("x", DType::kF32, {2});
  EXPECT_EQ(WriteCheckpoint(Sub("dup"), dup.list, 2).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CheckpointTest, CreatesMissingDirectory) {
  TestTensors t = MakeTensors();
  const std::string dir = Sub("a/b/c");
  ASSERT_TRUE(WriteCheckpoint(dir, t.list, 2).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ExpectMatches(**ckpt, t.list);
}

TEST_F(CheckpointTest, SingleFileWriteRemovesStaleIndex) {
  TestTensors t = MakeTensors();
  ASSERT_TRUE(WriteCheckpoint(dir_, t.list, 2).ok());
  TestTensors small;
  small.Add("only", DType::kF32, {3});
  ASSERT_TRUE(WriteCheckpoint(dir_, small.list, 1).ok());
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ExpectMatches(**ckpt, small.list);
}

TEST_F(CheckpointTest, EmptyDirectoryIsNotFound) {
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ckpt.status().message(),
            "no model.safetensors or model.safetensors.index.json in " + dir_);
  EXPECT_EQ(Checkpoint::Open(Sub("does-not-exist")).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CheckpointTest, IndexReferencesMissingFile) {
  TestTensors t = MakeTensors();
  ASSERT_TRUE(WriteCheckpoint(dir_, t.list, 2).ok());
  const std::string shard = Sub("model-00002-of-00002.safetensors");
  ASSERT_TRUE(std::filesystem::remove(shard));
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr(shard));
}

TEST_F(CheckpointTest, IndexTensorMissingFromFile) {
  TestTensors t = MakeTensors();
  ASSERT_TRUE(WriteCheckpoint(dir_, t.list, 1).ok());
  nlohmann::json index = {{"metadata", {{"total_size", 0}}},
                          {"weight_map", nlohmann::json::object()}};
  for (const TensorToWrite& w : t.list) index["weight_map"][w.name] = "model.safetensors";
  index["weight_map"]["model.ghost"] = "model.safetensors";
  WriteFileBytes(Sub("model.safetensors.index.json"), index.dump());
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr("model.ghost"));
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr(Sub("model.safetensors")));
}

TEST_F(CheckpointTest, FileHasExtraTensor) {
  TestTensors t = MakeTensors();
  ASSERT_TRUE(WriteCheckpoint(dir_, t.list, 1).ok());
  nlohmann::json index = {{"weight_map", nlohmann::json::object()}};
  for (size_t i = 1; i < t.list.size(); ++i) {
    index["weight_map"][t.list[i].name] = "model.safetensors";
  }
  WriteFileBytes(Sub("model.safetensors.index.json"), index.dump());
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr(t.list[0].name));
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr(Sub("model.safetensors")));
}

TEST_F(CheckpointTest, TensorInTwoFiles) {
  TestTensors t = MakeTensors();
  ASSERT_TRUE(WriteSafetensors(Sub("a.safetensors"), {t.list[0], t.list[1]}, {}).ok());
  ASSERT_TRUE(WriteSafetensors(Sub("b.safetensors"), {t.list[1], t.list[2]}, {}).ok());
  nlohmann::json index = {{"weight_map",
                           {{t.list[0].name, "a.safetensors"},
                            {t.list[1].name, "b.safetensors"},
                            {t.list[2].name, "b.safetensors"}}}};
  WriteFileBytes(Sub("model.safetensors.index.json"), index.dump());
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(ckpt.status().message());
  EXPECT_THAT(msg, HasSubstr(t.list[1].name));
  EXPECT_THAT(msg, HasSubstr(Sub("a.safetensors")));
  EXPECT_THAT(msg, HasSubstr(Sub("b.safetensors")));
}

TEST_F(CheckpointTest, MalformedIndex) {
  TestTensors t = MakeTensors();
  ASSERT_TRUE(WriteCheckpoint(dir_, t.list, 1).ok());
  const std::string index_path = Sub("model.safetensors.index.json");
  const std::vector<std::string> bad = {
      "",
      "{",
      "[]",
      "\"x\"",
      R"({"metadata":{}})",
      R"({"weight_map":[]})",
      R"({"weight_map":"model.safetensors"})",
      R"({"weight_map":{}})",
      R"({"weight_map":{"model.layers.0.attn.D":1}})",
      R"({"weight_map":{"model.layers.0.attn.D":null}})",
      R"({"weight_map":{"model.layers.0.attn.D":""}})",
      R"({"weight_map":{"model.layers.0.attn.D":"../model.safetensors"}})",
      R"({"weight_map":{"model.layers.0.attn.D":"sub/model.safetensors"}})",
      R"({"weight_map":{"model.layers.0.attn.D":"/etc/passwd"}})",
      R"({"weight_map":{"model.layers.0.attn.D":".."}})",
  };
  for (const std::string& text : bad) {
    WriteFileBytes(index_path, text);
    auto ckpt = Checkpoint::Open(dir_);
    ASSERT_FALSE(ckpt.ok()) << text;
    EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr(index_path)) << text;
  }
}

TEST_F(CheckpointTest, CorruptShardPropagatesError) {
  TestTensors t = MakeTensors();
  ASSERT_TRUE(WriteCheckpoint(dir_, t.list, 2).ok());
  const std::string shard = Sub("model-00001-of-00002.safetensors");
  const std::string bytes = ReadFileBytes(shard);
  WriteFileBytes(shard, bytes.substr(0, bytes.size() - 1));
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr(shard));
}

}  // namespace
}  // namespace sambay
