#include "engine/safetensors.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_util.h"

namespace sambay {
namespace {

using sambay::testing::MakeTempDirPath;
using sambay::testing::ReadFileBytes;
using sambay::testing::WriteFileBytes;

using ::testing::AllOf;
using ::testing::HasSubstr;

std::string LengthPrefix(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A file with the given header text (length taken from the text) and data bytes.
std::string RawFile(const std::string& header, const std::string& data) {
  return LengthPrefix(header.size()) + header + data;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDirPath("safetensors_test_");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes a file with `header` and `data_bytes` zero bytes of data, opens it, expects failure
  // with `code`, and returns the message.
  std::string ExpectOpenError(const std::string& header, size_t data_bytes, absl::StatusCode code) {
    const std::string path = Path("bad.safetensors");
    WriteFileBytes(path, RawFile(header, std::string(data_bytes, '\0')));
    auto file = SafetensorsFile::Open(path);
    EXPECT_FALSE(file.ok()) << "header: " << header;
    if (file.ok()) return "";
    EXPECT_EQ(file.status().code(), code) << file.status() << " header: " << header;
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(path));
    return std::string(file.status().message());
  }

  std::string dir_;
};

TEST(ShapeStringTest, Formats) {
  EXPECT_EQ(ShapeString({}), "[]");
  EXPECT_EQ(ShapeString({3}), "[3]");
  EXPECT_EQ(ShapeString({2, 0, 5}), "[2, 0, 5]");
}

TEST_F(SafetensorsTest, RoundTripF32Bf16F16) {
  const std::vector<float> f32 = {1.5f, -2.25f, 3.0e-8f, 1.0e30f, -0.0f, 7.0f};
  std::vector<uint16_t> bf16, f16;
  for (int i = 0; i < 7; ++i) bf16.push_back(F32ToBf16(0.37f * static_cast<float>(i) - 1.0f));
  for (int i = 0; i < 4; ++i) f16.push_back(static_cast<uint16_t>(0x3c00 + 17 * i));
  const std::string path = Path("model.safetensors");
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "hello"}};
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"b.f16", DType::kF16, {2, 2}, f16.data()},
                                {"a.bf16", DType::kBF16, {7}, bf16.data()},
                                {"z.f32", DType::kF32, {2, 1, 3}, f32.data()}},
                               metadata)
                  .ok());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  auto file_or = SafetensorsFile::Open(path);
  ASSERT_TRUE(file_or.ok()) << file_or.status();
  const SafetensorsFile& file = **file_or;
  EXPECT_EQ(file.path(), path);
  EXPECT_EQ(file.metadata(), metadata);
  ASSERT_EQ(file.tensors().size(), 3u);

  const TensorInfo& a = file.tensors().at("a.bf16");
  EXPECT_EQ(a.name, "a.bf16");
  EXPECT_EQ(a.dtype, DType::kBF16);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{7}));
  EXPECT_EQ(a.nbytes, 14);
  EXPECT_EQ(a.file, path);
  EXPECT_EQ(std::memcmp(a.data, bf16.data(), 14), 0);

  const TensorInfo& b = file.tensors().at("b.f16");
  EXPECT_EQ(b.dtype, DType::kF16);
  EXPECT_EQ(b.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(b.nbytes, 8);
  EXPECT_EQ(std::memcmp(b.data, f16.data(), 8), 0);

  const TensorInfo& z = file.tensors().at("z.f32");
  EXPECT_EQ(z.dtype, DType::kF32);
  EXPECT_EQ(z.shape, (std::vector<int64_t>{2, 1, 3}));
  EXPECT_EQ(z.numel(), 6);
  EXPECT_EQ(z.nbytes, 24);
  EXPECT_EQ(std::memcmp(z.data, f32.data(), 24), 0);
  for (const auto& [name, info] : file.tensors()) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(info.data) % DTypeSize(info.dtype), 0u) << name;
  }
}

