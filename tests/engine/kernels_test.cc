// CPU kernel tests (engine/cpu/vec.h, linear.h, ops.h, DiffAttendRow) against plain
// double-precision reference loops, with odd sizes, unaligned pointers and sentinel checks
// around every output. The vec.h kernels run once per Highway target the CPU supports.
// Seeds are fixed and printed with each failure; SAMBAY_TEST_SEED=k shifts them all by k.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/thread_pool.h"
#include "engine/attention.h"
#include "engine/config.h"
#include "engine/cpu/linear.h"
#include "engine/cpu/ops.h"
#include "engine/cpu/vec.h"
#include "engine/dtype.h"
#include "engine/weights.h"
#include "gtest/gtest.h"
#include "hwy/targets.h"

namespace sambay {
namespace {

constexpr float kSentinel = 12345.0f;
constexpr DType kAllDtypes[] = {DType::kF32, DType::kBF16, DType::kF16};

std::string Name(DType t) { return std::string(DTypeName(t)); }

// Fixed seeds; SAMBAY_TEST_SEED=k (an integer) shifts them all by k to explore other inputs.
uint32_t Seed(uint32_t base) {
  const char* env = std::getenv("SAMBAY_TEST_SEED");
  return base + (env != nullptr ? static_cast<uint32_t>(std::strtoul(env, nullptr, 10)) : 0u);
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Runs fn once per SIMD target that engine/cpu/vec.cc was compiled for and this CPU supports
// (e.g. AVX3, AVX2, SSE4, SSSE3, EMU128), so every vector width's tails are exercised; the
// target name goes into failure messages.
template <typename Fn>
void ForEachTarget(const Fn& fn) {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  ASSERT_FALSE(targets.empty());
  for (int64_t t : targets) {
    hwy::SetSupportedTargetsForTest(t);
    SCOPED_TRACE(absl::StrCat("hwy target=", hwy::TargetName(t)));
    fn();
  }
  hwy::SetSupportedTargetsForTest(0);
}

// A float buffer whose data() is offset by one element from the allocation (never 16-, 32- or
// 64-byte aligned) and ends exactly at the allocation's end, so ASan sees overruns.
class Buf {
 public:
  explicit Buf(int64_t n, float fill = 0.0f) : v_(static_cast<size_t>(n) + 1, fill) {}
  float* data() { return v_.data() + 1; }
  const float* data() const { return v_.data() + 1; }
  float& operator[](int64_t i) { return v_[static_cast<size_t>(i) + 1]; }
  float operator[](int64_t i) const { return v_[static_cast<size_t>(i) + 1]; }
  int64_t size() const { return static_cast<int64_t>(v_.size()) - 1; }

 private:
  std::vector<float> v_;
};

Buf RandomBuf(int64_t n, std::mt19937& rng, float mean = 0.0f, float sd = 1.0f) {
  std::normal_distribution<float> dist(mean, sd);
  Buf b(n);
  for (int64_t i = 0; i < n; ++i) b[i] = dist(rng);
  return b;
}

// A [rows, cols] weight matrix stored in `dt` at an address offset by one element, plus its
// values widened to float by the scalar conversions of engine/dtype.h.
struct TestWeights {
  DType dt = DType::kF32;
  int64_t rows = 0, cols = 0;
  std::vector<uint16_t> raw;
  const void* data = nullptr;
  std::vector<float> wide;

  cpu::WeightView view() const { return {dt, data, rows, cols}; }
};

TestWeights MakeWeights(DType dt, int64_t rows, int64_t cols, std::mt19937& rng) {
  TestWeights w;
  w.dt = dt;
  w.rows = rows;
  w.cols = cols;
  const int64_t n = rows * cols;
  const int sz = DTypeSize(dt);
  w.raw.assign(static_cast<size_t>((n + 1) * sz / 2), 0);  // ends exactly at the data's end
  char* base = reinterpret_cast<char*>(w.raw.data()) + sz;
  w.data = base;
  w.wide.resize(static_cast<size_t>(n));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i) {
    const float v = dist(rng);
    if (dt == DType::kF32) {
      std::memcpy(base + 4 * i, &v, 4);
      w.wide[i] = v;
    } else {
      const uint16_t h = dt == DType::kBF16 ? F32ToBf16(v) : F32ToF16(v);
      std::memcpy(base + 2 * i, &h, 2);
      w.wide[i] = dt == DType::kBF16 ? Bf16ToF32(h) : F16ToF32(h);
    }
  }
  return w;
}

// ref[r * out + o] = sum_i wide[o, i] * x[r, i] in double; mag = sum_i |w x|.
void RefGemm(const TestWeights& w, const float* x, int64_t rows, std::vector<double>& ref,
             std::vector<double>& mag) {
  ref.assign(static_cast<size_t>(rows * w.rows), 0.0);
  mag.assign(ref.size(), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < w.rows; ++o) {
      double s = 0, m = 0;
      for (int64_t i = 0; i < w.cols; ++i) {
        const double p = static_cast<double>(w.wide[o * w.cols + i]) * x[r * w.cols + i];
        s += p;
        m += std::fabs(p);
      }
      ref[r * w.rows + o] = s;
      mag[r * w.rows + o] = m;
    }
  }
}

void CheckDotAndAxpy() {
  const uint32_t seed = Seed(1001);
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937 rng(seed);
  for (int64_t n : {0, 1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 1000}) {
    const Buf a = RandomBuf(n, rng), b = RandomBuf(n, rng);
    double ref = 0, mag = 0;
    for (int64_t i = 0; i < n; ++i) {
      ref += static_cast<double>(a[i]) * b[i];
      mag += std::fabs(static_cast<double>(a[i]) * b[i]);
    }
    const float got = cpu::Dot(a.data(), b.data(), n);
    EXPECT_LE(std::fabs(got - ref), 1e-5 * mag + 1e-30)
        << "Dot n=" << n << " got=" << got << " want=" << ref << " seed=" << seed;

    const float alpha = std::normal_distribution<float>(0.0f, 2.0f)(rng);
    Buf y = RandomBuf(n + 2, rng);  // y[0] and y[n+1] are guards
    const Buf y0 = y;
    cpu::Axpy(alpha, a.data(), y.data() + 1, n);
    EXPECT_EQ(Bits(y[0]), Bits(y0[0])) << "Axpy wrote before y, n=" << n;
    EXPECT_EQ(Bits(y[n + 1]), Bits(y0[n + 1])) << "Axpy wrote past y, n=" << n;
    for (int64_t i = 0; i < n; ++i) {
      const double want = y0[i + 1] + static_cast<double>(alpha) * a[i];
      const double tol = 1e-6 * (std::fabs(y0[i + 1]) + std::fabs(alpha * a[i])) + 1e-30;
      ASSERT_LE(std::fabs(y[i + 1] - want), tol)
          << "Axpy n=" << n << " i=" << i << " seed=" << seed;
    }
  }
}

TEST(KernelsTest, DotAndAxpy) { ForEachTarget(CheckDotAndAxpy); }

void CheckGemvRowsAllDtypes() {
  const uint32_t seed = Seed(1002);
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937 rng(seed);
  constexpr int64_t kOut = 13;
  constexpr int64_t kLdy = kOut + 3;
  const std::pair<int64_t, int64_t> ranges[] = {{0, 13}, {0, 1}, {12, 13}, {5, 6}, {3, 10},
                                                {1, 12}, {2, 4}, {4, 4},   {0, 2}, {11, 13}};
  for (DType dt : kAllDtypes) {
    for (int64_t in : {1, 3, 17, 64, 130, 257}) {
      const TestWeights w = MakeWeights(dt, kOut, in, rng);
      const Buf x = RandomBuf(9 * in, rng);
      std::vector<double> ref, mag;
      RefGemm(w, x.data(), 9, ref, mag);
      for (const auto& [o0, o1] : ranges) {
        for (int64_t rows = 1; rows <= 9; ++rows) {
          SCOPED_TRACE(absl::StrCat("dtype=", Name(dt), " in=", in, " range=[", o0, ",", o1,
                                    ") rows=", rows));
          Buf y(rows * kLdy, kSentinel);
          cpu::GemvRows(dt, w.data, in, o0, o1, x.data(), rows, y.data(), kLdy);
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t o = 0; o < kLdy; ++o) {
              const float got = y[r * kLdy + o];
              if (o < o0 || o >= o1) {
                ASSERT_EQ(got, kSentinel) << "wrote outside the range: r=" << r << " o=" << o;
              } else {
                const double want = ref[r * kOut + o];
                ASSERT_LE(std::fabs(got - want), 1e-5 * mag[r * kOut + o] + 1e-30)
                    << "r=" << r << " o=" << o << " got=" << got << " want=" << want;
              }
            }
          }
        }
      }
    }
  }
}

