// Raw CUDA kernel launchers of the CUDA backend (docs/model-spec.md "Exact math of every
// block"): no validation, no Abseil.
//
// These are the only entry points into the .cu files. Each enqueues its kernel(s) on `stream`
// and returns cudaGetLastError() (launch errors; execution errors surface at the next sync).
// Callers validate every argument first: engine/cuda/ops.h does, and is what the rest of the
// code calls. Pointers are device pointers unless a comment says otherwise.
//
// Layout conventions: row-major [rows, cols] matrices; activations bf16 (GEMM inputs) or fp32
// (the residual stream, logits); weights bf16; small per-channel vectors fp32.
// Stateless; thread-safe (each call only touches the buffers passed in).
#ifndef SAMBAY_ENGINE_CUDA_KERNELS_H_
#define SAMBAY_ENGINE_CUDA_KERNELS_H_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace sambay::cuda {

using bf16 = __nv_bfloat16;

// One sequence's rows inside a batched pass (device array, one entry per segment). Row r of
// segment s is the token at absolute position start + (r - row0).
struct SegDev {
  int32_t row0 = 0;
  int32_t len = 0;
  int32_t slot = 0;  // state slot of the sequence
  int32_t pad = 0;
  int64_t start = 0;
};
static_assert(sizeof(SegDev) == 24, "SegDev layout is shared by host and device");

// Batch-1 decode GEMM: y[n] = sum_k x[k] w[n, k] (+ y[n] when accumulate; fp32 output only),
// fp32 accumulation. x bf16 [K]; w bf16 [N, K]; y [N] fp32 or bf16. Reads w once.
cudaError_t LaunchGemv(const bf16* x, int64_t K, const bf16* w, int64_t N, void* y, bool out_f32,
                       bool accumulate, cudaStream_t stream);

// y = LayerNorm(bf16(x)) * w + b per row (docs/model-spec.md "Residual layout, norms": the
// fp32 residual is rounded to bf16 first; statistics in fp32, biased variance). x fp32
// [rows, dim]; y bf16 [rows, dim].
cudaError_t LaunchLayerNorm(const float* x, int64_t rows, int64_t dim, const float* w,
                            const float* b, float eps, bf16* y, cudaStream_t stream);

// x[r, :] = float(table[ids[r], :]); table bf16 [vocab, dim]; x fp32 [rows, dim].
cudaError_t LaunchEmbedding(const bf16* table, int64_t dim, const int32_t* ids, int64_t rows,
                            float* x, cudaStream_t stream);

// Causal depthwise conv (kernel K, bias) + SiLU (docs/model-spec.md "Mamba-1 mixer" step 2),
// then the conv state update. x: bf16 rows with stride ldx (the first di columns are read);
// conv_state bf16 [slots, K-1, di] (row 0 oldest); w fp32 [di, K] (w[c*K + K-1] multiplies the
// current token); y bf16 [rows, di].
// LaunchCausalConv1d runs over segments (segs/row_seg/nsegs describe the rows; slots is
// ignored). LaunchCausalConv1dUpdate takes one token per row: row r belongs to slot slots[r]
// (decode; segs/row_seg/nsegs are ignored).
struct ConvArgs {
  const bf16* x = nullptr;
  int64_t ldx = 0;
  const SegDev* segs = nullptr;
  const int32_t* row_seg = nullptr;
  int64_t nsegs = 0;
  const int32_t* slots = nullptr;
  int64_t rows = 0;
  bf16* conv_state = nullptr;
  const float* w = nullptr;
  const float* bias = nullptr;
  int64_t di = 0;
  int K = 0;
  bf16* y = nullptr;
};
cudaError_t LaunchCausalConv1d(const ConvArgs& a, cudaStream_t stream);
cudaError_t LaunchCausalConv1dUpdate(const ConvArgs& a, cudaStream_t stream);

