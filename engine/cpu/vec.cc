// Highway dynamic dispatch: this file is compiled once per SIMD target.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "engine/cpu/vec.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// Must come after foreach_target.h.
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

#ifndef SAMBAY_ENGINE_CPU_VEC_CC_ONCE_
#define SAMBAY_ENGINE_CPU_VEC_CC_ONCE_
#include <cmath>
#include <vector>

#include "engine/cpu/vec.h"
#endif

HWY_BEFORE_NAMESPACE();
namespace sambay::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;

// Loads Lanes(DF) weights starting at p, widened to f32.
template <DType kT>
HWY_INLINE hn::Vec<DF> LoadW(DF df, const void* base, int64_t i) {
  if constexpr (kT == DType::kF32) {
    return hn::LoadU(df, static_cast<const float*>(base) + i);
  } else if constexpr (kT == DType::kBF16) {
    const hn::Rebind<uint16_t, DF> du16;
    const hn::Rebind<uint32_t, DF> du32;
    const auto raw = hn::LoadU(du16, static_cast<const uint16_t*>(base) + i);
    return hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(du32, raw)));
  } else {
#if HWY_TARGET >= HWY_SSE4 || HWY_TARGET == HWY_EMU128 || HWY_TARGET == HWY_SCALAR
    // Highway 1.0.3 emulates f16->f32 on these targets without handling exponent 31 (inf and
    // NaN come out as 65536 and 98304): decode the bits here instead.
    const hn::Rebind<uint16_t, DF> du16;
    const hn::Rebind<int32_t, DF> di32;
    const auto h =
        hn::BitCast(di32, hn::PromoteTo(hn::Rebind<uint32_t, DF>(),
                                        hn::LoadU(du16, static_cast<const uint16_t*>(base) + i)));
    const auto em = hn::And(h, hn::Set(di32, 0x7fff));
    const auto sign = hn::ShiftLeft<16>(hn::And(h, hn::Set(di32, 0x8000)));
    const auto normal = hn::Add(hn::ShiftLeft<13>(em), hn::Set(di32, 112 << 23));
    const auto infnan = hn::Or(hn::ShiftLeft<13>(em), hn::Set(di32, 0x7f800000));
    const auto sub =
        hn::BitCast(di32, hn::Mul(hn::ConvertTo(df, em), hn::Set(df, 1.0f / 16777216.0f)));
    auto bits = hn::IfThenElse(hn::Lt(em, hn::Set(di32, 0x400)), sub, normal);
    bits = hn::IfThenElse(hn::Gt(em, hn::Set(di32, 0x7bff)), infnan, bits);
    return hn::BitCast(df, hn::Or(bits, sign));
#else
    const hn::Rebind<hwy::float16_t, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, static_cast<const hwy::float16_t*>(base) + i));
#endif
  }
}

template <DType kT>
HWY_INLINE float ScalarW(const void* base, int64_t i) {
  if constexpr (kT == DType::kF32) {
    return static_cast<const float*>(base)[i];
  } else if constexpr (kT == DType::kBF16) {
    return Bf16ToF32(static_cast<const uint16_t*>(base)[i]);
  } else {
    return F16ToF32(static_cast<const uint16_t*>(base)[i]);
  }
}

float DotImpl(const float* a, const float* b, int64_t n) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto s0 = hn::Zero(df);
  auto s1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    s0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), s0);
    s1 = hn::MulAdd(hn::LoadU(df, a + i + N), hn::LoadU(df, b + i + N), s1);
  }
  for (; i + N <= n; i += N) s0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), s0);
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(s0, s1)));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void AxpyImpl(float alpha, const float* x, float* y, int64_t n) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto va = hn::Set(df, alpha);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::MulAdd(va, hn::LoadU(df, x + i), hn::LoadU(df, y + i)), df, y + i);
  }
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// Two weight rows (o, o + 1) against R input rows: 2 * R independent accumulator chains.
// Weight rows per cache tile in the multi-row GEMV (even, so pairs never straddle tiles).
constexpr int64_t kGemvTileRows = 16;