TEST(KernelsTest, GemvRowsAllDtypes) { ForEachTarget(CheckGemvRowsAllDtypes); }

void CheckWidenRowsExact() {
  const uint32_t seed = Seed(1003);
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937 rng(seed);
  for (DType dt : kAllDtypes) {
    for (int64_t in : {1, 3, 17, 64, 130, 257}) {
      const TestWeights w = MakeWeights(dt, 11, in, rng);
      const std::pair<int64_t, int64_t> ranges[] = {{0, 11}, {3, 4}, {2, 9}, {10, 11}};
      for (const auto& [o0, o1] : ranges) {
        Buf dst((o1 - o0) * in + 1, kSentinel);
        cpu::WidenRows(dt, w.data, in, o0, o1, dst.data());
        for (int64_t i = 0; i < (o1 - o0) * in; ++i) {
          ASSERT_EQ(Bits(dst[i]), Bits(w.wide[o0 * in + i]))
              << "dtype=" << Name(dt) << " in=" << in << " o0=" << o0 << " i=" << i;
        }
        EXPECT_EQ(dst[(o1 - o0) * in], kSentinel) << "wrote past dst";
      }
    }
  }
  // Every finite 16-bit pattern, subnormals and -0 included (inf/NaN: see below).
  std::vector<uint16_t> all(65536 + 1);
  for (uint32_t h = 0; h < 65536; ++h) all[h + 1] = static_cast<uint16_t>(h);
  for (DType dt : {DType::kBF16, DType::kF16}) {
    Buf dst(65536);
    cpu::WidenRows(dt, all.data() + 1, 256, 0, 256, dst.data());
    for (uint32_t h = 0; h < 65536; ++h) {
      const float want = dt == DType::kBF16 ? Bf16ToF32(static_cast<uint16_t>(h))
                                            : F16ToF32(static_cast<uint16_t>(h));
      if (!std::isfinite(want)) continue;
      ASSERT_EQ(Bits(dst[h]), Bits(want)) << Name(dt) << std::hex << " h=0x" << h;
    }
  }
}

