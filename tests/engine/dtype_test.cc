// Tests of engine/dtype.h: bf16 / f16 conversions against independent reference roundings
// (exhaustive over all 16-bit patterns where possible), DType names, ConvertToF32.
#include "engine/dtype.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sambay {
namespace {

constexpr uint32_t kSeed = 0x5eed0001u;

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The value of an f16 bit pattern computed from the IEEE definition. The magnitude pattern
// 0x7c00 (inf) is given the value 2^16 (the next step after 65504) so rounding can use it.
double F16Value(uint16_t h) {
  const double sign = (h & 0x8000u) ? -1.0 : 1.0;
  const int e = (h >> 10) & 0x1f;
  const int m = h & 0x3ff;
  if (e == 0) return sign * std::ldexp(m, -24);
  if (e == 31) return m == 0 ? sign * 65536.0 : std::numeric_limits<double>::quiet_NaN();
  return sign * std::ldexp(1024 + m, e - 25);
}

// Nearest-even f16 pattern for a non-NaN float, by search over the ordered f16 magnitudes.
uint16_t RefF32ToF16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000u : 0;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65536.0) return sign | 0x7c00u;
  uint32_t lo = 0, hi = 0x7c00u;  // largest h with value <= a lies in [lo, hi)
  while (hi - lo > 1) {
    const uint32_t mid = (lo + hi) / 2;
    if (F16Value(static_cast<uint16_t>(mid)) <= a) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const double below = a - F16Value(static_cast<uint16_t>(lo));
  const double above = F16Value(static_cast<uint16_t>(lo + 1)) - a;
  uint32_t r = lo;
  if (above < below || (above == below && (lo & 1u))) r = lo + 1;
  return static_cast<uint16_t>(sign | r);
}

// Nearest-even bf16 pattern for a non-NaN float: compares against the two bf16 neighbours.
uint16_t RefF32ToBf16(float f) {
  const uint32_t u = Bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t t = (u & 0x7fffffffu) >> 16;  // truncated magnitude
  const double a = std::fabs(static_cast<double>(f));
  const double lo = static_cast<double>(FromBits(t << 16));
  const double hi = t + 1 == 0x7f80u ? std::ldexp(1.0, 128) : FromBits((t + 1) << 16);
  uint32_t r = t;
  if (hi - a < a - lo || (hi - a == a - lo && (t & 1u))) r = t + 1;
  return static_cast<uint16_t>(sign | r);
}

TEST(DTypeTest, NamesRoundTrip) {
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
    const auto parsed = ParseDType(DTypeName(t));
    ASSERT_TRUE(parsed.has_value()) << DTypeName(t);
    EXPECT_EQ(*parsed, t);
  }
  EXPECT_EQ(DTypeName(DType::kF32), "F32");
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeName(DType::kF16), "F16");
  EXPECT_EQ(DTypeSize(DType::kF32), 4);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2);
  EXPECT_EQ(DTypeSize(DType::kF16), 2);
  for (const char* bad : {"", "f32", "bf16", "F64", "BF16 ", " F16", "F8_E4M3", "I32"}) {
    EXPECT_FALSE(ParseDType(bad).has_value()) << "'" << bad << "'";
  }
}

TEST(DTypeTest, Bf16ExactValuesAndSpecials) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80u);
  EXPECT_EQ(F32ToBf16(-2.0f), 0xc000u);
  EXPECT_EQ(F32ToBf16(0.0f), 0x0000u);
  EXPECT_EQ(F32ToBf16(-0.0f), 0x8000u);
  EXPECT_TRUE(std::signbit(Bf16ToF32(0x8000u)));
  EXPECT_EQ(Bf16ToF32(0x8000u), 0.0f);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(F32ToBf16(inf), 0x7f80u);
  EXPECT_EQ(F32ToBf16(-inf), 0xff80u);
  EXPECT_EQ(Bf16ToF32(0x7f80u), inf);
  EXPECT_EQ(Bf16ToF32(0xff80u), -inf);
  EXPECT_EQ(Bf16ToF32(0x3f80u), 1.0f);
  // Largest float: above the last bf16 midpoint, rounds to inf.
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::max()), 0x7f80u);
  EXPECT_EQ(F32ToBf16(FromBits(0x7f7f7fffu)), 0x7f7fu);
  // Float subnormals keep their upper bits.
  EXPECT_EQ(F32ToBf16(FromBits(0x00010000u)), 0x0001u);
  EXPECT_EQ(F32ToBf16(FromBits(0x00008000u)), 0x0000u);  // tie, even is 0
  EXPECT_EQ(F32ToBf16(FromBits(0x00018000u)), 0x0002u);  // tie, even is 2
}