// Selective scan (docs/model-spec.md "Mamba-1 mixer" steps 4-7), sequential over each
// segment's tokens.
//   delta = softplus(dt[r, c] + dt_bias[c]); h = exp(delta A) h + delta B x; y = C.h + D x
//   memory[r, c] = bf16(y) (if memory != nullptr); y_gated[r, c] = bf16(y * silu(z[r, c])).
// xc bf16 [rows, di]; dt fp32 [rows, di]; A fp32 [di, S]; B = bc[r*ld_bc + b_off + n],
// C = bc[r*ld_bc + b_off + S + n] (bf16); z bf16 rows with stride ldz; state [slots, di, S] in
// fp32 (state_bf16 false) or bf16 (true: loaded and stored as bf16, math in fp32).
// With segs == nullptr, row r is one token of slot slots[r] (decode update); otherwise slots
// is ignored and segs/nsegs describe the rows.
struct ScanArgs {
  const bf16* xc = nullptr;
  const float* dt = nullptr;
  const float* dt_bias = nullptr;
  const float* A = nullptr;
  const bf16* bc = nullptr;
  int64_t ld_bc = 0;
  int64_t b_off = 0;
  const float* D = nullptr;
  const bf16* z = nullptr;
  int64_t ldz = 0;
  const SegDev* segs = nullptr;
  int64_t nsegs = 0;
  const int32_t* slots = nullptr;
  int64_t rows = 0;
  void* state = nullptr;
  bool state_bf16 = false;
  int64_t di = 0;
  int S = 0;
  bf16* y_gated = nullptr;
  bf16* memory = nullptr;
};
inline constexpr int kMaxDState = 64;
cudaError_t LaunchSelectiveScan(const ScanArgs& a, cudaStream_t stream);

// out[r, j] = bf16(up * silu(gate)) with gate = in[r, j], up = in[r, n + j]; in [rows, 2n].
cudaError_t LaunchSwiGlu(const bf16* in, int64_t rows, int64_t n, bf16* out, cudaStream_t stream);
// out[i] = bf16(silu(g[i]) * m[i]) for i < count (docs/model-spec.md "GMU").
cudaError_t LaunchGmuGate(const bf16* g, const bf16* m, int64_t count, bf16* out,
                          cudaStream_t stream);
// out[r, c] = bf16(in[r, c] + bias[c]); in fp32 [rows, cols]; bias may be null.
cudaError_t LaunchBiasToBf16(const float* in, int64_t rows, int64_t cols, const float* bias,
                             bf16* out, cudaStream_t stream);
// x[r, c] += bias[c].
cudaError_t LaunchAddBias(float* x, int64_t rows, int64_t cols, const float* bias,
                          cudaStream_t stream);
// dst[i, :] = src[idx[i], :] for rows of `cols` 2-byte (elem4 false) or 4-byte elements.
cudaError_t LaunchGatherRows(const void* src, int64_t cols, bool elem4, const int32_t* idx,
                             int64_t n, void* dst, cudaStream_t stream);

// K/V stores: K of row r = qkv[r*ld + k_off .. + kvd), V follows at k_off + kvd; segs/row_seg
// describe the rows.
// LaunchStoreKvBlocks stores every row into the global layer's block pool: position
// p = start + t goes to block block_table[slot * max_blocks + p / block_tokens], row
// p % block_tokens. Pools bf16 [num_blocks, block_tokens, kvd].
// LaunchStoreKvRing stores the last min(len, window) rows of each segment into the SWA ring,
// slot p % window. Rings bf16 [slots, window, kvd].
struct KvStoreArgs {
  const bf16* qkv = nullptr;
  int64_t ld = 0;
  int64_t k_off = 0;
  int64_t kvd = 0;
  const SegDev* segs = nullptr;
  const int32_t* row_seg = nullptr;
  int64_t rows = 0;
  bf16* k_pool = nullptr;  // LaunchStoreKvBlocks only
  bf16* v_pool = nullptr;
  const int32_t* block_table = nullptr;
  int64_t max_blocks = 0;
  int block_tokens = 0;
  bf16* k_ring = nullptr;  // LaunchStoreKvRing only
  bf16* v_ring = nullptr;
  int64_t window = 0;
};
cudaError_t LaunchStoreKvBlocks(const KvStoreArgs& a, cudaStream_t stream);
cudaError_t LaunchStoreKvRing(const KvStoreArgs& a, cudaStream_t stream);

