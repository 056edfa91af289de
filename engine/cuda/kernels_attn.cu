// Differential attention kernels (see kernels.h, AttnArgs).
//
// Pass 1 (one block per (query row, pair, split)): flash-style online softmax over tiles of
// kTile keys for both stripes of the pair at once; the two stripes share the attended
// positions and the 2*hd-wide V rows, so each V element is read once for both
// (docs/model-spec.md "Engine notes").
// Scores: one key per thread, its 2*hd contiguous K values (both stripes) in 16-byte loads where
// aligned, so a block keeps kTile independent row reads in flight. PV: one output dim per thread.
// Pass 2 (one block per (query row, pair)): merges the splits, D = O1 - lambda O2, RMSNorm.
// TODO(perf): query tiles on tensor cores for prefill (each query row re-reads K/V from L2).
#include <cstdint>

#include "engine/cuda/kernels.h"
#include "engine/cuda/reduce.cuh"

namespace sambay::cuda {
namespace {

// Eight bf16 (one 16-byte load) to floats.
__device__ __forceinline__ void Unpack8(const uint4& v, float* f) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}

constexpr int kThreads = 128;
constexpr int kTile = kThreads;  // keys per tile: one per thread for the scores
constexpr int kMaxAcc = (2 * kMaxHeadDim + kThreads - 1) / kThreads;  // output dims per thread

struct KeyLoc {
  const bf16* k;
  const bf16* v;
};

__device__ __forceinline__ KeyLoc Locate(const AttnArgs& a, const SegDev& seg, int64_t kvd,
                                         int64_t kp) {
  if (a.source == KvSource::kRing) {
    if (kp >= seg.start) {
      const int64_t r = seg.row0 + (kp - seg.start);
      return {a.knew + r * a.ld_new, a.vnew + r * a.ld_new};
    }
    const int64_t off = (static_cast<int64_t>(seg.slot) * a.window + kp % a.window) * kvd;
    return {a.k_ring + off, a.v_ring + off};
  }
  const int64_t blk =
      a.block_table[static_cast<int64_t>(seg.slot) * a.max_blocks + kp / a.block_tokens];
  const int64_t off = (blk * a.block_tokens + kp % a.block_tokens) * kvd;
  return {a.k_pool + off, a.v_pool + off};
}

__global__ void __launch_bounds__(kThreads) DiffAttnPartialKernel(AttnArgs a) {
  __shared__ float q_sh[2][kMaxHeadDim];
  __shared__ float p_sh[2][kTile];
  __shared__ const bf16* v_sh[kTile];
  __shared__ float red[32];

  const int pairs = a.num_heads / 2;
  const int hd = a.head_dim;
  const int hd2 = 2 * hd;
  const int64_t kvd = static_cast<int64_t>(a.num_kv_heads) * hd;
  const int64_t rp = blockIdx.x;
  const int64_t r = rp / pairs;
  const int pair = static_cast<int>(rp % pairs);
  const int split = blockIdx.y;
  const int tid = threadIdx.x;

  const SegDev seg = a.segs[a.row_seg[r]];
  const int64_t p = seg.start + (r - seg.row0);
  const int64_t lo = a.window > 0 ? (p - a.window + 1 > 0 ? p - a.window + 1 : 0) : 0;
  const int64_t n = p - lo + 1;
  const int64_t chunk = (n + a.splits - 1) / a.splits;
  const int64_t k0 = lo + split * chunk;
  const int64_t k1 = (k0 + chunk < p + 1) ? k0 + chunk : p + 1;
  const int j = pair / (a.num_heads / a.num_kv_heads);  // stripe-KV index

  const bf16* qrow = a.q + r * a.ldq;
  for (int i = tid; i < hd; i += kThreads) {
    q_sh[0][i] = __bfloat162float(qrow[(2 * pair) * hd + i]) * a.scale;
    q_sh[1][i] = __bfloat162float(qrow[(2 * pair + 1) * hd + i]) * a.scale;
  }
  __syncthreads();

  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
  float acc0[kMaxAcc], acc1[kMaxAcc];
#pragma unroll
  for (int q = 0; q < kMaxAcc; ++q) acc0[q] = acc1[q] = 0.0f;

  for (int64_t t0 = k0; t0 < k1; t0 += kTile) {
    const int cnt = static_cast<int>(k1 - t0 < kTile ? k1 - t0 : kTile);
    const bool valid = tid < cnt;
    float s0 = -INFINITY, s1 = -INFINITY;
    if (valid) {  // one key per thread: many independent row reads in flight per block
      const KeyLoc loc = Locate(a, seg, kvd, t0 + tid);
      const bf16* kr = loc.k + (2 * j) * hd;  // stripe 0's K row, then stripe 1's: 2*hd values
      float d0 = 0.0f, d1 = 0.0f;
      if ((hd & 7) == 0 && (reinterpret_cast<uintptr_t>(kr) & 15) == 0) {
        const uint4* k8 = reinterpret_cast<const uint4*>(kr);  // 16-byte loads
        const int c8 = hd / 8;
#pragma unroll 4
        for (int c = 0; c < c8; ++c) {
          float f0[8], f1[8];
          Unpack8(k8[c], f0);
          Unpack8(k8[c8 + c], f1);
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            d0 += q_sh[0][8 * c + i] * f0[i];
            d1 += q_sh[1][8 * c + i] * f1[i];
          }
        }
      } else {
        for (int i = 0; i < hd; ++i) {
          d0 += q_sh[0][i] * __bfloat162float(kr[i]);
          d1 += q_sh[1][i] * __bfloat162float(kr[hd + i]);
        }
      }
      s0 = d0;
      s1 = d1;
      v_sh[tid] = loc.v + (2 * j) * hd;
    }
    const float nm0 = fmaxf(m0, BlockMax(s0, red));  // the tile has >= 1 valid key: finite
    const float nm1 = fmaxf(m1, BlockMax(s1, red));
    const float e0 = valid ? expf(s0 - nm0) : 0.0f;
    const float e1 = valid ? expf(s1 - nm1) : 0.0f;
    p_sh[0][tid] = e0;
    p_sh[1][tid] = e1;
    const float ts0 = BlockSum(e0, red);  // its barriers publish p_sh and v_sh
    const float ts1 = BlockSum(e1, red);
    const float al0 = expf(m0 - nm0);  // 0 on the first tile (m = -inf)
    const float al1 = expf(m1 - nm1);
    l0 = l0 * al0 + ts0;
    l1 = l1 * al1 + ts1;
    m0 = nm0;
    m1 = nm1;
#pragma unroll
    for (int q = 0; q < kMaxAcc; ++q) {
      const int d = tid + q * kThreads;
      if (d < hd2) {
        float x0 = acc0[q] * al0, x1 = acc1[q] * al1;
#pragma unroll 8
        for (int jj = 0; jj < cnt; ++jj) {
          const float v = __bfloat162float(v_sh[jj][d]);
          x0 += p_sh[0][jj] * v;
          x1 += p_sh[1][jj] * v;
        }
        acc0[q] = x0;
        acc1[q] = x1;
      }
    }
    __syncthreads();  // p_sh / v_sh are rewritten by the next tile
  }