TEST(DTypeTest, Bf16TiesToEven) {
  EXPECT_EQ(F32ToBf16(FromBits(0x3f808000u)), 0x3f80u);  // tie below even
  EXPECT_EQ(F32ToBf16(FromBits(0x3f818000u)), 0x3f82u);  // tie above to even
  EXPECT_EQ(F32ToBf16(FromBits(0x3f808001u)), 0x3f81u);
  EXPECT_EQ(F32ToBf16(FromBits(0x3f807fffu)), 0x3f80u);
  EXPECT_EQ(F32ToBf16(FromBits(0xbf818000u)), 0xbf82u);
  EXPECT_EQ(F32ToBf16(FromBits(0x3fffffffu)), 0x4000u);  // carries into the exponent
  // Every bf16 pattern's midpoint to its successor (where both are finite).
  for (uint32_t t = 0; t < 0x7f80u; ++t) {
    for (uint32_t s : {0u, 0x8000u}) {
      const uint32_t u = ((s | t) << 16) | 0x8000u;
      const uint16_t want = static_cast<uint16_t>(s | ((t & 1u) ? t + 1 : t));
      ASSERT_EQ(F32ToBf16(FromBits(u)), want) << std::hex << "u=0x" << u;
    }
  }
}

TEST(DTypeTest, Bf16AllPatternsRoundTrip) {
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    const float f = Bf16ToF32(static_cast<uint16_t>(b));
    EXPECT_EQ(Bits(f), b << 16);
    const uint16_t back = F32ToBf16(f);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(Bf16ToF32(back))) << std::hex << "b=0x" << b;
      ASSERT_EQ(back & 0x8000u, b & 0x8000u) << std::hex << "b=0x" << b;
    } else {
      ASSERT_EQ(back, b) << std::hex << "b=0x" << b;
    }
  }
}

TEST(DTypeTest, Bf16NanStaysNan) {
  // Payloads that would carry into inf (or wrap) under plain rounding.
  for (uint32_t u : {0x7f800001u, 0x7f807fffu, 0x7f808000u, 0x7fffffffu, 0xff800001u, 0xffffffffu,
                     0x7fc00000u, 0xffc00000u, 0x7f8000ffu}) {
    const uint16_t b = F32ToBf16(FromBits(u));
    EXPECT_TRUE(std::isnan(Bf16ToF32(b))) << std::hex << "u=0x" << u << " -> 0x" << b;
    EXPECT_EQ(b & 0x8000u, (u >> 16) & 0x8000u) << std::hex << "u=0x" << u;
  }
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(DTypeTest, Bf16RandomAgainstReference) {
  std::mt19937 rng(kSeed);
  SCOPED_TRACE(absl::StrCat("seed=", kSeed));
  for (int i = 0; i < 1000000; ++i) {
    const uint32_t u = rng();
    const float f = FromBits(u);
    if (std::isnan(f)) continue;
    ASSERT_EQ(F32ToBf16(f), RefF32ToBf16(f)) << std::hex << "u=0x" << u;
  }
}

TEST(DTypeTest, F16ToF32AllPatterns) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    const int e = (h >> 10) & 0x1f;
    const int m = h & 0x3ff;
    if (e == 31 && m != 0) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << "h=0x" << h;
    } else if (e == 31) {
      ASSERT_TRUE(std::isinf(f)) << std::hex << "h=0x" << h;
      ASSERT_EQ(std::signbit(f), (h & 0x8000u) != 0);
    } else {
      ASSERT_EQ(static_cast<double>(f), F16Value(static_cast<uint16_t>(h)))
          << std::hex << "h=0x" << h;
      ASSERT_EQ(std::signbit(f), (h & 0x8000u) != 0) << std::hex << "h=0x" << h;
    }
  }
}

TEST(DTypeTest, F16AllPatternsRoundTrip) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    const uint16_t back = F32ToF16(f);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(F16ToF32(back))) << std::hex << "h=0x" << h << " -> 0x" << back;
      ASSERT_EQ(back & 0x8000u, h & 0x8000u) << std::hex << "h=0x" << h;
    } else {
      ASSERT_EQ(back, h) << std::hex << "h=0x" << h;
    }
  }
}

