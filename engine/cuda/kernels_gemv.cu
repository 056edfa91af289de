// Decode GEMM for a few rows (M <= kGemvMaxRows): y = x W^T (+ y), see kernels.h LaunchGemv.
//
// One warp per output column n: its lanes stream W's row n (16-byte loads, evict-first, several
// in flight), multiply it with every row of x (read through L1/L2: x is small and shared by all
// warps), and reduce each row's sum across the warp. W is read exactly once for all M rows,
// which is the whole cost of a decode step's linear layers. Rows whose K or alignment forbid
// 16-byte loads take a scalar loop (same arithmetic, fp32 accumulation).
#include <cstdint>

#include "engine/cuda/kernels.h"
#include "engine/cuda/reduce.cuh"

namespace sambay::cuda {
namespace {

constexpr int kGemvWarps = 8;  // output columns per block

__device__ __forceinline__ void Unpack8(const uint4& v, float* f) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}

template <int MR, bool kVec>
__global__ void __launch_bounds__(kGemvWarps * 32)
    GemvKernel(const bf16* __restrict__ x, int64_t lda, int M, int64_t K,
               const bf16* __restrict__ w, int64_t N, void* y, int64_t ldy, bool out_f32,
               bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (n >= N) return;  // the whole warp
  float acc[MR];
#pragma unroll
  for (int m = 0; m < MR; ++m) acc[m] = 0.0f;
  const bf16* wr = w + n * K;
  if (kVec) {
    const uint4* w8 = reinterpret_cast<const uint4*>(wr);
    const int64_t k8 = K / 8;
#pragma unroll 4
    for (int64_t c = lane; c < k8; c += 32) {
      float wf[8];
      Unpack8(__ldcs(w8 + c), wf);
#pragma unroll
      for (int m = 0; m < MR; ++m) {
        if (m < M) {
          float xf[8];
          Unpack8(__ldg(reinterpret_cast<const uint4*>(x + m * lda) + c), xf);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[m] += wf[i] * xf[i];
        }
      }
    }
  } else {
    for (int64_t k = lane; k < K; k += 32) {
      const float wv = __bfloat162float(wr[k]);
#pragma unroll
      for (int m = 0; m < MR; ++m) {
        if (m < M) acc[m] += wv * __bfloat162float(x[m * lda + k]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MR; ++m) acc[m] = WarpSum(acc[m]);
  if (lane != 0) return;
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    if (m < M) {
      if (out_f32) {
        float* yf = static_cast<float*>(y) + m * ldy + n;
        *yf = accumulate ? *yf + acc[m] : acc[m];
      } else {
        static_cast<bf16*>(y)[m * ldy + n] = __float2bfloat16(acc[m]);
      }
    }
  }
}

template <int MR>
cudaError_t Launch(const bf16* x, int64_t lda, int64_t M, int64_t K, const bf16* w, int64_t N,
                   void* y, int64_t ldy, bool out_f32, bool accumulate, bool vec,
                   cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((N + kGemvWarps - 1) / kGemvWarps);
  if (vec) {
    GemvKernel<MR, true><<<blocks, kGemvWarps * 32, 0, stream>>>(
        x, lda, static_cast<int>(M), K, w, N, y, ldy, out_f32, accumulate);
  } else {
    GemvKernel<MR, false><<<blocks, kGemvWarps * 32, 0, stream>>>(
        x, lda, static_cast<int>(M), K, w, N, y, ldy, out_f32, accumulate);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchGemv(const bf16* x, int64_t lda, int64_t M, int64_t K, const bf16* w, int64_t N,
                       void* y, int64_t ldy, bool out_f32, bool accumulate, cudaStream_t stream) {
  const bool vec = K % 8 == 0 && lda % 8 == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0 &&
                   (reinterpret_cast<uintptr_t>(w) & 15) == 0;
  if (M <= 1) return Launch<1>(x, lda, M, K, w, N, y, ldy, out_f32, accumulate, vec, stream);
  if (M <= 2) return Launch<2>(x, lda, M, K, w, N, y, ldy, out_f32, accumulate, vec, stream);
  if (M <= 4) return Launch<4>(x, lda, M, K, w, N, y, ldy, out_f32, accumulate, vec, stream);
  return Launch<8>(x, lda, M, K, w, N, y, ldy, out_f32, accumulate, vec, stream);
}

}  // namespace sambay::cuda
