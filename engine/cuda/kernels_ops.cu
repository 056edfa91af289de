// Elementwise, normalization, convolution, scan and K/V-store kernels (see kernels.h).
#include <cstdint>

#include "engine/cuda/kernels.h"
#include "engine/cuda/reduce.cuh"

namespace sambay::cuda {
namespace {

constexpr int kRowThreads = 256;   // one block per row
constexpr int kChanThreads = 128;  // channel tiles (conv, scan)
constexpr int kElemThreads = 256;  // elementwise

unsigned ElemBlocks(int64_t n) {
  const int64_t b = (n + kElemThreads - 1) / kElemThreads;
  return static_cast<unsigned>(b < 65536 * 8 ? b : 65536 * 8);  // grid-stride beyond
}

// One block per row. Rows of up to kLnCache * blockDim.x values are read once into registers;
// longer rows are read three times.
constexpr int kLnCache = 16;

__global__ void LayerNormKernel(const float* x, int64_t dim, const float* w, const float* b,
                                float eps, bf16* y) {
  __shared__ float sh[32];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * dim;
  bf16* yr = y + row * dim;
  const int64_t step = blockDim.x;
  if (dim <= kLnCache * step) {
    float v[kLnCache];
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < kLnCache; ++k) {
      const int64_t i = threadIdx.x + k * step;
      v[k] = i < dim ? RoundBf16(xr[i]) : 0.0f;
      s += v[k];
    }
    const float mean = BlockSum(s, sh) / static_cast<float>(dim);
    float q = 0.0f;
#pragma unroll
    for (int k = 0; k < kLnCache; ++k) {
      const int64_t i = threadIdx.x + k * step;
      const float d = i < dim ? v[k] - mean : 0.0f;
      q += d * d;
    }
    const float inv = rsqrtf(BlockSum(q, sh) / static_cast<float>(dim) + eps);
#pragma unroll
    for (int k = 0; k < kLnCache; ++k) {
      const int64_t i = threadIdx.x + k * step;
      if (i < dim) yr[i] = __float2bfloat16((v[k] - mean) * inv * w[i] + b[i]);
    }
    return;
  }
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += step) s += RoundBf16(xr[i]);
  const float mean = BlockSum(s, sh) / static_cast<float>(dim);
  float v = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += step) {
    const float d = RoundBf16(xr[i]) - mean;
    v += d * d;
  }
  const float var = BlockSum(v, sh) / static_cast<float>(dim);
  const float inv = rsqrtf(var + eps);
  for (int64_t i = threadIdx.x; i < dim; i += step) {
    yr[i] = __float2bfloat16((RoundBf16(xr[i]) - mean) * inv * w[i] + b[i]);
  }
}

__global__ void EmbeddingKernel(const bf16* table, int64_t dim, const int32_t* ids, float* x) {
  const int64_t row = blockIdx.x;
  const bf16* src = table + static_cast<int64_t>(ids[row]) * dim;
  float* dst = x + row * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = __bfloat162float(src[i]);
}

// Output of the conv for row blockIdx.x, channels of tile blockIdx.y.
__global__ void Conv1dKernel(const bf16* x, int64_t ldx, const SegDev* segs, const int32_t* row_seg,
                             const bf16* conv_state, const float* w, const float* bias, int64_t di,
                             int K, bf16* y) {
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= di) return;
  const int64_t r = blockIdx.x;
  const SegDev seg = segs[row_seg[r]];
  const int64_t t = r - seg.row0;
  const bf16* st = conv_state + static_cast<int64_t>(seg.slot) * (K - 1) * di;
  float acc = bias[c];
  for (int k = 0; k < K; ++k) {
    const int64_t src = t - (K - 1) + k;  // token index in the segment; < 0: from the state
    const float v = src >= 0 ? __bfloat162float(x[(seg.row0 + src) * ldx + c])
                             : __bfloat162float(st[(t + k) * di + c]);
    acc += w[c * K + k] * v;
  }
  y[r * di + c] = __float2bfloat16(SiluF(acc));
}