TEST(KernelsTest, WidenRowsExact) { ForEachTarget(CheckWidenRowsExact); }

// inf and NaN weights must widen to inf and NaN (not to large finite numbers) on every target,
// in WidenRows and inside GemvRows, for both 16-bit dtypes.
void CheckInfNanWeights() {
  constexpr int64_t kIn = 32;  // reaches the vector loop on every target
  const float kInf = std::numeric_limits<float>::infinity();
  const float want[3] = {kInf, std::numeric_limits<float>::quiet_NaN(), -kInf};
  const auto same = [](float a, float b) { return std::isnan(b) ? std::isnan(a) : a == b; };
  for (DType dt : {DType::kBF16, DType::kF16}) {
    // Row r is all ones except want[r] at column 3 r.
    std::vector<uint16_t> w(3 * kIn, dt == DType::kBF16 ? 0x3f80u : 0x3c00u);
    for (int r = 0; r < 3; ++r) {
      w[r * kIn + 3 * r] = dt == DType::kBF16 ? F32ToBf16(want[r]) : F32ToF16(want[r]);
    }
    Buf wide(3 * kIn), y(3);
    const Buf x(kIn, 1.0f);
    cpu::WidenRows(dt, w.data(), kIn, 0, 3, wide.data());
    cpu::GemvRows(dt, w.data(), kIn, 0, 3, x.data(), 1, y.data(), 3);
    for (int r = 0; r < 3; ++r) {
      EXPECT_TRUE(same(wide[r * kIn + 3 * r], want[r]))
          << Name(dt) << " WidenRows: " << wide[r * kIn + 3 * r] << " want " << want[r];
      EXPECT_TRUE(same(y[r], want[r])) << Name(dt) << " GemvRows: " << y[r] << " want " << want[r];
    }
  }
}

