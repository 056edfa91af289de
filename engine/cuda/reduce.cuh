// Block-wide reductions and scans for the CUDA kernels (device code only; included by .cu files).
//
// Every helper must be called by all threads of the block (it contains __syncthreads) with a
// blockDim.x that is a multiple of 32; `sh` is a __shared__ float[32] scratch. All threads get
// the result. Stateless.
#ifndef SAMBAY_ENGINE_CUDA_REDUCE_CUH_
#define SAMBAY_ENGINE_CUDA_REDUCE_CUH_

#include <cuda_bf16.h>

namespace sambay::cuda {

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float BlockSum(float v, float* sh) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nw = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // the previous user of sh is done
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : 0.0f;
  return WarpSum(v);
}

__device__ __forceinline__ float BlockMax(float v, float* sh) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nw = blockDim.x >> 5;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : -INFINITY;
  return WarpMax(v);
}

// Inclusive prefix sum over the block in thread order; *total receives the block's sum.
__device__ __forceinline__ float BlockInclusiveScan(float v, float* sh, float* total) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nw = blockDim.x >> 5;
  for (int o = 1; o < 32; o <<= 1) {
    const float u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  __syncthreads();
  if (lane == 31) sh[warp] = v;
  __syncthreads();
  float before = 0.0f;
  float all = 0.0f;
  for (int w = 0; w < nw; ++w) {
    const float s = sh[w];
    if (w < warp) before += s;
    all += s;
  }
  *total = all;
  return v + before;
}

__device__ __forceinline__ float RoundBf16(float x) {
  return __bfloat162float(__float2bfloat16(x));
}

__device__ __forceinline__ float SiluF(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float SoftplusF(float v) { return v > 20.0f ? v : log1pf(expf(v)); }

}  // namespace sambay::cuda

#endif  // SAMBAY_ENGINE_CUDA_REDUCE_CUH_
