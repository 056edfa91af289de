// Validated CUDA ops of the SambaY forward (docs/model-spec.md "Exact math of every block"):
// the API the CUDA model and the tests use.
//
// Each function checks every argument on the host (null pointers, sizes, ranges, and the host
// mirrors of device index arrays: token ids, segments, slots, block tables) and returns
// InvalidArgument naming the op and the argument before anything is launched; then it
// enqueues the kernel(s) of engine/cuda/kernels.h on `stream` and returns the launch status.
// Shapes and layouts are documented in kernels.h.
//
// Stateless; thread-safe as long as concurrent calls use different output buffers.
#ifndef SAMBAY_ENGINE_CUDA_OPS_H_
#define SAMBAY_ENGINE_CUDA_OPS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/cuda/kernels.h"

namespace sambay::cuda {

// A batch layout: segments and the row -> segment map, as host mirrors (for validation and
// planning) and device copies (for the kernels).
struct Segments {
  std::vector<SegDev> host;
  std::vector<int32_t> host_row_seg;
  const SegDev* dev = nullptr;
  const int32_t* dev_row_seg = nullptr;
  int64_t rows() const { return static_cast<int64_t>(host_row_seg.size()); }
  int64_t size() const { return static_cast<int64_t>(host.size()); }
};

// Fills host and host_row_seg from (slot, start, len) triples laid out back to back.
void BuildSegments(absl::Span<const int32_t> slots, absl::Span<const int64_t> starts,
                   absl::Span<const int32_t> lens, Segments* s);

// Segments cover rows 0..rows-1 contiguously in order, len > 0, start >= 0, slots in
// [0, num_slots) and distinct, device copies present.
absl::Status ValidateSegments(const char* op, const Segments& s, int64_t num_slots);

absl::Status LayerNorm(cudaStream_t stream, const float* x, int64_t rows, int64_t dim,
                       const float* w, const float* b, float eps, bf16* y);

// host_ids: the host copy of dev_ids (checked against vocab).
absl::Status Embedding(cudaStream_t stream, const bf16* table, int64_t vocab, int64_t dim,
                       absl::Span<const int32_t> host_ids, const int32_t* dev_ids, float* x);

// Prefill: a.segs / a.row_seg / a.nsegs / a.rows come from `segs`.
absl::Status CausalConv1d(cudaStream_t stream, ConvArgs a, const Segments& segs, int64_t num_slots);
// Decode update: a.slots is the device copy of host_slots; a.rows comes from host_slots.
absl::Status CausalConv1dUpdate(cudaStream_t stream, ConvArgs a,
                                absl::Span<const int32_t> host_slots, int64_t num_slots);

// Prefill: a.segs/a.nsegs from `segs`; decode update: segs == nullptr, a.slots with host_slots.
absl::Status SelectiveScan(cudaStream_t stream, ScanArgs a, const Segments* segs,
                           absl::Span<const int32_t> host_slots, int64_t num_slots);

absl::Status SwiGlu(cudaStream_t stream, const bf16* in, int64_t rows, int64_t n, bf16* out);
absl::Status GmuGate(cudaStream_t stream, const bf16* g, const bf16* m, int64_t count, bf16* out);
absl::Status BiasToBf16(cudaStream_t stream, const float* in, int64_t rows, int64_t cols,
                        const float* bias, bf16* out);
absl::Status AddBias(cudaStream_t stream, float* x, int64_t rows, int64_t cols, const float* bias);
absl::Status GatherRows(cudaStream_t stream, const void* src, int64_t src_rows, int64_t cols,
                        bool elem4, absl::Span<const int32_t> host_idx, const int32_t* dev_idx,
                        void* dst);

// a.segs / a.row_seg / a.rows come from `segs`. host_block_table: mirror of a.block_table
// [num_slots, a.max_blocks]; every position written must map to a block id in [0, num_blocks).
absl::Status StoreKvBlocks(cudaStream_t stream, KvStoreArgs a, const Segments& segs,
                           int64_t num_slots, absl::Span<const int32_t> host_block_table,
                           int64_t num_blocks);
// a.segs / a.row_seg / a.rows come from `segs`.
absl::Status StoreKvRing(cudaStream_t stream, KvStoreArgs a, const Segments& segs,
                         int64_t num_slots);

// Bytes of `partial` workspace DiffAttention needs.
int64_t DiffAttentionWorkspaceBytes(int64_t rows, int num_heads, int head_dim, int splits);
// a.segs / a.row_seg / a.rows come from `segs`. For kBlocks every attended position must be
// covered by host_block_table; `partial_bytes` is the size of a.partial.
absl::Status DiffAttention(cudaStream_t stream, AttnArgs a, const Segments& segs, int64_t num_slots,
                           absl::Span<const int32_t> host_block_table, int64_t num_blocks,
                           int64_t partial_bytes);

absl::Status Argmax(cudaStream_t stream, const float* logits, int64_t rows, int64_t vocab,
                    int32_t* out);
// Host mirrors of the per-row parameters are checked (temperature finite >= 0, top_p in (0, 1],
// uniform in [0, 1)); a.temperature / a.top_k / a.top_p / a.uniform are their device copies.
struct SampleParamsHost {
  std::vector<float> temperature;
  std::vector<int32_t> top_k;
  std::vector<float> top_p;
  std::vector<float> uniform;
};
absl::Status SampleTopKTopP(cudaStream_t stream, const SampleArgs& a, const SampleParamsHost& host);

}  // namespace sambay::cuda

#endif  // SAMBAY_ENGINE_CUDA_OPS_H_