TEST(KernelsTest, InfNanWeightsOnEveryTarget) { ForEachTarget(CheckInfNanWeights); }

// Runs cpu::Linear over pools of 1..3 threads, with and without bias, ldy default and > out.
void CheckLinear(DType dt, int64_t in, int64_t out, const std::vector<int64_t>& row_counts,
                 uint32_t seed, const std::vector<int>& threads) {
  std::mt19937 rng(seed);
  const TestWeights w = MakeWeights(dt, out, in, rng);
  const int64_t max_rows = row_counts.back();
  const Buf x = RandomBuf(max_rows * in, rng);
  const Buf bias = RandomBuf(out, rng);
  std::vector<double> ref, mag;
  RefGemm(w, x.data(), max_rows, ref, mag);
  for (int nt : threads) {
    ThreadPool pool(nt);
    for (int64_t rows : row_counts) {
      const double rel = rows <= cpu::kGemvMaxRows ? 1e-5 : 1e-4;
      for (bool with_bias : {false, true}) {
        for (int64_t ldy_arg : {int64_t{0}, out + 3}) {
          const int64_t ldy = ldy_arg == 0 ? out : ldy_arg;
          SCOPED_TRACE(absl::StrCat("dtype=", Name(dt), " in=", in, " out=", out, " rows=", rows,
                                    " threads=", nt, " bias=", with_bias, " ldy=", ldy,
                                    " seed=", seed));
          Buf y(rows * ldy + 1, kSentinel);
          cpu::Linear(w.view(), x.data(), rows, y.data(), pool, with_bias ? bias.data() : nullptr,
                      ldy_arg);
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t o = 0; o < ldy; ++o) {
              const float got = y[r * ldy + o];
              if (o >= out) {
                ASSERT_EQ(got, kSentinel) << "wrote into the ldy padding: r=" << r << " o=" << o;
                continue;
              }
              const double b = with_bias ? bias[o] : 0.0;
              const double want = ref[r * out + o] + b;
              ASSERT_LE(std::fabs(got - want), rel * (mag[r * out + o] + std::fabs(b)) + 1e-30)
                  << "r=" << r << " o=" << o << " got=" << got << " want=" << want;
            }
          }
          EXPECT_EQ(y[rows * ldy], kSentinel) << "wrote past y";
        }
      }
    }
  }
}

void CheckLinearGemvAndBlasPaths() {
  const uint32_t seed = Seed(1004);
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  for (DType dt : kAllDtypes) {
    // in = 3001 makes the GEMV grain small enough that 37 outputs split over 2-3 threads.
    CheckLinear(dt, 3001, 37, {1, 5, 8, 9, 33}, seed, {1, 2, 3});
    CheckLinear(dt, 17, 5, {1, 5, 8, 9, 33}, seed + 1, {1, 2, 3});
    CheckLinear(dt, 1, 1, {1, 9}, seed + 2, {2});
  }
}

TEST(KernelsTest, LinearGemvAndBlasPaths) { ForEachTarget(CheckLinearGemvAndBlasPaths); }

TEST(KernelsTest, LinearBlasWidensInSeveralBlocks) {
  // in > 64Ki makes the widened block 16 rows: 37 outputs = 16 + 16 + 5.
  const uint32_t seed = Seed(1005);
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  for (DType dt : kAllDtypes) CheckLinear(dt, 70001, 37, {9, 12}, seed, {2});
}

TEST(KernelsTest, LinearZeroRowsIsNoOp) {
  std::mt19937 rng(Seed(1006));
  const TestWeights w = MakeWeights(DType::kBF16, 4, 8, rng);
  ThreadPool pool(2);
  Buf y(8, kSentinel);
  const Buf x(8);
  cpu::Linear(w.view(), x.data(), 0, y.data(), pool);
  for (int64_t i = 0; i < y.size(); ++i) EXPECT_EQ(y[i], kSentinel);
}