// New conv state of segment blockIdx.x: the last K-1 x vectors of (old state ++ segment).
__global__ void ConvStateKernel(const bf16* x, int64_t ldx, const SegDev* segs, bf16* conv_state,
                                int64_t di, int K) {
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= di) return;
  const SegDev seg = segs[blockIdx.x];
  bf16* st = conv_state + static_cast<int64_t>(seg.slot) * (K - 1) * di;
  // Ascending j reads old row j + len > j before anything overwrites it.
  for (int j = 0; j < K - 1; ++j) {
    const int64_t src = static_cast<int64_t>(seg.len) - (K - 1) + j;
    st[j * di + c] = src >= 0 ? x[(seg.row0 + src) * ldx + c] : st[(j + seg.len) * di + c];
  }
}

__global__ void Conv1dUpdateKernel(const bf16* x, int64_t ldx, const int32_t* slots,
                                   bf16* conv_state, const float* w, const float* bias, int64_t di,
                                   int K, bf16* y) {
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= di) return;
  const int64_t r = blockIdx.x;
  bf16* st = conv_state + static_cast<int64_t>(slots[r]) * (K - 1) * di;
  const bf16 xn = x[r * ldx + c];
  float acc = bias[c];
  for (int k = 0; k < K - 1; ++k) acc += w[c * K + k] * __bfloat162float(st[k * di + c]);
  acc += w[c * K + K - 1] * __bfloat162float(xn);
  y[r * di + c] = __float2bfloat16(SiluF(acc));
  for (int k = 0; k + 1 < K - 1; ++k) st[k * di + c] = st[(k + 1) * di + c];
  if (K > 1) st[(K - 2) * di + c] = xn;
}

// One thread per channel; h in registers (S fixed) or a local array (S = 0: a.S at run time).
// The rows this block scans: a segment (prefill, blockIdx.x = segment) or one decode row.
struct ScanRows {
  int64_t row0, len, slot;
};
__device__ __forceinline__ ScanRows BlockScanRows(const ScanArgs& a) {
  if (a.segs != nullptr) {
    const SegDev seg = a.segs[blockIdx.x];
    return {seg.row0, seg.len, seg.slot};
  }
  return {static_cast<int64_t>(blockIdx.x), 1, a.slots[blockIdx.x]};
}

// Writes the scan's outputs for row r, channel c from y = C.h + D x: the memory (when wanted)
// and the gated output.
__device__ __forceinline__ void StoreScanOutput(const ScanArgs& a, int64_t r, int64_t c, float y) {
  if (a.memory != nullptr) a.memory[r * a.di + c] = __float2bfloat16(y);
  const float zv = __bfloat162float(a.z[r * a.ldz + c]);
  a.y_gated[r * a.di + c] = __float2bfloat16(y * SiluF(zv));
}

// The scan with d_state = 16 (the model's): 16 lanes per channel, one state element each, two
// channels per warp; y is a 16-lane sum. Sixteen times the threads of ScanKernel, so a
// single-sequence prefill (one segment, di channels) fills the chip; the arithmetic per state
// element is the same.
constexpr int kScanLanes = 16;
constexpr int kScanLaneThreads = 128;
constexpr int kScanChannels = kScanLaneThreads / kScanLanes;  // 8 channels per block