template <DType kT, int R>
HWY_INLINE void Gemv2xR(const void* w, int64_t in, int64_t o, bool two, const float* x, float* y,
                        int64_t ldy) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t wi0 = o * in;
  const int64_t wi1 = two ? (o + 1) * in : o * in;
  hn::Vec<DF> a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = hn::Zero(df);
  int64_t i = 0;
  const int64_t esize = DTypeSize(kT);
  const char* wb = static_cast<const char*>(w);
  for (; i + N <= in; i += N) {
    // Rows are short streams (a few KiB): fetch the next pair's rows while this one runs.
    __builtin_prefetch(wb + (wi0 + 2 * in + i) * esize);
    __builtin_prefetch(wb + (wi1 + 2 * in + i) * esize);
    const auto w0 = LoadW<kT>(df, w, wi0 + i);
    const auto w1 = LoadW<kT>(df, w, wi1 + i);
    for (int r = 0; r < R; ++r) {
      const auto xv = hn::LoadU(df, x + r * in + i);
      a0[r] = hn::MulAdd(w0, xv, a0[r]);
      a1[r] = hn::MulAdd(w1, xv, a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float s0 = hn::GetLane(hn::SumOfLanes(df, a0[r]));
    float s1 = hn::GetLane(hn::SumOfLanes(df, a1[r]));
    for (int64_t j = i; j < in; ++j) {
      s0 += ScalarW<kT>(w, wi0 + j) * x[r * in + j];
      s1 += ScalarW<kT>(w, wi1 + j) * x[r * in + j];
    }
    y[r * ldy + o] = s0;
    if (two) y[r * ldy + o + 1] = s1;
  }
}

// BF16 fast path. A u32 load of two bf16 weights holds element 2j in its low half and 2j+1 in
// its high half: (u << 16) is element 2j as f32 and (u & 0xffff0000) is element 2j+1, two ALU
// ops for 2N weights instead of a widening shuffle. The input is pre-split per block of 2N
// into [even elements | odd elements] (`xeo`), which a dot product allows.
void SplitEvenOdd(const float* x, int64_t rows, int64_t in, float* xeo) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * in;
    float* dr = xeo + r * in;
    int64_t i = 0;
    for (; i + 2 * N <= in; i += 2 * N) {
      for (int64_t j = 0; j < N; ++j) {
        dr[i + j] = xr[i + 2 * j];
        dr[i + N + j] = xr[i + 2 * j + 1];
      }
    }
    for (; i < in; ++i) dr[i] = xr[i];  // tail stays in order
  }
}

template <int R>
HWY_INLINE void GemvBf16Rows(const uint16_t* w, int64_t in, int64_t o, int64_t nout,
                             const float* xeo, float* y, int64_t ldy) {
  // nout (1..2) weight rows against R input rows.
  const DF df;
  const hn::RebindToUnsigned<DF> du;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto hi_mask = hn::Set(du, 0xffff0000u);
  const uint16_t* w0 = w + o * in;
  const uint16_t* w1 = nout > 1 ? w0 + in : w0;
  hn::Vec<DF> a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * N <= in; i += 2 * N) {
    // Rows are short streams (a few KiB): fetch the next pair's rows while this one runs.
    __builtin_prefetch(w0 + 2 * in + i);
    __builtin_prefetch(w1 + 2 * in + i);
    const auto u0 = hn::LoadU(du, reinterpret_cast<const uint32_t*>(w0 + i));
    const auto u1 = hn::LoadU(du, reinterpret_cast<const uint32_t*>(w1 + i));
    const auto e0 = hn::BitCast(df, hn::ShiftLeft<16>(u0));
    const auto d0 = hn::BitCast(df, hn::And(u0, hi_mask));
    const auto e1 = hn::BitCast(df, hn::ShiftLeft<16>(u1));
    const auto d1 = hn::BitCast(df, hn::And(u1, hi_mask));
    for (int r = 0; r < R; ++r) {
      const auto xe = hn::LoadU(df, xeo + r * in + i);
      const auto xo = hn::LoadU(df, xeo + r * in + i + N);
      a0[r] = hn::MulAdd(d0, xo, hn::MulAdd(e0, xe, a0[r]));
      a1[r] = hn::MulAdd(d1, xo, hn::MulAdd(e1, xe, a1[r]));
    }
  }
  for (int r = 0; r < R; ++r) {
    float s0 = hn::GetLane(hn::SumOfLanes(df, a0[r]));
    float s1 = hn::GetLane(hn::SumOfLanes(df, a1[r]));
    for (int64_t j = i; j < in; ++j) {
      s0 += Bf16ToF32(w0[j]) * xeo[r * in + j];
      s1 += Bf16ToF32(w1[j]) * xeo[r * in + j];
    }
    y[r * ldy + o] = s0;
    if (nout > 1) y[r * ldy + o + 1] = s1;
  }
}