void CheckScanStepMatchesScalarLoop() {
  const uint32_t seed = Seed(1007);
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937 rng(seed);
  constexpr int64_t kCh = 11;
  constexpr int kSteps = 4;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(-1.0f, 3.0f);
  const std::pair<int64_t, int64_t> ranges[] = {{0, 11}, {3, 8}, {5, 6}, {1, 10}, {10, 11}};
  for (int64_t S : {1, 5, 16, 17, 33}) {
    for (const auto& [c0, c1] : ranges) {
      SCOPED_TRACE(absl::StrCat("d_state=", S, " range=[", c0, ",", c1, ")"));
      Buf A(kCh * S), h(kCh * S);
      for (int64_t i = 0; i < kCh * S; ++i) {
        A[i] = -std::exp(ud(rng));
        h[i] = nd(rng);
      }
      const Buf D = RandomBuf(kCh, rng);
      std::vector<double> hr(h.data(), h.data() + kCh * S);  // reference state
      std::vector<double> hmag(hr.size());                   // sum of |terms| for tolerances
      for (size_t i = 0; i < hr.size(); ++i) hmag[i] = std::fabs(hr[i]);
      for (int step = 0; step < kSteps; ++step) {
        Buf delta(kCh), x = RandomBuf(kCh, rng);
        for (int64_t c = 0; c < kCh; ++c) delta[c] = cpu::Softplus(nd(rng) - 2.0f);
        const Buf B = RandomBuf(S, rng), C = RandomBuf(S, rng);
        const Buf h_before = h;
        Buf y(kCh, kSentinel);
        cpu::ScanStep(c0, c1, S, delta.data(), A.data(), B.data(), C.data(), D.data(), x.data(),
                      h.data(), y.data());
        for (int64_t c = 0; c < kCh; ++c) {
          const auto ctx = [&] { return absl::StrCat("step=", step, " c=", c); };
          if (c < c0 || c >= c1) {
            ASSERT_EQ(y[c], kSentinel) << "y written outside the range: " << ctx();
            for (int64_t n = 0; n < S; ++n) {
              ASSERT_EQ(Bits(h[c * S + n]), Bits(h_before[c * S + n])) << ctx();
            }
            continue;
          }
          double yr = static_cast<double>(D[c]) * x[c];
          double ymag = std::fabs(yr);
          for (int64_t n = 0; n < S; ++n) {
            const int64_t k = c * S + n;
            const double dA = std::exp(static_cast<double>(delta[c]) * A[k]);
            const double inc = static_cast<double>(delta[c]) * B[n] * x[c];
            hr[k] = dA * hr[k] + inc;
            hmag[k] = dA * hmag[k] + std::fabs(inc);
            yr += static_cast<double>(C[n]) * hr[k];
            ymag += std::fabs(static_cast<double>(C[n])) * hmag[k];
            ASSERT_LE(std::fabs(h[k] - hr[k]), 1e-5 * hmag[k] + 1e-30)
                << ctx() << " n=" << n << " h=" << h[k] << " want=" << hr[k];
          }
          ASSERT_LE(std::fabs(y[c] - yr), 1e-5 * ymag + 1e-30)
              << ctx() << " y=" << y[c] << " want=" << yr;
        }
      }
    }
  }
}

TEST(KernelsTest, ScanStepMatchesScalarLoop) { ForEachTarget(CheckScanStepMatchesScalarLoop); }

