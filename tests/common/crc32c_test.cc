#include "common/crc32c.h"

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sambay {
namespace {

using crc32c_internal::ExtendHardware;
using crc32c_internal::ExtendPortable;
using crc32c_internal::HardwareAvailable;

uint32_t Portable(const void* data, size_t n) { return ExtendPortable(0, data, n); }

TEST(Crc32cTest, KnownVectors) {
  const std::string digits = "123456789";
  const std::vector<uint8_t> zeros(32, 0x00);
  const std::vector<uint8_t> ones(32, 0xFF);
  // Ascending / descending bytes: RFC 3720 (iSCSI) B.4 test vectors.
  std::vector<uint8_t> ascending(32), descending(32);
  for (int i = 0; i < 32; ++i) {
    ascending[i] = static_cast<uint8_t>(i);
    descending[i] = static_cast<uint8_t>(31 - i);
  }
  for (auto fn : {&Crc32c, &Portable}) {
    EXPECT_EQ(fn(digits.data(), digits.size()), 0xE3069283u);
    EXPECT_EQ(fn(zeros.data(), zeros.size()), 0x8A9136AAu);
    EXPECT_EQ(fn(ones.data(), ones.size()), 0x62A8AB43u);
    EXPECT_EQ(fn(ascending.data(), ascending.size()), 0x46DD794Eu);
    EXPECT_EQ(fn(descending.data(), descending.size()), 0x113FDB5Cu);
    EXPECT_EQ(fn(nullptr, 0), 0u);
    EXPECT_EQ(fn("a", 1), 0xC1D04330u);
  }
}

TEST(Crc32cTest, HardwareMatchesTableOnEveryLengthAndAlignment) {
  if (!HardwareAvailable()) GTEST_SKIP() << "no SSE4.2 on this CPU";
  std::mt19937_64 rng(42);
  std::vector<uint8_t> buf(300 + 16);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t n = 0; n <= 300; ++n) {
      const uint8_t* p = buf.data() + offset;
      const uint32_t seed = static_cast<uint32_t>(rng());
      ASSERT_EQ(ExtendHardware(0, p, n), ExtendPortable(0, p, n)) << offset << " " << n;
      ASSERT_EQ(ExtendHardware(seed, p, n), ExtendPortable(seed, p, n)) << offset << " " << n;
    }
  }
}

TEST(Crc32cTest, DispatchedMatchesTable) {
  std::mt19937_64 rng(7);
  std::vector<uint8_t> buf(4096 + 3);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{4096}}) {
    EXPECT_EQ(Crc32c(buf.data() + 3, n), Portable(buf.data() + 3, n)) << n;
  }
}

TEST(Crc32cTest, ExtendComposes) {
  std::mt19937_64 rng(1234);
  std::vector<uint8_t> buf(257);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  const uint32_t whole = Crc32c(buf.data(), buf.size());
  for (size_t split = 0; split <= buf.size(); ++split) {
    const uint32_t a = Crc32c(buf.data(), split);
    EXPECT_EQ(Crc32cExtend(a, buf.data() + split, buf.size() - split), whole) << split;
    EXPECT_EQ(ExtendPortable(ExtendPortable(0, buf.data(), split), buf.data() + split,
                             buf.size() - split),
              whole)
        << split;
  }
  // Three pieces, byte by byte.
  uint32_t c = 0;
  for (uint8_t b : buf) c = Crc32cExtend(c, &b, 1);
  EXPECT_EQ(c, whole);
}

TEST(Crc32cTest, DetectsSingleBitFlips) {
  std::vector<uint8_t> buf(64, 0x5A);
  const uint32_t ref = Crc32c(buf.data(), buf.size());
  for (size_t i = 0; i < buf.size() * 8; ++i) {
    buf[i / 8] ^= static_cast<uint8_t>(1u << (i % 8));
    EXPECT_NE(Crc32c(buf.data(), buf.size()), ref) << i;
    buf[i / 8] ^= static_cast<uint8_t>(1u << (i % 8));
  }
}

}  // namespace
}  // namespace sambay