__global__ void __launch_bounds__(kScanLaneThreads) ScanLanesKernel(ScanArgs a) {
  const int n = threadIdx.x % kScanLanes;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kScanChannels + threadIdx.x / kScanLanes;
  const bool live = c < a.di;  // dead lanes still join the shuffles
  const ScanRows rows = BlockScanRows(a);
  const int64_t row0 = rows.row0, len = rows.len, slot = rows.slot;
  const int64_t cc = live ? c : 0;
  const int64_t sidx = (slot * a.di + cc) * kScanLanes + n;
  float h = !live ? 0.0f
                  : (a.state_bf16 ? __bfloat162float(static_cast<const bf16*>(a.state)[sidx])
                                  : static_cast<const float*>(a.state)[sidx]);
  const float An = a.A[cc * kScanLanes + n];
  const float Dc = a.D[cc];
  const float bias = a.dt_bias[cc];
  for (int64_t t = 0; t < len; ++t) {
    const int64_t r = row0 + t;
    const float xv = __bfloat162float(a.xc[r * a.di + cc]);
    const float d = SoftplusF(a.dt[r * a.di + cc] + bias);
    const bf16* B = a.bc + r * a.ld_bc + a.b_off;
    h = expf(d * An) * h + d * xv * __bfloat162float(B[n]);
    float y = __bfloat162float(B[kScanLanes + n]) * h;  // C[n] h[n]
#pragma unroll
    for (int o = kScanLanes / 2; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o);
    if (live && n == 0) {
      y += Dc * xv;
      StoreScanOutput(a, r, c, y);
    }
  }
  if (!live) return;
  if (a.state_bf16) {
    static_cast<bf16*>(a.state)[sidx] = __float2bfloat16(h);
  } else {
    static_cast<float*>(a.state)[sidx] = h;
  }
}

template <int kS>
__global__ void ScanKernel(ScanArgs a) {
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= a.di) return;
  const ScanRows rows = BlockScanRows(a);
  const int64_t row0 = rows.row0, len = rows.len, slot = rows.slot;
  const int S = kS > 0 ? kS : a.S;
  constexpr int kArr = kS > 0 ? kS : kMaxDState;
  float h[kArr];
  float Ac[kArr];
  const int64_t sbase = (slot * a.di + c) * S;
#pragma unroll
  for (int n = 0; n < kArr; ++n) {
    if (n < S) {
      Ac[n] = a.A[c * S + n];
      h[n] = a.state_bf16 ? __bfloat162float(static_cast<const bf16*>(a.state)[sbase + n])
                          : static_cast<const float*>(a.state)[sbase + n];
    }
  }
  const float Dc = a.D[c];
  const float bias = a.dt_bias[c];
  for (int64_t t = 0; t < len; ++t) {
    const int64_t r = row0 + t;
    const float xv = __bfloat162float(a.xc[r * a.di + c]);
    const float d = SoftplusF(a.dt[r * a.di + c] + bias);
    const bf16* B = a.bc + r * a.ld_bc + a.b_off;
    const bf16* C = B + S;
    const float dx = d * xv;
    float y = 0.0f;
#pragma unroll
    for (int n = 0; n < kArr; ++n) {
      if (n < S) {
        const float hv = expf(d * Ac[n]) * h[n] + dx * __bfloat162float(B[n]);
        h[n] = hv;
        y += __bfloat162float(C[n]) * hv;
      }
    }
    y += Dc * xv;
    StoreScanOutput(a, r, c, y);
  }
#pragma unroll
  for (int n = 0; n < kArr; ++n) {
    if (n < S) {
      if (a.state_bf16) {
        static_cast<bf16*>(a.state)[sbase + n] = __float2bfloat16(h[n]);
      } else {
        static_cast<float*>(a.state)[sbase + n] = h[n];
      }
    }
  }
}

__global__ void SwiGluKernel(const bf16* in, int64_t rows, int64_t n, bf16* out) {
  const int64_t total = rows * n;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / n;
    const int64_t j = i - r * n;
    const float g = __bfloat162float(in[r * 2 * n + j]);
    const float u = __bfloat162float(in[r * 2 * n + n + j]);
    out[i] = __float2bfloat16(u * SiluF(g));
  }
}

__global__ void GmuGateKernel(const bf16* g, const bf16* m, int64_t count, bf16* out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16(SiluF(__bfloat162float(g[i])) * __bfloat162float(m[i]));
  }
}