TEST(KernelsTest, LayerNorm) {
  const uint32_t seed = Seed(1008);
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937 rng(seed);
  // A large mean checks the two-pass variance; a tiny spread makes eps matter.
  for (const auto& [mean, sd] : {std::pair{3.0f, 2.0f}, {1000.0f, 2.0f}, {0.5f, 1e-3f}}) {
    for (int64_t rows : {1, 3}) {
      for (int64_t dim : {1, 7, 128, 129}) {
        const Buf x = RandomBuf(rows * dim, rng, mean, sd);
        const Buf w = RandomBuf(dim, rng, 1.0f, 0.3f), b = RandomBuf(dim, rng);
        Buf y(rows * dim + 1, kSentinel);
        const double eps = 1e-5;
        cpu::LayerNorm(x.data(), rows, dim, w.data(), b.data(), eps, y.data());
        for (int64_t r = 0; r < rows; ++r) {
          double mu = 0, var = 0;
          for (int64_t i = 0; i < dim; ++i) mu += x[r * dim + i];
          mu /= static_cast<double>(dim);
          for (int64_t i = 0; i < dim; ++i) var += (x[r * dim + i] - mu) * (x[r * dim + i] - mu);
          var /= static_cast<double>(dim);
          for (int64_t i = 0; i < dim; ++i) {
            const double t = (x[r * dim + i] - mu) / std::sqrt(var + eps) * w[i];
            const double want = t + b[i];
            ASSERT_LE(std::fabs(y[r * dim + i] - want), 1e-5 * (std::fabs(t) + std::fabs(b[i])))
                << "mean=" << mean << " sd=" << sd << " rows=" << rows << " dim=" << dim
                << " r=" << r << " i=" << i << " seed=" << seed;
          }
          if (dim == 1) {
            EXPECT_EQ(y[r], b[0]) << "a single element normalizes to the bias";
          }
        }
        EXPECT_EQ(y[rows * dim], kSentinel);
      }
    }
  }
}

TEST(KernelsTest, RmsNormScaled) {
  const uint32_t seed = Seed(1009);
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937 rng(seed);
  // sd 1e-3: eps matters.
  const std::pair<int64_t, float> cases[] = {
      {1, 3.f}, {7, 3.f}, {128, 3.f}, {129, 3.f}, {129, 1e-3f}};
  for (const auto& [dim, sd] : cases) {
    const Buf x0 = RandomBuf(dim, rng, 0.0f, sd), w = RandomBuf(dim, rng, 1.0f, 0.3f);
    Buf x = x0;
    const float scale = 0.37f;
    cpu::RmsNormScaled(x.data(), dim, w.data(), 1e-5, scale);
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x0[i]) * x0[i];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(dim) + 1e-5);
    for (int64_t i = 0; i < dim; ++i) {
      const double want = x0[i] * inv * w[i] * scale;
      ASSERT_LE(std::fabs(x[i] - want), 1e-5 * std::fabs(want) + 1e-30)
          << "dim=" << dim << " sd=" << sd << " i=" << i << " seed=" << seed;
    }
  }
  Buf zeros(5), w(5, 1.0f);
  cpu::RmsNormScaled(zeros.data(), 5, w.data(), 1e-5, 2.0f);
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(zeros[i], 0.0f);
}

double RefSilu(double x) { return x / (1.0 + std::exp(-x)); }

TEST(KernelsTest, SwiGluRows) {
  const uint32_t seed = Seed(1010);
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937 rng(seed);
  for (int64_t rows : {1, 3}) {
    for (int64_t n : {1, 7, 129}) {
      const Buf in = RandomBuf(rows * 2 * n, rng, 0.0f, 4.0f);
      Buf out(rows * n + 1, kSentinel);
      cpu::SwiGluRows(in.data(), rows, n, out.data());
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < n; ++j) {
          const double want = in[r * 2 * n + n + j] * RefSilu(in[r * 2 * n + j]);
          ASSERT_LE(std::fabs(out[r * n + j] - want), 1e-6 * std::fabs(want) + 1e-30)
              << "rows=" << rows << " n=" << n << " r=" << r << " j=" << j << " seed=" << seed;
        }
      }
      EXPECT_EQ(out[rows * n], kSentinel);
    }
  }
}