  float* base = a.partial + ((r * pairs + pair) * a.splits + split) * 2 * (hd2 + 2);
  if (tid == 0) {
    base[0] = m0;
    base[1] = l0;
    base[hd2 + 2] = m1;
    base[hd2 + 3] = l1;
  }
#pragma unroll
  for (int q = 0; q < kMaxAcc; ++q) {
    const int d = tid + q * kThreads;
    if (d < hd2) {
      base[2 + d] = acc0[q];
      base[hd2 + 4 + d] = acc1[q];
    }
  }
}

__global__ void __launch_bounds__(kThreads) DiffAttnCombineKernel(AttnArgs a) {
  __shared__ float red[32];
  const int pairs = a.num_heads / 2;
  const int hd2 = 2 * a.head_dim;
  const int64_t rp = blockIdx.x;
  const int64_t r = rp / pairs;
  const int pair = static_cast<int>(rp % pairs);
  const int tid = threadIdx.x;
  const int64_t stride = 2 * (hd2 + 2);  // floats per split
  const float* base = a.partial + rp * a.splits * stride;

  float M0 = -INFINITY, M1 = -INFINITY;
  for (int s = 0; s < a.splits; ++s) {
    M0 = fmaxf(M0, base[s * stride]);
    M1 = fmaxf(M1, base[s * stride + hd2 + 2]);
  }
  float L0 = 0.0f, L1 = 0.0f;
  for (int s = 0; s < a.splits; ++s) {
    L0 += expf(base[s * stride] - M0) * base[s * stride + 1];
    L1 += expf(base[s * stride + hd2 + 2] - M1) * base[s * stride + hd2 + 3];
  }
  float dv[kMaxAcc];
  float ss = 0.0f;
#pragma unroll
  for (int q = 0; q < kMaxAcc; ++q) {
    const int d = tid + q * kThreads;
    dv[q] = 0.0f;
    if (d < hd2) {
      float o0 = 0.0f, o1 = 0.0f;
      for (int s = 0; s < a.splits; ++s) {
        const float* b = base + s * stride;
        o0 += expf(b[0] - M0) * b[2 + d];
        o1 += expf(b[hd2 + 2] - M1) * b[hd2 + 4 + d];
      }
      const float D = o0 / L0 - a.lambda * (o1 / L1);
      dv[q] = D;
      ss += D * D;
    }
  }
  ss = BlockSum(ss, red);
  const float inv = rsqrtf(ss / static_cast<float>(hd2) + a.eps);
  const float scale = 1.0f - a.lambda_init;
  bf16* out = a.out + r * a.ldo + static_cast<int64_t>(pair) * hd2;
#pragma unroll
  for (int q = 0; q < kMaxAcc; ++q) {
    const int d = tid + q * kThreads;
    if (d < hd2) out[d] = __float2bfloat16(dv[q] * inv * a.subln[d] * scale);
  }
}

}  // namespace

cudaError_t LaunchDiffAttention(const AttnArgs& a, cudaStream_t stream) {
  const int64_t blocks = a.rows * (a.num_heads / 2);
  DiffAttnPartialKernel<<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(a.splits)),
                          kThreads, 0, stream>>>(a);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  DiffAttnCombineKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace sambay::cuda
