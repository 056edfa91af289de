// Internal to the CUDA model (cuda_model.cc, cuda_forward.cc): the device weights, state and
// scratch buffers of a CudaModel. Not part of the engine's API.
//
// Ownership: CudaModel owns its Impl. Thread-safety: none (one thread drives a CudaModel).
#ifndef SAMBAY_ENGINE_CUDA_CUDA_MODEL_IMPL_H_
#define SAMBAY_ENGINE_CUDA_CUDA_MODEL_IMPL_H_

#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "engine/cuda/cuda_model.h"

namespace sambay::cuda {

struct DevMat {
  DeviceBuffer buf;
  int64_t rows = 0;
  int64_t cols = 0;
  const bf16* p() const { return buf.as<bf16>(); }
};

struct DevLayer {
  LayerKind kind = LayerKind::kMamba;
  DeviceBuffer ln1_w, ln1_b, ln2_w, ln2_b;
  DevMat fc1, fc2;
  DevMat in_proj, x_proj, dt_proj, out_proj;  // Mamba; GMU uses in_proj / out_proj
  DeviceBuffer conv_w, conv_b, dt_bias, A, D;
  DevMat wqkv, aout;
  DeviceBuffer wqkv_bias, out_bias, subln;
  float lambda = 0;
  float lambda_init = 0;
  int state_index = -1;  // among Mamba layers, or among SWA layers
};

// A host-pinned twin of one device metadata buffer: uploads are memcpy + cudaMemcpyAsync from
// pinned memory (truly asynchronous; the pinned copy is reused after the stream synchronizes).
struct PinnedBuf {
  void* p = nullptr;
  PinnedBuf() = default;
  PinnedBuf(const PinnedBuf&) = delete;
  PinnedBuf& operator=(const PinnedBuf&) = delete;
  ~PinnedBuf() {
    if (p != nullptr) (void)cudaFreeHost(p);
  }
};

// What one Forward runs: the batch layout (host mirrors + device copies), the YOCO rows.
struct ForwardPlan {
  Segments segs;
  Segments cross;
  std::vector<int32_t> slots, ids, sel;
  bool decode = false;   // every segment has one token
  int64_t rows = 0;      // rows of the self-decoder
  int64_t n = 0;         // logits rows (cross-decoder)
  int64_t max_keys = 0;  // longest attended context (sets split-K)
};

struct CudaModel::Impl {
  GemmCache gemm;
  DevMat embed;
  DevMat lm_head;    // empty when tied
  bool tied = true;  // the head is rows [head_row0, head_row0 + head_rows) of embed
  int64_t head_row0 = 0;
  int64_t head_rows = 0;  // LM-head rows: the vocabulary, or a TP rank's slice of it
  DeviceBuffer final_w, final_b;
  std::vector<DevLayer> layers;
  int n_mamba = 0;
  int n_swa = 0;
  // Sequence state.
  DeviceBuffer conv, ssm, ring_k, ring_v, kpool, vpool, block_table;
  // Activations, [max_rows, ...].
  DeviceBuffer x, u, xz, xc, xdbl, dt, yg, mem, qkv_f, qkv, attn, g, act, xs, ms, logits, partial;
  // Tensor parallelism: fp32 x_proj partial sums [max_rows, x_proj_dim]; this rank's logits
  // columns [logits rows, vocab_pad] and every rank's, [tp, logits rows, vocab_pad].
  DeviceBuffer xdbl_f, logits_send, logits_recv;
  int64_t vocab_pad = 0;
  // Batch metadata.
  DeviceBuffer segs, row_seg, ids, slots, sel, cross_segs, cross_row_seg, next_ids;
  DeviceBuffer samp_t, samp_k, samp_p, samp_u;  // sampling parameters, [logits rows]
  int64_t logits_cap = 0;
  int64_t last_logits_rows = 0;

  // Pinned staging per metadata buffer, and one decode graph per batch size.
  std::map<const void*, std::unique_ptr<PinnedBuf>> pinned;
  std::map<int64_t, cudaGraphExec_t> graphs;
  std::set<int64_t> graph_warm;    // batch sizes run once (plans made): capture next time
  std::set<int64_t> graph_failed;  // batch sizes whose capture failed: always run directly

  const bf16* head() const { return tied ? embed.p() + head_row0 * embed.cols : lm_head.p(); }

  // Allocates dst's pinned twin (AllocState, once per metadata buffer).
  absl::Status Pin(const DeviceBuffer& dst) {
    std::unique_ptr<PinnedBuf>& pb = pinned[dst.data()];
    if (pb != nullptr) return absl::OkStatus();
    pb = std::make_unique<PinnedBuf>();
    SAMBAY_CUDA_RETURN_IF_ERROR(cudaMallocHost(&pb->p, dst.bytes()));
    return absl::OkStatus();
  }

  // Uploads src into dst (async on `stream`, through dst's pinned twin, made by Pin). The caller
  // synchronizes the stream before the next Stage of the same buffer.
  template <typename T>
  absl::Status Stage(DeviceBuffer& dst, const std::vector<T>& src, cudaStream_t stream) {
    const size_t bytes = src.size() * sizeof(T);
    if (bytes == 0) return absl::OkStatus();
    if (bytes > dst.bytes()) return absl::InternalError("metadata buffer too small");
    auto found = pinned.find(dst.data());
    if (found == pinned.end()) return absl::InternalError("metadata buffer has no pinned twin");
    const std::unique_ptr<PinnedBuf>& pb = found->second;
    std::memcpy(pb->p, src.data(), bytes);
    SAMBAY_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst.data(), pb->p, bytes, cudaMemcpyHostToDevice, stream));
    return absl::OkStatus();
  }

  ~Impl() {
    for (auto& [rows, g] : graphs) (void)cudaGraphExecDestroy(g);
  }
};

}  // namespace sambay::cuda

#endif  // SAMBAY_ENGINE_CUDA_CUDA_MODEL_IMPL_H_