TEST(DTypeTest, F16Specials) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(F32ToF16(0.0f), 0x0000u);
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000u);
  EXPECT_TRUE(std::signbit(F16ToF32(0x8000u)));
  EXPECT_EQ(F32ToF16(inf), 0x7c00u);
  EXPECT_EQ(F32ToF16(-inf), 0xfc00u);
  EXPECT_EQ(F32ToF16(1.0f), 0x3c00u);
  EXPECT_EQ(F32ToF16(-2.0f), 0xc000u);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bffu);
  EXPECT_EQ(F32ToF16(65519.0f), 0x7bffu);
  EXPECT_EQ(F32ToF16(FromBits(0x477fefffu)), 0x7bffu);  // just below 65520
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00u);               // tie with "65536": to even = inf
  EXPECT_EQ(F32ToF16(-65520.0f), 0xfc00u);
  EXPECT_EQ(F32ToF16(1e10f), 0x7c00u);
  EXPECT_EQ(F32ToF16(std::numeric_limits<float>::max()), 0x7c00u);
  EXPECT_EQ(F32ToF16(-std::numeric_limits<float>::max()), 0xfc00u);
  // Underflow keeps the sign.
  EXPECT_EQ(F32ToF16(1e-10f), 0x0000u);
  EXPECT_EQ(F32ToF16(-1e-10f), 0x8000u);
  EXPECT_EQ(F32ToF16(std::numeric_limits<float>::denorm_min()), 0x0000u);
  EXPECT_EQ(F32ToF16(-std::numeric_limits<float>::denorm_min()), 0x8000u);
  for (uint32_t u : {0x7f800001u, 0x7fc00000u, 0xffc00000u, 0x7fffffffu, 0xff800001u}) {
    const uint16_t h = F32ToF16(FromBits(u));
    EXPECT_TRUE(std::isnan(F16ToF32(h))) << std::hex << "u=0x" << u << " -> 0x" << h;
    EXPECT_EQ(h & 0x8000u, (u >> 16) & 0x8000u) << std::hex << "u=0x" << u;
  }
}

TEST(DTypeTest, F16SubnormalsAndTies) {
  const float ulp = std::ldexp(1.0f, -24);  // f16 subnormal step
  EXPECT_EQ(F32ToF16(ulp), 0x0001u);
  EXPECT_EQ(F32ToF16(0.5f * ulp), 0x0000u);  // tie -> 0 (even)
  EXPECT_EQ(F32ToF16(std::nextafter(0.5f * ulp, 1.0f)), 0x0001u);
  EXPECT_EQ(F32ToF16(std::nextafter(0.5f * ulp, 0.0f)), 0x0000u);
  EXPECT_EQ(F32ToF16(-0.5f * ulp), 0x8000u);
  EXPECT_EQ(F32ToF16(1.5f * ulp), 0x0002u);   // tie -> even
  EXPECT_EQ(F32ToF16(2.5f * ulp), 0x0002u);   // tie -> even
  EXPECT_EQ(F32ToF16(3.5f * ulp), 0x0004u);   // tie -> even
  EXPECT_EQ(F32ToF16(-2.5f * ulp), 0x8002u);  // tie -> even
  EXPECT_EQ(F32ToF16(2.25f * ulp), 0x0002u);
  EXPECT_EQ(F32ToF16(2.75f * ulp), 0x0003u);
  EXPECT_EQ(F32ToF16(1022.5f * ulp), 0x03feu);   // tie -> even
  EXPECT_EQ(F32ToF16(1023.25f * ulp), 0x03ffu);  // largest subnormal
  EXPECT_EQ(F32ToF16(1023.5f * ulp), 0x0400u);   // tie rounds up into the smallest normal
  EXPECT_EQ(F32ToF16(1024.0f * ulp), 0x0400u);
  // Normal range ties at several magnitudes: halfway between x and x + ulp(x).
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00u);
  EXPECT_EQ(F32ToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02u);
  EXPECT_EQ(F32ToF16(2049.0f), 0x6800u);  // 2048 vs 2050
  EXPECT_EQ(F32ToF16(2051.0f), 0x6802u);  // 2050 vs 2052
  EXPECT_EQ(F32ToF16(-2051.0f), 0xe802u);
  EXPECT_EQ(F32ToF16(65488.0f), 0x7bfeu);  // 65472 + 16: 0x7bfe vs 0x7bff
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -14) * (1.0f + std::ldexp(1.0f, -11))), 0x0400u);
  // Every f16 midpoint (both neighbours finite, and 65504's upper one) against the rule.
  for (uint32_t h = 0; h < 0x7c00u; ++h) {
    const double mid =
        0.5 * (F16Value(static_cast<uint16_t>(h)) + F16Value(static_cast<uint16_t>(h + 1)));
    const float f = static_cast<float>(mid);
    ASSERT_EQ(static_cast<double>(f), mid) << "midpoint not a float at h=" << h;
    const uint16_t want = static_cast<uint16_t>((h & 1u) ? h + 1 : h);
    ASSERT_EQ(F32ToF16(f), want) << std::hex << "h=0x" << h;
    ASSERT_EQ(F32ToF16(-f), want | 0x8000u) << std::hex << "h=0x" << h;
    ASSERT_EQ(F32ToF16(std::nextafter(f, 0.0f)), h) << std::hex << "h=0x" << h;
    ASSERT_EQ(F32ToF16(std::nextafter(f, 1e30f)), h + 1) << std::hex << "h=0x" << h;
  }
}