TEST_F(SafetensorsTest, HeaderIsPaddedAndOffsetsFollowWriteOrder) {
  const std::vector<float> x(3, 1.0f);
  const std::vector<uint16_t> y(5, 0x3f80);
  const std::string path = Path("t.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(
          path, {{"zz", DType::kF32, {3}, x.data()}, {"aa", DType::kBF16, {5}, y.data()}}, {})
          .ok());
  const std::string bytes = ReadFileBytes(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  EXPECT_EQ((8 + n) % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + 12 + 10);
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["zz"]["data_offsets"], nlohmann::json({0, 12}));
  EXPECT_EQ(header["aa"]["data_offsets"], nlohmann::json({12, 22}));
  EXPECT_EQ(header["aa"]["dtype"], "BF16");
  EXPECT_FALSE(header.contains("__metadata__"));
  const std::string text = bytes.substr(8, n);
  EXPECT_EQ(text.find_last_not_of(' '), text.rfind('}'));
}

TEST_F(SafetensorsTest, ScalarAndEmptyTensors) {
  const float s = 42.0f;
  const std::string path = Path("t.safetensors");
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"scalar", DType::kF32, {}, &s},
                                {"empty", DType::kBF16, {0, 4}, nullptr},
                                {"empty2", DType::kF32, {0}, nullptr}},
                               {})
                  .ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorInfo& scalar = (*file)->tensors().at("scalar");
  EXPECT_TRUE(scalar.shape.empty());
  EXPECT_EQ(scalar.numel(), 1);
  float v;
  std::memcpy(&v, scalar.data, 4);
  EXPECT_EQ(v, 42.0f);
  EXPECT_EQ((*file)->tensors().at("empty").numel(), 0);
  EXPECT_EQ((*file)->tensors().at("empty").nbytes, 0);
  EXPECT_EQ((*file)->tensors().at("empty2").nbytes, 0);
}

TEST_F(SafetensorsTest, UnalignedDataIsCopiedToAlignedBuffer) {
  // 8 + header length is odd, so the data region (and both tensors) start misaligned.
  std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[8,14]}})";
  if (header.size() % 2 == 0) header += ' ';
  const float fa[2] = {3.25f, -1.0f};
  const uint16_t fb[3] = {0x1234, 0xabcd, 0x3f80};
  std::string data(reinterpret_cast<const char*>(fa), 8);
  data.append(reinterpret_cast<const char*>(fb), 6);
  const std::string path = Path("unaligned.safetensors");
  WriteFileBytes(path, RawFile(header, data));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorInfo& a = (*file)->tensors().at("a");
  const TensorInfo& b = (*file)->tensors().at("b");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data) % 4, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data) % 2, 0u);
  EXPECT_EQ(std::memcmp(a.data, fa, 8), 0);
  EXPECT_EQ(std::memcmp(b.data, fb, 6), 0);
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  const std::string path = Path("nope.safetensors");
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(path));
}

TEST_F(SafetensorsTest, DirectoryIsRejected) {
  auto file = SafetensorsFile::Open(dir_);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(dir_));
}

TEST_F(SafetensorsTest, FileShorterThan8Bytes) {
  const std::string path = Path("short.safetensors");
  WriteFileBytes(path, std::string("\x02\0\0\0", 4));
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(path));
}

TEST_F(SafetensorsTest, HeaderLengthLargerThanFile) {
  const std::string path = Path("h.safetensors");
  WriteFileBytes(path, LengthPrefix(1000) + "{}");
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(path));
}

TEST_F(SafetensorsTest, HeaderLengthAbsurd) {
  for (uint64_t n : {(uint64_t{100} << 20) + 1, uint64_t{1} << 40, ~uint64_t{0}}) {
    const std::string path = Path("h.safetensors");
    WriteFileBytes(path, LengthPrefix(n) + "{}");
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << n;
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(path));
  }
}

TEST_F(SafetensorsTest, HeaderNotJsonOrNotObject) {
  for (const char* h : {"", "{", "{\"a\":}", "not json", "{\"a\":1} trailing", "\xff\xfe"}) {
    ExpectOpenError(h, 0, absl::StatusCode::kInvalidArgument);
  }
  for (const char* h : {"[]", "\"str\"", "42", "null", "true"}) {
    EXPECT_THAT(ExpectOpenError(h, 0, absl::StatusCode::kInvalidArgument),
                HasSubstr("not a JSON object"));
  }
}