TEST(KernelsTest, SiluAndSoftplus) {
  for (float v = -100.0f; v <= 100.0f; v += 0.1234f) {
    const double s = RefSilu(v);
    EXPECT_LE(std::fabs(cpu::Silu(v) - s), 1e-6 * std::fabs(s) + 1e-30) << "silu v=" << v;
  }
  EXPECT_EQ(cpu::Silu(0.0f), 0.0f);
  EXPECT_TRUE(std::isfinite(cpu::Silu(-1000.0f)));
  EXPECT_EQ(cpu::Silu(1000.0f), 1000.0f);
  // softplus: log1p(exp(v)) up to 20, identity above.
  for (float v = -80.0f; v <= 20.0f; v += 0.0917f) {
    const double want = std::log1p(std::exp(static_cast<double>(v)));
    EXPECT_LE(std::fabs(cpu::Softplus(v) - want), 1e-6 * want) << "softplus v=" << v;
  }
  EXPECT_NEAR(cpu::Softplus(20.0f), 20.0f, 1e-5f);
  EXPECT_NEAR(cpu::Softplus(0.0f), std::log(2.0), 1e-7);
  const float inf = std::numeric_limits<float>::infinity();
  for (float v : {std::nextafter(20.0f, 100.0f), 20.5f, 25.0f, 1e6f, 1e30f, inf}) {
    EXPECT_EQ(Bits(cpu::Softplus(v)), Bits(v)) << "softplus v=" << v;
  }
  const float tiny = cpu::Softplus(-200.0f);
  EXPECT_GE(tiny, 0.0f);
  EXPECT_LT(tiny, 1e-40f);
  EXPECT_TRUE(std::isnan(cpu::Softplus(std::numeric_limits<float>::quiet_NaN())));
}

// ---- Differential attention (docs/model-spec.md "Differential attention core") ----

// softmax(q . k_t / sqrt(hd)) applied to hd-wide values, all in double. Heads are hd wide.
// Raises *score_mag to the largest sum_e |q_e k_e| / sqrt(hd) (a score's float error scale).
std::vector<double> RefAttn(const float* q, const std::vector<std::vector<float>>& keys,
                            int key_head, const std::vector<std::vector<float>>& vals, int val_head,
                            int64_t hd, double* score_mag) {
  const size_t n = keys.size();
  std::vector<double> s(n);
  double m = -INFINITY;
  for (size_t t = 0; t < n; ++t) {
    double d = 0, mag = 0;
    for (int64_t e = 0; e < hd; ++e) {
      d += static_cast<double>(q[e]) * keys[t][key_head * hd + e];
      mag += std::fabs(static_cast<double>(q[e]) * keys[t][key_head * hd + e]);
    }
    s[t] = d / std::sqrt(static_cast<double>(hd));
    *score_mag = std::max(*score_mag, mag / std::sqrt(static_cast<double>(hd)));
    m = std::max(m, s[t]);
  }
  double sum = 0;
  for (double& v : s) sum += (v = std::exp(v - m));
  std::vector<double> o(static_cast<size_t>(hd), 0.0);
  for (size_t t = 0; t < n; ++t) {
    for (int64_t e = 0; e < hd; ++e) o[e] += s[t] / sum * vals[t][val_head * hd + e];
  }
  return o;
}

ModelConfig AttnConfig(int64_t hidden, int heads, int kv_heads) {
  ModelConfig c;
  c.vocab_size = 32;
  c.hidden_size = hidden;
  c.intermediate_size = 16;
  c.num_layers = 4;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.sliding_window = 16;
  c.d_state = c.d_conv = c.expand = c.dt_rank = 4;
  return c;
}