TEST(DTypeTest, F16RandomAgainstReference) {
  std::mt19937 rng(kSeed + 1);
  SCOPED_TRACE(absl::StrCat("seed=", kSeed + 1));
  std::uniform_int_distribution<int> exp_dist(-28, 18);
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  for (int i = 0; i < 400000; ++i) {
    // Half arbitrary bit patterns, half values near the f16 range.
    const float f =
        i % 2 ? FromBits(rng()) : (rng() & 1 ? -1.0f : 1.0f) * std::ldexp(mant(rng), exp_dist(rng));
    if (std::isnan(f)) continue;
    ASSERT_EQ(F32ToF16(f), RefF32ToF16(f)) << std::hex << "u=0x" << Bits(f);
  }
}

TEST(DTypeTest, ConvertToF32AllDtypes) {
  std::mt19937 rng(kSeed + 2);
  SCOPED_TRACE(absl::StrCat("seed=", kSeed + 2));
  std::normal_distribution<float> dist(0.0f, 10.0f);
  for (int64_t n : {0, 1, 7, 33, 1000}) {
    std::vector<float> src(n + 1);
    for (float& x : src) x = dist(rng);
    std::vector<uint16_t> bf(n + 1), hf(n + 1);
    for (int64_t i = 0; i < n; ++i) {
      bf[i] = F32ToBf16(src[i]);
      hf[i] = F32ToF16(src[i]);
    }
    std::vector<float> dst(n + 1, -7.0f);
    ConvertToF32(DType::kF32, src.data(), dst.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(Bits(dst[i]), Bits(src[i])) << "i=" << i;
    EXPECT_EQ(dst[n], -7.0f);
    ConvertToF32(DType::kBF16, bf.data(), dst.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(Bits(dst[i]), static_cast<uint32_t>(bf[i]) << 16) << "i=" << i;
      ASSERT_NEAR(dst[i], src[i], std::fabs(src[i]) * std::ldexp(1.0f, -8)) << "i=" << i;
    }
    EXPECT_EQ(dst[n], -7.0f);
    ConvertToF32(DType::kF16, hf.data(), dst.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(static_cast<double>(dst[i]), F16Value(hf[i])) << "i=" << i;
      ASSERT_NEAR(dst[i], src[i], std::fabs(src[i]) * std::ldexp(1.0f, -11) + 1e-7f) << "i=" << i;
    }
    EXPECT_EQ(dst[n], -7.0f);
  }
  // Special values through every dtype.
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> sp = {-0.0f, inf, -inf};
  std::vector<uint16_t> bf, hf;
  for (float x : sp) {
    bf.push_back(F32ToBf16(x));
    hf.push_back(F32ToF16(x));
  }
  std::vector<float> out(3);
  for (const auto* bits : {&bf, &hf}) {
    ConvertToF32(bits == &bf ? DType::kBF16 : DType::kF16, bits->data(), out.data(), 3);
    for (size_t i = 0; i < sp.size(); ++i) EXPECT_EQ(Bits(out[i]), Bits(sp[i])) << i;
  }
}

}  // namespace
}  // namespace sambay
