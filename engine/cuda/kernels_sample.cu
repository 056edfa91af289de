// Sampling kernels: greedy argmax and temperature / top-k / top-p (see kernels.h).
//
// One block of kThreads per row. Top-k and top-p thresholds are found by building the
// threshold's order key bit by bit (32 block-wide counts or sums over the row), so no sort and
// no vocabulary-sized scratch are needed.
#include <cstdint>

#include "engine/cuda/kernels.h"
#include "engine/cuda/reduce.cuh"

namespace sambay::cuda {
namespace {

constexpr int kThreads = 1024;

// Order-preserving map of a float to uint32 (larger float -> larger key).
__device__ __forceinline__ uint32_t OrderKey(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Warp argmax of every lane's (best, id): all lanes get the largest value and, among equal
// values, the lowest id; id < 0 (nothing seen) never wins.
__device__ __forceinline__ void WarpArgmax(float* best_io, int32_t* id_io) {
  float best = *best_io;
  int32_t id = *id_io;
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int32_t oi = __shfl_xor_sync(0xffffffffu, id, o);
    if (oi >= 0 && (id < 0 || ov > best || (ov == best && oi < id))) {
      best = ov;
      id = oi;
    }
  }
  *best_io = best;
  *id_io = id;
}

// Block argmax of x[0, vocab), the host's GreedyToken rule: the first maximum (ties -> lowest
// id), NaN never wins, 0 when every value is NaN or -inf. All threads get the id.
__device__ int32_t BlockArgmax(const float* x, int64_t vocab) {
  __shared__ float sv[32];
  __shared__ int32_t si[32];
  float best = -INFINITY;
  int32_t id = -1;
  // Each thread walks its indices in ascending order, so its first maximum is its lowest id.
  // Aligned rows go four at a time (16-byte loads, several in flight), the tail one at a time.
  int64_t head = 0;
  if ((reinterpret_cast<uintptr_t>(x) & 15) == 0) {
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const int64_t n4 = vocab / 4;
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
      const float4 v = x4[i];
      const float vs[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (vs[k] > best) {  // false for NaN and -inf
          best = vs[k];
          id = static_cast<int32_t>(4 * i + k);
        }
      }
    }
    head = 4 * n4;
  }
  for (int64_t i = head + threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = x[i];
    if (v > best) {
      best = v;
      id = static_cast<int32_t>(i);
    }
  }
  WarpArgmax(&best, &id);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) {
    sv[warp] = best;
    si[warp] = id;
  }
  __syncthreads();
  const int nw = blockDim.x >> 5;
  best = lane < nw ? sv[lane] : -INFINITY;
  id = lane < nw ? si[lane] : -1;
  WarpArgmax(&best, &id);
  return id < 0 ? 0 : id;
}

__global__ void __launch_bounds__(kThreads)
    ArgmaxKernel(const float* logits, int64_t vocab, int32_t* out) {
  const int32_t id = BlockArgmax(logits + static_cast<int64_t>(blockIdx.x) * vocab, vocab);
  if (threadIdx.x == 0) out[blockIdx.x] = id;
}

__global__ void __launch_bounds__(kThreads)
    SampleKernel(const float* logits, int64_t vocab, const float* temperature, const int32_t* top_k,
                 const float* top_p, const float* uniform, int32_t* out) {
  __shared__ float red[32];
  __shared__ int32_t first_hit;
  __shared__ int32_t last_kept;
  const int64_t row = blockIdx.x;
  const float* x = logits + row * vocab;
  const float T = temperature[row];
  // Greedy for T = 0, and for a T so small that 1/T overflows (the weights would be NaN).
  if (!(T > 0.0f) || !isfinite(1.0f / T)) {
    const int32_t id = BlockArgmax(x, vocab);
    if (threadIdx.x == 0) out[row] = id;
    return;
  }
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, x[i]);
  mx = BlockMax(mx, red);
  const float invT = 1.0f / T;

  // Top-k: the largest key tk with count(key >= tk) >= k is the k-th largest logit's key.
  const int32_t k = top_k[row];
  uint32_t tk = 0;
  if (k > 0 && k < vocab) {
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t cand = tk | (1u << bit);
      float cnt = 0.0f;
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) cnt += OrderKey(x[i]) >= cand;
      if (BlockSum(cnt, red) >= static_cast<float>(k)) tk = cand;
    }
  }
  // Top-p over the kept tokens: the largest key tp whose kept mass reaches top_p of the total.
  float total = 0.0f;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    if (OrderKey(x[i]) >= tk) total += expf((x[i] - mx) * invT);
  }
  total = BlockSum(total, red);
  uint32_t thr = tk;
  const float pp = top_p[row];
  if (pp < 1.0f) {
    const float target = pp * total;
    uint32_t tp = 0;
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t cand = tp | (1u << bit);
      const uint32_t lim = cand > tk ? cand : tk;
      float mass = 0.0f;
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
        if (OrderKey(x[i]) >= lim) mass += expf((x[i] - mx) * invT);
      }
      if (BlockSum(mass, red) >= target) tp = cand;
    }
    thr = tp > tk ? tp : tk;
  }
  float kept = 0.0f;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    if (OrderKey(x[i]) >= thr) kept += expf((x[i] - mx) * invT);
  }
  kept = BlockSum(kept, red);
  const float goal = uniform[row] * kept;

  // Walk the kept tokens in id order until the running mass passes goal.
  if (threadIdx.x == 0) {
    first_hit = INT32_MAX;
    last_kept = -1;
  }
  __syncthreads();
  float run = 0.0f;
  for (int64_t base = 0; base < vocab; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const bool keep = i < vocab && OrderKey(x[i]) >= thr;
    const float w = keep ? expf((x[i] - mx) * invT) : 0.0f;
    float chunk_total;
    const float incl = BlockInclusiveScan(w, red, &chunk_total);
    if (keep) {
      // The fallback (goal not passed through rounding) is the last token with mass, never one
      // whose weight underflowed to 0; the maximum has weight 1, so there is always one.
      if (w > 0.0f) atomicMax(&last_kept, static_cast<int32_t>(i));
      if (run + incl > goal) atomicMin(&first_hit, static_cast<int32_t>(i));
    }
    __syncthreads();
    if (first_hit != INT32_MAX) break;  // uniform: every thread reads the same value
    run += chunk_total;
  }
  if (threadIdx.x == 0) out[row] = first_hit != INT32_MAX ? first_hit : last_kept;
}

}  // namespace

cudaError_t LaunchArgmax(const float* logits, int64_t rows, int64_t vocab, int32_t* out,
                         cudaStream_t stream) {
  ArgmaxKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, vocab, out);
  return cudaGetLastError();
}

cudaError_t LaunchSampleTopKTopP(const SampleArgs& a, cudaStream_t stream) {
  SampleKernel<<<static_cast<unsigned>(a.rows), kThreads, 0, stream>>>(
      a.logits, a.vocab, a.temperature, a.top_k, a.top_p, a.uniform, a.out);
  return cudaGetLastError();
}

}  // namespace sambay::cuda