void GemvBf16(const uint16_t* w, int64_t in, int64_t o0, int64_t o1, const float* x, int64_t rows,
              float* y, int64_t ldy) {
  thread_local std::vector<float> xeo;
  xeo.resize(static_cast<size_t>(rows * in));
  SplitEvenOdd(x, rows, in, xeo.data());
  // A tile of weight rows stays in cache while every group of 8 input rows passes over it.
  for (int64_t t0 = o0; t0 < o1; t0 += kGemvTileRows) {
    const int64_t t1 = o1 - t0 < kGemvTileRows ? o1 : t0 + kGemvTileRows;
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {
      const int64_t nr = rows - r0 < 8 ? rows - r0 : 8;
      const float* xr = xeo.data() + r0 * in;
      float* yr = y + r0 * ldy;
      for (int64_t o = t0; o < t1; o += 2) {
        const int64_t nout = t1 - o < 2 ? t1 - o : 2;
        switch (nr) {
          case 1:
            GemvBf16Rows<1>(w, in, o, nout, xr, yr, ldy);
            break;
          case 2:
            GemvBf16Rows<2>(w, in, o, nout, xr, yr, ldy);
            break;
          case 3:
            GemvBf16Rows<3>(w, in, o, nout, xr, yr, ldy);
            break;
          case 4:
            GemvBf16Rows<4>(w, in, o, nout, xr, yr, ldy);
            break;
          case 5:
            GemvBf16Rows<5>(w, in, o, nout, xr, yr, ldy);
            break;
          case 6:
            GemvBf16Rows<6>(w, in, o, nout, xr, yr, ldy);
            break;
          case 7:
            GemvBf16Rows<7>(w, in, o, nout, xr, yr, ldy);
            break;
          default:
            GemvBf16Rows<8>(w, in, o, nout, xr, yr, ldy);
            break;
        }
      }
    }
  }
}

template <DType kT>
void GemvT(const void* w, int64_t in, int64_t o0, int64_t o1, const float* x, int64_t rows,
           float* y, int64_t ldy) {
  for (int64_t t0 = o0; t0 < o1; t0 += kGemvTileRows) {
    const int64_t t1 = o1 - t0 < kGemvTileRows ? o1 : t0 + kGemvTileRows;
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {
      const int64_t nr = rows - r0 < 8 ? rows - r0 : 8;
      const float* xr = x + r0 * in;
      float* yr = y + r0 * ldy;
      for (int64_t o = t0; o < t1; o += 2) {
        const bool two = o + 1 < t1;
        switch (nr) {
          case 1:
            Gemv2xR<kT, 1>(w, in, o, two, xr, yr, ldy);
            break;
          case 2:
            Gemv2xR<kT, 2>(w, in, o, two, xr, yr, ldy);
            break;
          case 3:
            Gemv2xR<kT, 3>(w, in, o, two, xr, yr, ldy);
            break;
          case 4:
            Gemv2xR<kT, 4>(w, in, o, two, xr, yr, ldy);
            break;
          case 5:
            Gemv2xR<kT, 5>(w, in, o, two, xr, yr, ldy);
            break;
          case 6:
            Gemv2xR<kT, 6>(w, in, o, two, xr, yr, ldy);
            break;
          case 7:
            Gemv2xR<kT, 7>(w, in, o, two, xr, yr, ldy);
            break;
          default:
            Gemv2xR<kT, 8>(w, in, o, two, xr, yr, ldy);
            break;
        }
      }
    }
  }
}