__global__ void BiasToBf16Kernel(const float* in, int64_t rows, int64_t cols, const float* bias,
                                 bf16* out) {
  const int64_t total = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float b = bias != nullptr ? bias[i % cols] : 0.0f;
    out[i] = __float2bfloat16(in[i] + b);
  }
}

__global__ void AddBiasKernel(float* x, int64_t rows, int64_t cols, const float* bias) {
  const int64_t total = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] += bias[i % cols];
  }
}

template <typename T>
__global__ void GatherRowsKernel(const T* src, int64_t cols, const int32_t* idx, T* dst) {
  const int64_t i = blockIdx.x;
  const T* s = src + static_cast<int64_t>(idx[i]) * cols;
  T* d = dst + i * cols;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) d[j] = s[j];
}

__global__ void StoreKvBlocksKernel(const bf16* qkv, int64_t ld, int64_t k_off, int64_t kvd,
                                    const SegDev* segs, const int32_t* row_seg, bf16* k_pool,
                                    bf16* v_pool, const int32_t* block_table, int64_t max_blocks,
                                    int block_tokens) {
  const int64_t r = blockIdx.x;
  const SegDev seg = segs[row_seg[r]];
  const int64_t p = seg.start + (r - seg.row0);
  const int64_t blk = block_table[static_cast<int64_t>(seg.slot) * max_blocks + p / block_tokens];
  const int64_t off = (blk * block_tokens + p % block_tokens) * kvd;
  const bf16* src = qkv + r * ld + k_off;
  for (int64_t j = threadIdx.x; j < kvd; j += blockDim.x) {
    k_pool[off + j] = src[j];
    v_pool[off + j] = src[kvd + j];
  }
}

__global__ void StoreKvRingKernel(const bf16* qkv, int64_t ld, int64_t k_off, int64_t kvd,
                                  const SegDev* segs, const int32_t* row_seg, bf16* k_ring,
                                  bf16* v_ring, int64_t window) {
  const int64_t r = blockIdx.x;
  const SegDev seg = segs[row_seg[r]];
  const int64_t t = r - seg.row0;
  if (t < static_cast<int64_t>(seg.len) - window) return;  // overwritten later in the segment
  const int64_t p = seg.start + t;
  const int64_t off = (static_cast<int64_t>(seg.slot) * window + p % window) * kvd;
  const bf16* src = qkv + r * ld + k_off;
  for (int64_t j = threadIdx.x; j < kvd; j += blockDim.x) {
    k_ring[off + j] = src[j];
    v_ring[off + j] = src[kvd + j];
  }
}

dim3 ChanGrid(int64_t outer, int64_t di) {
  return dim3(static_cast<unsigned>(outer),
              static_cast<unsigned>((di + kChanThreads - 1) / kChanThreads));
}

}  // namespace

cudaError_t LaunchLayerNorm(const float* x, int64_t rows, int64_t dim, const float* w,
                            const float* b, float eps, bf16* y, cudaStream_t stream) {
  LayerNormKernel<<<static_cast<unsigned>(rows), kRowThreads, 0, stream>>>(x, dim, w, b, eps, y);
  return cudaGetLastError();
}

cudaError_t LaunchEmbedding(const bf16* table, int64_t dim, const int32_t* ids, int64_t rows,
                            float* x, cudaStream_t stream) {
  EmbeddingKernel<<<static_cast<unsigned>(rows), kRowThreads, 0, stream>>>(table, dim, ids, x);
  return cudaGetLastError();
}

cudaError_t LaunchCausalConv1d(const ConvArgs& a, cudaStream_t stream) {
  Conv1dKernel<<<ChanGrid(a.rows, a.di), kChanThreads, 0, stream>>>(
      a.x, a.ldx, a.segs, a.row_seg, a.conv_state, a.w, a.bias, a.di, a.K, a.y);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  ConvStateKernel<<<ChanGrid(a.nsegs, a.di), kChanThreads, 0, stream>>>(a.x, a.ldx, a.segs,
                                                                        a.conv_state, a.di, a.K);
  return cudaGetLastError();
}

