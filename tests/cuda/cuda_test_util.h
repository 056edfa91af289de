// Helpers for the CUDA tests: skipping without a GPU, random bf16 data, device round trips,
// error measures.
#ifndef SAMBAY_TESTS_CUDA_CUDA_TEST_UTIL_H_
#define SAMBAY_TESTS_CUDA_CUDA_TEST_UTIL_H_

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "engine/cuda/cuda_util.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/ops.h"
#include "engine/dtype.h"
#include "gtest/gtest.h"

// Skips the test when no CUDA device is present (CI has none).
#define SAMBAY_REQUIRE_GPU()                                             \
  do {                                                                   \
    if (::sambay::cuda::DeviceCount() == 0) {                            \
      GTEST_SKIP() << "no CUDA device: CUDA tests run on a GPU machine"; \
    }                                                                    \
  } while (0)

namespace sambay::cuda::testing {

// Uniform values in [-scale, scale] rounded to bf16; `bits` receives the bf16 patterns.
inline std::vector<float> RandBf16(size_t n, std::mt19937_64& rng, float scale,
                                   std::vector<uint16_t>* bits) {
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> f(n);
  bits->resize(n);
  for (size_t i = 0; i < n; ++i) {
    (*bits)[i] = F32ToBf16(d(rng));
    f[i] = Bf16ToF32((*bits)[i]);
  }
  return f;
}

inline std::vector<float> RandF32(size_t n, std::mt19937_64& rng, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> f(n);
  for (auto& v : f) v = d(rng);
  return f;
}

template <typename T>
DeviceBuffer Upload(const std::vector<T>& v) {
  auto b = DeviceBuffer::Alloc(std::max<size_t>(1, v.size()) * sizeof(T));
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return DeviceBuffer();
  EXPECT_TRUE(b->CopyFromHost(v.data(), v.size() * sizeof(T)).ok());
  return std::move(*b);
}

// A buffer of n elements of T filled with 0xff bytes (poison: NaN for floats and bf16).
template <typename T>
DeviceBuffer Poisoned(size_t n) {
  std::vector<unsigned char> p(std::max<size_t>(1, n) * sizeof(T), 0xff);
  return Upload(p);
}

template <typename T>
std::vector<T> Download(const DeviceBuffer& b, size_t n) {
  std::vector<T> v(n);
  EXPECT_TRUE(cudaDeviceSynchronize() == cudaSuccess);
  EXPECT_TRUE(b.CopyToHost(v.data(), n * sizeof(T)).ok());
  return v;
}

inline std::vector<float> DownloadBf16(const DeviceBuffer& b, size_t n) {
  std::vector<uint16_t> bits = Download<uint16_t>(b, n);
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = Bf16ToF32(bits[i]);
  return f;
}

inline bf16* Bf(const DeviceBuffer& b) { return b.as<bf16>(); }

// ||a - b|| / ||b||; NaN anywhere gives +inf.
inline double RelErr(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  if (a.size() != b.size()) return INFINITY;
  return std::sqrt(num / std::max(den, 1e-300));
}

// Every element within atol + rtol * |ref|; reports the first offender.
inline ::testing::AssertionResult AllClose(const std::vector<float>& got,
                                           const std::vector<float>& ref, double atol,
                                           double rtol) {
  if (got.size() != ref.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " vs " << ref.size();
  }
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    if (!(d <= atol + rtol * std::fabs(ref[i]))) {
      return ::testing::AssertionFailure()
             << "element " << i << ": got " << got[i] << ", want " << ref[i] << " (|diff| " << d
             << " > " << atol << " + " << rtol << " * |want|)";
    }
  }
  return ::testing::AssertionSuccess();
}

// Tolerances per output dtype (one bf16 rounding of the output, fp32 arithmetic inside).
inline constexpr double kBf16Rtol = 1.0 / 128;  // 2^-7: one bf16 ulp at most, relative
inline constexpr double kF32Rtol = 1e-5;

// Device copies of a batch layout (kept alive with the Segments that points at them).
struct DevSegs {
  Segments s;
  DeviceBuffer segs, row_seg;
};
inline void MakeSegs(const std::vector<int32_t>& slots, const std::vector<int64_t>& starts,
                     const std::vector<int32_t>& lens, DevSegs* d) {
  BuildSegments(slots, starts, lens, &d->s);
  d->segs = Upload(d->s.host);
  d->row_seg = Upload(d->s.host_row_seg);
  d->s.dev = d->segs.as<SegDev>();
  d->s.dev_row_seg = d->row_seg.as<int32_t>();
}

}  // namespace sambay::cuda::testing

#endif  // SAMBAY_TESTS_CUDA_CUDA_TEST_UTIL_H_