void GemvRowsImpl(DType wt, const void* w, int64_t in, int64_t o0, int64_t o1, const float* x,
                  int64_t rows, float* y, int64_t ldy) {
  switch (wt) {
    case DType::kF32:
      return GemvT<DType::kF32>(w, in, o0, o1, x, rows, y, ldy);
    case DType::kBF16:
      return GemvBf16(static_cast<const uint16_t*>(w), in, o0, o1, x, rows, y, ldy);
    case DType::kF16:
      return GemvT<DType::kF16>(w, in, o0, o1, x, rows, y, ldy);
  }
}

template <DType kT>
void WidenT(const void* w, int64_t in, int64_t o0, int64_t o1, float* dst) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t n = (o1 - o0) * in;
  const int64_t base = o0 * in;
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(LoadW<kT>(df, w, base + i), df, dst + i);
  for (; i < n; ++i) dst[i] = ScalarW<kT>(w, base + i);
}

void WidenRowsImpl(DType wt, const void* w, int64_t in, int64_t o0, int64_t o1, float* dst) {
  switch (wt) {
    case DType::kF32:
      return WidenT<DType::kF32>(w, in, o0, o1, dst);
    case DType::kBF16:
      return WidenT<DType::kBF16>(w, in, o0, o1, dst);
    case DType::kF16:
      return WidenT<DType::kF16>(w, in, o0, o1, dst);
  }
}

void ScanStepImpl(int64_t c0, int64_t c1, int64_t S, const float* delta, const float* A,
                  const float* B, const float* C, const float* D, const float* x, float* h,
                  float* y) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t c = c0; c < c1; ++c) {
    const float dt = delta[c];
    const float dtx = dt * x[c];
    const float* a = A + c * S;
    float* hc = h + c * S;
    const auto vdt = hn::Set(df, dt);
    const auto vdtx = hn::Set(df, dtx);
    auto acc = hn::Zero(df);
    int64_t n = 0;
    for (; n + N <= S; n += N) {
      const auto dA = hn::Exp(df, hn::Mul(vdt, hn::LoadU(df, a + n)));
      const auto hv = hn::MulAdd(dA, hn::LoadU(df, hc + n), hn::Mul(vdtx, hn::LoadU(df, B + n)));
      hn::StoreU(hv, df, hc + n);
      acc = hn::MulAdd(hn::LoadU(df, C + n), hv, acc);
    }
    float s = hn::GetLane(hn::SumOfLanes(df, acc));
    for (; n < S; ++n) {
      const float hv = std::exp(dt * a[n]) * hc[n] + dtx * B[n];
      hc[n] = hv;
      s += C[n] * hv;
    }
    y[c] = s + D[c] * x[c];
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace sambay::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace sambay::cpu {
HWY_EXPORT(DotImpl);
HWY_EXPORT(AxpyImpl);
HWY_EXPORT(GemvRowsImpl);
HWY_EXPORT(WidenRowsImpl);
HWY_EXPORT(ScanStepImpl);

float Dot(const float* a, const float* b, int64_t n) {
  return HWY_DYNAMIC_DISPATCH(DotImpl)(a, b, n);
}
void Axpy(float alpha, const float* x, float* y, int64_t n) {
  HWY_DYNAMIC_DISPATCH(AxpyImpl)(alpha, x, y, n);
}
void GemvRows(DType wt, const void* w, int64_t in, int64_t o0, int64_t o1, const float* x,
              int64_t rows, float* y, int64_t ldy) {
  HWY_DYNAMIC_DISPATCH(GemvRowsImpl)(wt, w, in, o0, o1, x, rows, y, ldy);
}
void WidenRows(DType wt, const void* w, int64_t in, int64_t o0, int64_t o1, float* dst) {
  HWY_DYNAMIC_DISPATCH(WidenRowsImpl)(wt, w, in, o0, o1, dst);
}
void ScanStep(int64_t c0, int64_t c1, int64_t d_state, const float* delta, const float* A,
              const float* B, const float* C, const float* D, const float* x, float* h, float* y) {
  HWY_DYNAMIC_DISPATCH(ScanStepImpl)(c0, c1, d_state, delta, A, B, C, D, x, h, y);
}
}  // namespace sambay::cpu
#endif  // HWY_ONCE