TEST_F(SafetensorsTest, EntryMissingFieldsOrWrongTypes) {
  const std::vector<std::string> bad_entries = {
      R"("x")",
      R"([1,2])",
      R"({"shape":[2],"data_offsets":[0,8]})",
      R"({"dtype":"F32","data_offsets":[0,8]})",
      R"({"dtype":"F32","shape":[2]})",
      R"({"dtype":32,"shape":[2],"data_offsets":[0,8]})",
      R"({"dtype":"F32","shape":"2","data_offsets":[0,8]})",
      R"({"dtype":"F32","shape":{"d":2},"data_offsets":[0,8]})",
      R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})",
      R"({"dtype":"F32","shape":[[2]],"data_offsets":[0,8]})",
      R"({"dtype":"F32","shape":[null],"data_offsets":[0,8]})",
      R"({"dtype":"F32","shape":[2],"data_offsets":"0,8"})",
      R"({"dtype":"F32","shape":[2],"data_offsets":[0]})",
      R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,8]})",
      R"({"dtype":"F32","shape":[2],"data_offsets":["0",8]})",
      R"({"dtype":"F32","shape":[2],"data_offsets":[0.0,8]})",
      R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})",
      R"({"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]})",
  };
  for (const std::string& entry : bad_entries) {
    const std::string msg =
        ExpectOpenError(R"({"my.tensor":)" + entry + "}", 16, absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(msg, HasSubstr("my.tensor")) << entry;
  }
}

TEST_F(SafetensorsTest, BadShapeDims) {
  for (const char* shape : {"[-1]", "[2,-3]", "[2.5]", "[2.0]", "[1e3]", "[9223372036854775808]",
                            "[18446744073709551615]"}) {
    const std::string header =
        std::string(R"({"w":{"dtype":"F32","shape":)") + shape + R"(,"data_offsets":[0,8]}})";
    EXPECT_THAT(ExpectOpenError(header, 8, absl::StatusCode::kInvalidArgument), HasSubstr("'w'"))
        << shape;
  }
}

TEST_F(SafetensorsTest, NumelOverflow) {
  for (const char* shape : {"[4294967296,4294967296]", "[9223372036854775807,2]",
                            "[4611686018427387904]", "[3,3074457345618258603]"}) {
    const std::string header =
        std::string(R"({"big":{"dtype":"BF16","shape":)") + shape + R"(,"data_offsets":[0,8]}})";
    EXPECT_THAT(ExpectOpenError(header, 8, absl::StatusCode::kInvalidArgument),
                HasSubstr("overflow"))
        << shape;
  }
}

TEST_F(SafetensorsTest, UnknownDtypeNamesTensorAndDtype) {
  for (const char* dtype : {"F64", "I64", "I8", "U8", "BOOL", "f32", ""}) {
    const std::string header =
        std::string(R"({"layer.w":{"dtype":")") + dtype + R"(","shape":[1],"data_offsets":[0,8]}})";
    const std::string msg = ExpectOpenError(header, 8, absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(msg, HasSubstr("layer.w"));
    EXPECT_THAT(msg, HasSubstr(std::string("'") + dtype + "'"));
  }
}

TEST_F(SafetensorsTest, DataOffsetsOutOfRangeIsDataLoss) {
  const std::string msg =
      ExpectOpenError(R"({"ok":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                      R"("far":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                      8, absl::StatusCode::kDataLoss);
  EXPECT_THAT(msg, HasSubstr("'far'"));
  ExpectOpenError(R"({"far":{"dtype":"F32","shape":[1],"data_offsets":[100,104]}})", 8,
                  absl::StatusCode::kDataLoss);
}

TEST_F(SafetensorsTest, DataOffsetsEndBeforeBegin) {
  EXPECT_THAT(ExpectOpenError(R"({"rev":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8,
                              absl::StatusCode::kInvalidArgument),
              AllOf(HasSubstr("'rev'"), HasSubstr("before begin")));
}

TEST_F(SafetensorsTest, DataOffsetsSizeMismatch) {
  for (const char* offsets : {"[0,4]", "[0,12]", "[0,0]"}) {
    const std::string header = std::string(R"({"mis":{"dtype":"F32","shape":[2],)") +
                               R"("data_offsets":)" + offsets + "}}";
    EXPECT_THAT(ExpectOpenError(header, 16, absl::StatusCode::kInvalidArgument), HasSubstr("'mis'"))
        << offsets;
  }
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  const std::string msg =
      ExpectOpenError(R"({"first":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("second":{"dtype":"BF16","shape":[2],"data_offsets":[6,10]}})",
                      16, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(msg, HasSubstr("first"));
  EXPECT_THAT(msg, HasSubstr("second"));
  EXPECT_THAT(msg, HasSubstr("overlap"));
  ExpectOpenError(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                  16, absl::StatusCode::kInvalidArgument);
}

TEST_F(SafetensorsTest, MetadataMustBeStringMap) {
  for (const char* meta : {R"([])", R"("x")", R"({"a":1})", R"({"a":{"b":"c"}})", "null"}) {
    const std::string header = std::string(R"({"__metadata__":)") + meta + "}";
    EXPECT_THAT(ExpectOpenError(header, 0, absl::StatusCode::kInvalidArgument),
                HasSubstr("__metadata__"))
        << meta;
  }
  const std::string path = Path("meta.safetensors");
  WriteFileBytes(path, RawFile(R"({"__metadata__":{"format":"pt","k":""}})", ""));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_EQ((*file)->metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"k", ""}}));
}

TEST_F(SafetensorsTest, TruncatedAtEveryLength) {
  const std::vector<float> a = {1, 2, 3};
  const std::vector<uint16_t> b = {4, 5};
  const std::string path = Path("full.safetensors");
  ASSERT_TRUE(WriteSafetensors(
                  path, {{"a", DType::kF32, {3}, a.data()}, {"b", DType::kBF16, {2}, b.data()}},
                  {{"k", "v"}})
                  .ok());
  const std::string bytes = ReadFileBytes(path);
  ASSERT_TRUE(SafetensorsFile::Open(path).ok());
  const std::string cut = Path("cut.safetensors");
  for (size_t len = 0; len < bytes.size(); ++len) {
    WriteFileBytes(cut, bytes.substr(0, len));
    auto file = SafetensorsFile::Open(cut);
    ASSERT_FALSE(file.ok()) << "length " << len;
    EXPECT_EQ(file.status().code(), absl::StatusCode::kDataLoss) << len << ": " << file.status();
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(cut));
  }
}