cudaError_t LaunchCausalConv1dUpdate(const ConvArgs& a, cudaStream_t stream) {
  Conv1dUpdateKernel<<<ChanGrid(a.rows, a.di), kChanThreads, 0, stream>>>(
      a.x, a.ldx, a.slots, a.conv_state, a.w, a.bias, a.di, a.K, a.y);
  return cudaGetLastError();
}

cudaError_t LaunchSelectiveScan(const ScanArgs& a, cudaStream_t stream) {
  const int64_t outer = a.segs != nullptr ? a.nsegs : a.rows;
  // 64 threads per block: more blocks on the chip for the few channels of one sequence.
  const dim3 grid(static_cast<unsigned>(outer), static_cast<unsigned>((a.di + 63) / 64));
  if (a.S == kScanLanes) {
    const dim3 lanes_grid(static_cast<unsigned>(outer),
                          static_cast<unsigned>((a.di + kScanChannels - 1) / kScanChannels));
    ScanLanesKernel<<<lanes_grid, kScanLaneThreads, 0, stream>>>(a);
  } else {
    ScanKernel<0><<<grid, 64, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

cudaError_t LaunchSwiGlu(const bf16* in, int64_t rows, int64_t n, bf16* out, cudaStream_t stream) {
  SwiGluKernel<<<ElemBlocks(rows * n), kElemThreads, 0, stream>>>(in, rows, n, out);
  return cudaGetLastError();
}

cudaError_t LaunchGmuGate(const bf16* g, const bf16* m, int64_t count, bf16* out,
                          cudaStream_t stream) {
  GmuGateKernel<<<ElemBlocks(count), kElemThreads, 0, stream>>>(g, m, count, out);
  return cudaGetLastError();
}

cudaError_t LaunchBiasToBf16(const float* in, int64_t rows, int64_t cols, const float* bias,
                             bf16* out, cudaStream_t stream) {
  BiasToBf16Kernel<<<ElemBlocks(rows * cols), kElemThreads, 0, stream>>>(in, rows, cols, bias, out);
  return cudaGetLastError();
}

cudaError_t LaunchAddBias(float* x, int64_t rows, int64_t cols, const float* bias,
                          cudaStream_t stream) {
  AddBiasKernel<<<ElemBlocks(rows * cols), kElemThreads, 0, stream>>>(x, rows, cols, bias);
  return cudaGetLastError();
}

cudaError_t LaunchGatherRows(const void* src, int64_t cols, bool elem4, const int32_t* idx,
                             int64_t n, void* dst, cudaStream_t stream) {
  if (elem4) {
    GatherRowsKernel<uint32_t><<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(
        static_cast<const uint32_t*>(src), cols, idx, static_cast<uint32_t*>(dst));
  } else {
    GatherRowsKernel<uint16_t><<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(
        static_cast<const uint16_t*>(src), cols, idx, static_cast<uint16_t*>(dst));
  }
  return cudaGetLastError();
}

cudaError_t LaunchStoreKvBlocks(const KvStoreArgs& a, cudaStream_t stream) {
  StoreKvBlocksKernel<<<static_cast<unsigned>(a.rows), kChanThreads, 0, stream>>>(
      a.qkv, a.ld, a.k_off, a.kvd, a.segs, a.row_seg, a.k_pool, a.v_pool, a.block_table,
      a.max_blocks, a.block_tokens);
  return cudaGetLastError();
}

cudaError_t LaunchStoreKvRing(const KvStoreArgs& a, cudaStream_t stream) {
  StoreKvRingKernel<<<static_cast<unsigned>(a.rows), kChanThreads, 0, stream>>>(
      a.qkv, a.ld, a.k_off, a.kvd, a.segs, a.row_seg, a.k_ring, a.v_ring, a.window);
  return cudaGetLastError();
}

}  // namespace sambay::cuda