// Differential attention (docs/model-spec.md "Differential attention core" to "Cross-decoder
// differential attention") with the 128-wide V trick: per pair i and stripe s, one softmax of
// q[head 2i+s] . k[head 2j+s] over the attended keys applied to the 2*hd-wide
// V = [v head 2j | v head 2j+1], j = i / (H/G); then D = O1 - lambda O2, RMSNorm over 2 hd,
// * subln * (1 - lambda_init), written to out[r, i*2hd .. (i+1)*2hd).
// Query row r (segment s, t = r - row0) sits at p = start + t and attends positions
// [lo, p], lo = window > 0 ? max(0, p - window + 1) : 0.
// Key sources: kRing (SWA): positions >= start come from knew/vnew rows (row0 + kp - start),
// earlier ones from the ring (slot kp % window). kBlocks (global, cross): the block pool.
// Keys are split in `splits` ranges (split-K), each writing partial softmax state to
// `partial` [rows * pairs * splits * 2 * (2 hd + 2)] floats; a combine pass finishes.
enum class KvSource : int { kRing = 0, kBlocks = 1 };
struct AttnArgs {
  KvSource source = KvSource::kBlocks;
  const bf16* q = nullptr;
  int64_t ldq = 0;
  const bf16* knew = nullptr;  // kRing only
  const bf16* vnew = nullptr;
  int64_t ld_new = 0;
  const bf16* k_ring = nullptr;  // [slots, window, kvd]
  const bf16* v_ring = nullptr;
  int64_t window = 0;            // 0 = unlimited (global / cross)
  const bf16* k_pool = nullptr;  // kBlocks only
  const bf16* v_pool = nullptr;
  const int32_t* block_table = nullptr;
  int64_t max_blocks = 0;
  int block_tokens = 0;
  // Host validation only (ops.h DiffAttention): the caller guarantees the table entries of
  // positions before each segment's start (CudaModel assigns them from its own free list and
  // checked them when they were new), so only the blocks the segment's own rows reach are
  // checked: O(rows / block) per step instead of O(context / block).
  bool prefix_blocks_trusted = false;
  const SegDev* segs = nullptr;
  const int32_t* row_seg = nullptr;
  int64_t rows = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 0;
  float lambda = 0;
  float lambda_init = 0;
  const float* subln = nullptr;  // [2 hd]
  float eps = 1e-5f;
  float* partial = nullptr;
  int splits = 1;
  bf16* out = nullptr;
  int64_t ldo = 0;
};
inline constexpr int kMaxHeadDim = 128;
cudaError_t LaunchDiffAttention(const AttnArgs& a, cudaStream_t stream);

// Greedy: out[r] = argmax_j logits[r, j] (ties -> lowest id); logits fp32 [rows, vocab].
cudaError_t LaunchArgmax(const float* logits, int64_t rows, int64_t vocab, int32_t* out,
                         cudaStream_t stream);
// Temperature, top-k, top-p sampling, one row per block (all arrays [rows], on the device).
// temperature[r] <= 0 means greedy. top_k[r] <= 0 or >= vocab means off; top_p[r] >= 1 off.
// Keeps tokens whose logit is >= the k-th largest (ties kept) and, of those, the highest
// whose probability mass reaches top_p (ties kept); draws with uniform[r] in [0, 1) by
// walking the kept tokens in id order. logits fp32 [rows, vocab]; out [rows].
struct SampleArgs {
  const float* logits = nullptr;
  int64_t rows = 0;
  int64_t vocab = 0;
  const float* temperature = nullptr;
  const int32_t* top_k = nullptr;
  const float* top_p = nullptr;
  const float* uniform = nullptr;
  int32_t* out = nullptr;
};
cudaError_t LaunchSampleTopKTopP(const SampleArgs& a, cudaStream_t stream);

}  // namespace sambay::cuda

#endif  // SAMBAY_ENGINE_CUDA_KERNELS_H_
