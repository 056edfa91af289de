// Batch-1 decode GEMM: y = x W^T (+ y) for one row x, see kernels.h LaunchGemv.
//
// One warp per output column n: its lanes stream W's row n (16-byte loads, evict-first, several
// in flight), multiply it with x (read through L1/L2: x is small and shared by all warps) and
// reduce across the warp. W is read exactly once, in one launch. Rows whose K or alignment
// forbid 16-byte loads take a scalar loop (same arithmetic, fp32 accumulation).
#include <cstdint>

#include "engine/cuda/kernels.h"
#include "engine/cuda/reduce.cuh"

namespace sambay::cuda {
namespace {

constexpr int kGemvWarps = 8;  // output columns per block

__device__ __forceinline__ float Dot8(const uint4& a, const uint4& b) {
  const uint32_t ua[4] = {a.x, a.y, a.z, a.w}, ub[4] = {b.x, b.y, b.z, b.w};
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    s += __uint_as_float(ua[i] << 16) * __uint_as_float(ub[i] << 16);
    s += __uint_as_float(ua[i] & 0xffff0000u) * __uint_as_float(ub[i] & 0xffff0000u);
  }
  return s;
}

template <bool kVec>
__global__ void __launch_bounds__(kGemvWarps * 32)
    GemvKernel(const bf16* __restrict__ x, int64_t K, const bf16* __restrict__ w, int64_t N,
               void* y, bool out_f32, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (n >= N) return;  // the whole warp
  const bf16* wr = w + n * K;
  float acc = 0.0f;
  if (kVec) {
    const uint4* w8 = reinterpret_cast<const uint4*>(wr);
    const uint4* x8 = reinterpret_cast<const uint4*>(x);
    const int64_t k8 = K / 8;
#pragma unroll 4
    for (int64_t c = lane; c < k8; c += 32) acc += Dot8(__ldcs(w8 + c), __ldg(x8 + c));
  } else {
    for (int64_t k = lane; k < K; k += 32) {
      acc += __bfloat162float(wr[k]) * __bfloat162float(x[k]);
    }
  }
  acc = WarpSum(acc);
  if (lane != 0) return;
  if (out_f32) {
    float* yf = static_cast<float*>(y) + n;
    *yf = accumulate ? *yf + acc : acc;
  } else {
    static_cast<bf16*>(y)[n] = __float2bfloat16(acc);
  }
}

}  // namespace

cudaError_t LaunchGemv(const bf16* x, int64_t K, const bf16* w, int64_t N, void* y, bool out_f32,
                       bool accumulate, cudaStream_t stream) {
  const bool vec = K % 8 == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0 &&
                   (reinterpret_cast<uintptr_t>(w) & 15) == 0;
  const unsigned blocks = static_cast<unsigned>((N + kGemvWarps - 1) / kGemvWarps);
  if (vec) {
    GemvKernel<true><<<blocks, kGemvWarps * 32, 0, stream>>>(x, K, w, N, y, out_f32, accumulate);
  } else {
    GemvKernel<false><<<blocks, kGemvWarps * 32, 0, stream>>>(x, K, w, N, y, out_f32, accumulate);
  }
  return cudaGetLastError();
}

}  // namespace sambay::cuda