void CheckDiffAttendRowMatchesSpec() {
  const uint32_t seed = Seed(1011);
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> lambda_delta(-0.3f, 0.6f);
  // {hidden, heads, kv heads}: H/G = 2, 4, 1, 2, 2.
  const int shapes[][3] = {{48, 4, 2}, {64, 8, 2}, {48, 6, 6}, {96, 8, 4}, {160, 20, 10}};
  for (const auto& [hidden, heads, kv] : shapes) {
    ModelConfig c = AttnConfig(hidden, heads, kv);
    ASSERT_TRUE(FinalizeModelConfig(c).ok()) << hidden << " " << heads << " " << kv;
    const int64_t hd = c.head_dim, H = c.num_heads, G = c.num_kv_heads;
    for (int layer : {1, 17}) {
      AttentionWeights w;
      w.lambda_init = static_cast<float>(ModelConfig::LambdaInit(layer));
      w.lambda = w.lambda_init + lambda_delta(rng);
      const Buf subln = RandomBuf(2 * hd, rng, 1.0f, 0.2f);
      w.subln.assign(subln.data(), subln.data() + 2 * hd);
      for (int64_t n : {1, 2, 37}) {
        for (float q_sd : {1.0f, 40.0f}) {  // 40: scores far beyond exp's float range
          const std::string ctx = absl::StrCat("H=", H, " G=", G, " hd=", hd, " layer=", layer,
                                               " n=", n, " q_sd=", q_sd, " seed=", seed);
          const Buf q = RandomBuf(c.q_dim(), rng, 0.0f, q_sd);
          std::vector<std::vector<float>> keys(n), vals(n);
          std::vector<const float*> kp(n), vp(n);
          double vmax = 0;
          std::normal_distribution<float> nd(0.0f, 1.0f);
          for (int64_t t = 0; t < n; ++t) {
            keys[t].resize(c.kv_dim());
            vals[t].resize(c.kv_dim());
            for (float& v : keys[t]) v = nd(rng);
            for (float& v : vals[t]) {
              v = nd(rng);
              vmax = std::max<double>(vmax, std::fabs(v));
            }
            kp[t] = keys[t].data();
            vp[t] = vals[t].data();
          }
          Buf out(c.q_dim(), kSentinel);
          std::vector<float> scratch(static_cast<size_t>(n + 4 * hd));
          for (int pair = 0; pair < H / 2; ++pair) {
            const Buf before = out;
            DiffAttendRow(c, w, q.data(), kp.data(), vp.data(), n, pair, out.data(),
                          scratch.data());
            // Spec: q1 = even query heads, q2 = odd; k1/v1 = even KV heads, k2/v2 = odd;
            // stripe-query i uses stripe-KV j = i / (H / G).
            const int i = pair;
            const int j = static_cast<int>(i / (H / G));
            const float* q1 = q.data() + (2 * i) * hd;
            const float* q2 = q.data() + (2 * i + 1) * hd;
            double smag = 0;
            const auto a11 = RefAttn(q1, keys, 2 * j, vals, 2 * j, hd, &smag);
            const auto a12 = RefAttn(q1, keys, 2 * j, vals, 2 * j + 1, hd, &smag);
            const auto a21 = RefAttn(q2, keys, 2 * j + 1, vals, 2 * j, hd, &smag);
            const auto a22 = RefAttn(q2, keys, 2 * j + 1, vals, 2 * j + 1, hd, &smag);
            std::vector<double> d(2 * hd);
            double ms = 0;
            for (int64_t e = 0; e < 2 * hd; ++e) {
              const double o1 = e < hd ? a11[e] : a12[e - hd];
              const double o2 = e < hd ? a21[e] : a22[e - hd];
              d[e] = o1 - static_cast<double>(w.lambda) * o2;
              ms += d[e] * d[e];
            }
            const double inv = 1.0 / std::sqrt(ms / static_cast<double>(2 * hd) + 1e-5);
            const double post = 1.0 - static_cast<double>(w.lambda_init);
            // fp32 scores carry ~u * smag absolute error, which moves the softmax weights by
            // that relative amount: D's error is about u * (1 + smag) * |v|max * (1 + |lambda|).
            const double d_err = 8 * std::ldexp(1.0, -24) * (1 + smag) * vmax *
                                 (1 + std::fabs(static_cast<double>(w.lambda)));
            for (int64_t e = 0; e < q.size(); ++e) {
              if (e < pair * 2 * hd || e >= (pair + 1) * 2 * hd) {
                ASSERT_EQ(Bits(out[e]), Bits(before[e]))
                    << "wrote outside pair " << pair << " at " << e << ": " << ctx;
                continue;
              }
              const int64_t k = e - pair * 2 * hd;
              const double want = d[k] * inv * w.subln[k] * post;
              const double tol = post * std::fabs(w.subln[k]) *
                                 (1e-5 * (1 + std::fabs(d[k]) * inv) + 2 * d_err * inv);
              ASSERT_LE(std::fabs(out[e] - want), tol)
                  << ctx << " pair=" << pair << " k=" << k << " got=" << out[e] << " want=" << want;
            }
          }
        }
      }
    }
  }
}

TEST(KernelsTest, DiffAttendRowMatchesSpec) { ForEachTarget(CheckDiffAttendRowMatchesSpec); }

}  // namespace
}  // namespace sambay