TEST_F(SafetensorsTest, CorruptedBytesNeverCrash) {
  const std::vector<float> a = {1, 2, 3, 4};
  const std::string path = Path("full.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"a", DType::kF32, {2, 2}, a.data()}}, {}).ok());
  const std::string bytes = ReadFileBytes(path);
  const std::string bad = Path("bad.safetensors");
  int failures = 0;
  for (size_t pos = 0; pos < bytes.size(); ++pos) {
    for (int v : {0x00, 0x22, 0x2c, 0x5d, 0x7d, 0x80, 0xff}) {
      std::string copy = bytes;
      copy[pos] = static_cast<char>(v);
      WriteFileBytes(bad, copy);
      auto file = SafetensorsFile::Open(bad);
      if (!file.ok()) {
        ++failures;
        EXPECT_THAT(std::string(file.status().message()), HasSubstr(bad));
      } else {
        for (const auto& [name, info] : (*file)->tensors()) {
          EXPECT_EQ(info.nbytes, info.numel() * DTypeSize(info.dtype));
        }
      }
    }
  }
  EXPECT_GT(failures, 0);
}

TEST_F(SafetensorsTest, WriterRejectsBadInputAndReportsPath) {
  const float x = 1.0f;
  const std::string path = Path("w.safetensors");
  auto dup = WriteSafetensors(path, {{"a", DType::kF32, {}, &x}, {"a", DType::kF32, {}, &x}}, {});
  EXPECT_EQ(dup.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(dup.message()), HasSubstr(path));
  EXPECT_EQ(WriteSafetensors(path, {{"a", DType::kF32, {2}, nullptr}}, {}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(path, {{"a", DType::kF32, {-1}, &x}}, {}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(path, {{"__metadata__", DType::kF32, {}, &x}}, {}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(path, {{"bad\xff", DType::kF32, {}, &x}}, {}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(path));

  const std::string missing = Path("no/such/dir/w.safetensors");
  auto st = WriteSafetensors(missing, {{"a", DType::kF32, {}, &x}}, {});
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr(missing));
}

TEST_F(SafetensorsTest, WriterOverwritesExistingFile) {
  const float x = 1.0f, y = 2.0f;
  const std::string path = Path("w.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"x", DType::kF32, {}, &x}}, {}).ok());
  ASSERT_TRUE(WriteSafetensors(path, {{"y", DType::kF32, {}, &y}}, {}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 1u);
  EXPECT_EQ((*file)->tensors().count("y"), 1u);
}

}  // namespace
}  // namespace sambay
