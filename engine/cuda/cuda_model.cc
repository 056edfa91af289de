#include "engine/cuda/cuda_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/cuda/cuda_model_impl.h"
#include "engine/dtype.h"

namespace sambay::cuda {
namespace {

absl::StatusOr<DevMat> UploadMat(const WeightView& w) {
  DevMat m;
  m.rows = w.rows;
  m.cols = w.cols;
  const int64_t n = w.rows * w.cols;
  SAMBAY_ASSIGN_OR_RETURN(m.buf, DeviceBuffer::Alloc(static_cast<size_t>(n) * 2));
  if (w.dtype == DType::kBF16) {
    SAMBAY_RETURN_IF_ERROR(m.buf.CopyFromHost(w.data, static_cast<size_t>(n) * 2));
    return m;
  }
  // Convert in slices of 1M elements to bound host memory.
  constexpr int64_t kSlice = int64_t{1} << 20;
  std::vector<uint16_t> tmp(static_cast<size_t>(std::min(n, kSlice)));
  std::vector<float> f(tmp.size());
  for (int64_t b = 0; b < n; b += kSlice) {
    const int64_t e = std::min(n, b + kSlice);
    const auto* src = static_cast<const unsigned char*>(w.data) + b * DTypeSize(w.dtype);
    ConvertToF32(w.dtype, src, f.data(), e - b);
    for (int64_t i = 0; i < e - b; ++i) tmp[i] = F32ToBf16(f[i]);
    SAMBAY_RETURN_IF_ERROR(
        m.buf.CopyFromHost(tmp.data(), static_cast<size_t>(e - b) * 2, static_cast<size_t>(b) * 2));
  }
  return m;
}

absl::StatusOr<DeviceBuffer> UploadVec(const std::vector<float>& v) {
  DeviceBuffer b;
  SAMBAY_ASSIGN_OR_RETURN(b, DeviceBuffer::Alloc(std::max<size_t>(1, v.size()) * 4));
  SAMBAY_RETURN_IF_ERROR(b.CopyFromHost(v.data(), v.size() * 4));
  return b;
}

// b = a new device buffer of `bytes` bytes (at least 16).
absl::Status AllocBuffer(DeviceBuffer& b, int64_t bytes) {
  SAMBAY_ASSIGN_OR_RETURN(b,
                          DeviceBuffer::Alloc(static_cast<size_t>(std::max<int64_t>(bytes, 16))));
  return absl::OkStatus();
}

}  // namespace

CudaModel::~CudaModel() = default;

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Create(const Model& cpu,
                                                             const CudaModelOptions& options) {
  if (cpu.tp_size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CudaModel needs a CPU model loaded with tp = 1 (full weights), got tp = ", cpu.tp_size()));
  }
  return CreateRank(cpu.config(), cpu.weights(), options, nullptr);
}

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::CreateRank(const ModelConfig& c,
                                                                 const ModelWeights& w,
                                                                 const CudaModelOptions& options,
                                                                 const CudaTpRank* tp) {
  if (options.max_slots < 1) return absl::InvalidArgumentError("max_slots must be >= 1");
  if (options.max_context < 1) return absl::InvalidArgumentError("max_context must be >= 1");
  if (options.block_tokens < 1) return absl::InvalidArgumentError("block_tokens must be >= 1");
  if (options.max_chunk < 1) return absl::InvalidArgumentError("max_chunk must be >= 1");
  if (options.kv_blocks < 0) return absl::InvalidArgumentError("kv_blocks must be >= 0");
  if (c.head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim ", c.head_dim, " > ", kMaxHeadDim, " is not supported on CUDA"));
  }
  if (c.d_state > kMaxDState) {
    return absl::InvalidArgumentError(
        absl::StrCat("d_state ", c.d_state, " > ", kMaxDState, " is not supported on CUDA"));
  }
  if (static_cast<int>(w.layers.size()) != c.num_layers || w.embed.rows != c.vocab_size ||
      w.embed.cols != c.hidden_size) {
    return absl::InvalidArgumentError("CudaModel: the weights do not match the config");
  }
  if (tp != nullptr) {
    if (tp->comm == nullptr) return absl::InvalidArgumentError("CudaTpRank: no collectives");
    const int r = tp->comm->rank(), n = tp->comm->size();
    const std::vector<int64_t>& b = tp->vocab_bounds;
    if (n < 1 || r < 0 || r >= n || static_cast<int>(b.size()) != n + 1 || b[0] != 0 ||
        b[n] != c.vocab_size || b[r + 1] - b[r] != w.lm_head.rows) {
      return absl::InvalidArgumentError(absl::StrCat(
          "CudaTpRank: rank ", r, " of ", n, ": vocab_bounds do not match the LM-head shard"));
    }
    for (int i = 0; i < n; ++i) {
      if (b[i + 1] < b[i]) return absl::InvalidArgumentError("CudaTpRank: vocab_bounds decrease");
    }
  } else if (w.lm_head.rows != c.vocab_size) {
    return absl::InvalidArgumentError("CudaModel: the LM head does not cover the vocabulary");
  }
  std::unique_ptr<CudaModel> m(new CudaModel());
  m->config_ = c;
  m->options_ = options;
  m->options_.max_logits_rows = std::max<int64_t>(options.max_logits_rows, options.max_slots);
  if (tp != nullptr) {
    m->has_tp_ = true;
    m->tp_ = *tp;
  }
  SAMBAY_ASSIGN_OR_RETURN(m->ctx_, CudaContext::Create(options.device));
  m->impl_ = std::make_unique<Impl>();
  SAMBAY_RETURN_IF_ERROR(m->Upload(w));
  SAMBAY_RETURN_IF_ERROR(m->AllocState());
  return m;
}

absl::Status CudaModel::Upload(const ModelWeights& w) {
  const ModelConfig& c = config_;
  Impl& im = *impl_;
  SAMBAY_ASSIGN_OR_RETURN(im.embed, UploadMat(w.embed));
  // A tied head (or a TP rank's slice of one) is a row range of the embedding: no second copy.
  const auto* e0 = static_cast<const unsigned char*>(w.embed.data);
  const auto* h0 = static_cast<const unsigned char*>(w.lm_head.data);
  const int64_t row_bytes = w.embed.cols * DTypeSize(w.embed.dtype);
  im.tied = w.lm_head.dtype == w.embed.dtype && w.lm_head.cols == w.embed.cols && h0 >= e0 &&
            h0 < e0 + w.embed.rows * row_bytes && (h0 - e0) % row_bytes == 0;
  im.head_rows = w.lm_head.rows;
  if (im.tied) {
    im.head_row0 = (h0 - e0) / row_bytes;
  } else {
    SAMBAY_ASSIGN_OR_RETURN(im.lm_head, UploadMat(w.lm_head));
  }
  SAMBAY_ASSIGN_OR_RETURN(im.final_w, UploadVec(w.final_w));
  SAMBAY_ASSIGN_OR_RETURN(im.final_b, UploadVec(w.final_b));
  weight_bytes_ = w.lm_head.rows * w.lm_head.cols * 2;
  // A layer matrix: uploaded, and counted in the bytes one decode step reads.
  auto mat = [&](DevMat& dst, const WeightView& v) -> absl::Status {
    SAMBAY_ASSIGN_OR_RETURN(dst, UploadMat(v));
    weight_bytes_ += v.rows * v.cols * 2;
    return absl::OkStatus();
  };
  im.layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    const LayerWeights& l = w.layers[i];
    DevLayer& d = im.layers[i];
    d.kind = l.kind;
    SAMBAY_ASSIGN_OR_RETURN(d.ln1_w, UploadVec(l.ln1_w));
    SAMBAY_ASSIGN_OR_RETURN(d.ln1_b, UploadVec(l.ln1_b));
    SAMBAY_ASSIGN_OR_RETURN(d.ln2_w, UploadVec(l.ln2_w));
    SAMBAY_ASSIGN_OR_RETURN(d.ln2_b, UploadVec(l.ln2_b));
    SAMBAY_RETURN_IF_ERROR(mat(d.fc1, l.fc1));
    SAMBAY_RETURN_IF_ERROR(mat(d.fc2, l.fc2));
    switch (l.kind) {
      case LayerKind::kMamba: {
        const MambaWeights& mw = l.mamba;
        SAMBAY_RETURN_IF_ERROR(mat(d.in_proj, mw.in_proj));
        SAMBAY_RETURN_IF_ERROR(mat(d.x_proj, mw.x_proj));
        SAMBAY_RETURN_IF_ERROR(mat(d.dt_proj, mw.dt_proj));
        SAMBAY_RETURN_IF_ERROR(mat(d.out_proj, mw.out_proj));
        SAMBAY_ASSIGN_OR_RETURN(d.conv_w, UploadVec(mw.conv_w));
        SAMBAY_ASSIGN_OR_RETURN(d.conv_b, UploadVec(mw.conv_b));
        SAMBAY_ASSIGN_OR_RETURN(d.dt_bias, UploadVec(mw.dt_bias));
        SAMBAY_ASSIGN_OR_RETURN(d.A, UploadVec(mw.A));
        SAMBAY_ASSIGN_OR_RETURN(d.D, UploadVec(mw.D));
        d.state_index = impl_->n_mamba++;
        break;
      }
      case LayerKind::kSwa:
      case LayerKind::kGlobal:
      case LayerKind::kCross: {
        const AttentionWeights& aw = l.attn;
        SAMBAY_RETURN_IF_ERROR(mat(d.wqkv, aw.wqkv));
        SAMBAY_RETURN_IF_ERROR(mat(d.aout, aw.out_proj));
        SAMBAY_ASSIGN_OR_RETURN(d.wqkv_bias, UploadVec(aw.wqkv_bias));
        SAMBAY_ASSIGN_OR_RETURN(d.out_bias, UploadVec(aw.out_bias));
        SAMBAY_ASSIGN_OR_RETURN(d.subln, UploadVec(aw.subln));
        d.lambda = aw.lambda;
        d.lambda_init = aw.lambda_init;
        if (l.kind == LayerKind::kSwa) d.state_index = impl_->n_swa++;
        break;
      }
      case LayerKind::kGmu: {
        SAMBAY_RETURN_IF_ERROR(mat(d.in_proj, l.gmu.in_proj));
        SAMBAY_RETURN_IF_ERROR(mat(d.out_proj, l.gmu.out_proj));
        break;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CudaModel::AllocState() {
  const ModelConfig& c = config_;
  Impl& im = *impl_;
  const int64_t S = options_.max_slots;
  max_blocks_ = (options_.max_context + options_.block_tokens - 1) / options_.block_tokens;
  const int64_t nblocks = options_.kv_blocks > 0 ? options_.kv_blocks : S * max_blocks_;
  max_rows_ = std::max<int64_t>(options_.max_chunk, S);
  const int64_t R = max_rows_;
  SAMBAY_RETURN_IF_ERROR(AllocSlotState(nblocks));
  im.logits_cap = options_.max_logits_rows;
  SAMBAY_RETURN_IF_ERROR(AllocActivations());
  if (has_tp_) SAMBAY_RETURN_IF_ERROR(AllocTpBuffers());
  const int64_t partial =
      std::max(DiffAttentionWorkspaceBytes(R, c.num_heads, static_cast<int>(c.head_dim), 1),
               DiffAttentionWorkspaceBytes(S, c.num_heads, static_cast<int>(c.head_dim), 64));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.partial, partial));
  SAMBAY_RETURN_IF_ERROR(AllocMetadata());
  return ctx_->Synchronize();
}

absl::Status CudaModel::AllocSlotState(int64_t nblocks) {
  const ModelConfig& c = config_;
  Impl& im = *impl_;
  const int64_t S = options_.max_slots;
  const int64_t di = c.d_inner, K = c.d_conv, W = c.sliding_window, kvd = c.kv_dim();
  const int64_t ssm_elem = options_.ssm_state_bf16 ? 2 : 4;
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.conv, im.n_mamba * S * (K - 1) * di * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.ssm, im.n_mamba * S * di * c.d_state * ssm_elem));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.ring_k, im.n_swa * S * W * kvd * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.ring_v, im.n_swa * S * W * kvd * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.kpool, nblocks * options_.block_tokens * kvd * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.vpool, nblocks * options_.block_tokens * kvd * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.block_table, S * max_blocks_ * 4));
  SAMBAY_RETURN_IF_ERROR(im.conv.Zero());
  SAMBAY_RETURN_IF_ERROR(im.ssm.Zero());
  SAMBAY_RETURN_IF_ERROR(im.block_table.Zero());
  host_block_table_.assign(static_cast<size_t>(S * max_blocks_), -1);
  slot_blocks_.assign(static_cast<size_t>(S), 0);
  free_blocks_.clear();
  for (int64_t b = nblocks - 1; b >= 0; --b) free_blocks_.push_back(static_cast<int32_t>(b));
  slot_used_.assign(static_cast<size_t>(S), false);
  slot_tokens_.assign(static_cast<size_t>(S), 0);
  return absl::OkStatus();
}

absl::Status CudaModel::AllocActivations() {
  const ModelConfig& c = config_;
  Impl& im = *impl_;
  const int64_t di = c.d_inner, kvd = c.kv_dim();
  const int64_t h = c.hidden_size, qd = c.q_dim(), F = c.intermediate_size;
  const int64_t ld = qd + 2 * kvd;
  const int64_t R = max_rows_;
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.x, R * h * 4));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.u, R * h * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.xz, R * 2 * di * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.xc, R * di * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.xdbl, R * c.x_proj_dim() * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.dt, R * di * 4));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.yg, R * di * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.mem, R * di * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.qkv_f, R * ld * 4));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.qkv, R * ld * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.attn, R * qd * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.g, R * std::max(2 * F, di) * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.act, R * std::max(F, di) * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.xs, im.logits_cap * h * 4));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.ms, im.logits_cap * di * 2));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.logits, im.logits_cap * c.vocab_size * 4));
  return absl::OkStatus();
}

absl::Status CudaModel::AllocTpBuffers() {
  Impl& im = *impl_;
  const int64_t R = max_rows_;
  const int n = tp_.comm->size();
  int64_t widest = 0;
  for (int r = 0; r < n; ++r) {
    widest = std::max(widest, tp_.vocab_bounds[r + 1] - tp_.vocab_bounds[r]);
  }
  im.vocab_pad = (widest + 7) / 8 * 8;  // 32-byte rows for the GEMM output
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.xdbl_f, R * config_.x_proj_dim() * 4));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.logits_send, im.logits_cap * im.vocab_pad * 4));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.logits_recv, n * im.logits_cap * im.vocab_pad * 4));
  return absl::OkStatus();
}

absl::Status CudaModel::AllocMetadata() {
  Impl& im = *impl_;
  const int64_t R = max_rows_;
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.segs, R * static_cast<int64_t>(sizeof(SegDev))));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.row_seg, R * 4));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.ids, R * 4));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.slots, R * 4));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.sel, R * 4));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.cross_segs, R * static_cast<int64_t>(sizeof(SegDev))));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.cross_row_seg, R * 4));
  SAMBAY_RETURN_IF_ERROR(AllocBuffer(im.next_ids, R * 4));
  for (DeviceBuffer* b : {&im.samp_t, &im.samp_k, &im.samp_p, &im.samp_u}) {
    SAMBAY_RETURN_IF_ERROR(AllocBuffer(*b, im.logits_cap * 4));
  }
  // Pinned staging for every metadata upload, allocated here and never inside a pass:
  // cudaMallocHost synchronizes the device, which would wait on other TP ranks' collectives.
  for (DeviceBuffer* b :
       {&im.block_table, &im.segs, &im.row_seg, &im.ids, &im.slots, &im.sel, &im.cross_segs,
        &im.cross_row_seg, &im.samp_t, &im.samp_k, &im.samp_p, &im.samp_u}) {
    SAMBAY_RETURN_IF_ERROR(im.Pin(*b));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::CheckSlot(int slot, const char* what) const {
  if (slot < 0 || slot >= options_.max_slots) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": slot ", slot, " is outside [0, ", options_.max_slots, ")"));
  }
  if (!slot_used_[slot]) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": slot ", slot, " is not allocated"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> CudaModel::AllocSlot() {
  SAMBAY_RETURN_IF_ERROR(ctx_->Activate());  // the caller's thread may be on another GPU
  for (int s = 0; s < options_.max_slots; ++s) {
    if (slot_used_[s]) continue;
    const ModelConfig& c = config_;
    Impl& im = *impl_;
    const int64_t S = options_.max_slots;
    const int64_t conv_slot = (c.d_conv - 1) * c.d_inner * 2;
    const int64_t ssm_slot = c.d_inner * c.d_state * (options_.ssm_state_bf16 ? 2 : 4);
    for (int l = 0; l < im.n_mamba; ++l) {
      SAMBAY_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(im.conv.as<char>() + (l * S + s) * conv_slot, 0,
                                                  conv_slot, ctx_->stream()));
      SAMBAY_CUDA_RETURN_IF_ERROR(
          cudaMemsetAsync(im.ssm.as<char>() + (l * S + s) * ssm_slot, 0, ssm_slot, ctx_->stream()));
    }
    // SWA rings: positions not yet written are never read, but a download exports the whole
    // ring, so it starts as zeros like a CPU state (deterministic exports).
    const int64_t ring_slot = c.sliding_window * c.kv_dim() * 2;
    for (int l = 0; l < im.n_swa; ++l) {
      SAMBAY_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(im.ring_k.as<char>() + (l * S + s) * ring_slot, 0,
                                                  ring_slot, ctx_->stream()));
      SAMBAY_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(im.ring_v.as<char>() + (l * S + s) * ring_slot, 0,
                                                  ring_slot, ctx_->stream()));
    }
    slot_used_[s] = true;
    slot_tokens_[s] = 0;
    return s;
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("all ", options_.max_slots, " CUDA state slots are in use"));
}

absl::Status CudaModel::FreeSlot(int slot) {
  SAMBAY_RETURN_IF_ERROR(CheckSlot(slot, "FreeSlot"));
  for (int64_t b = 0; b < max_blocks_; ++b) {
    int32_t& id = host_block_table_[slot * max_blocks_ + b];
    if (id >= 0) free_blocks_.push_back(id);
    id = -1;
  }
  slot_blocks_[slot] = 0;
  slot_used_[slot] = false;
  slot_tokens_[slot] = 0;
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CudaModel::NumTokens(int slot) const {
  SAMBAY_RETURN_IF_ERROR(CheckSlot(slot, "NumTokens"));
  return slot_tokens_[slot];
}

absl::Status CudaModel::CloneSlot(int src, int dst) {
  SAMBAY_RETURN_IF_ERROR(ctx_->Activate());  // the caller's thread may be on another GPU
  SAMBAY_RETURN_IF_ERROR(CheckSlot(src, "CloneSlot src"));
  SAMBAY_RETURN_IF_ERROR(CheckSlot(dst, "CloneSlot dst"));
  if (src == dst) return absl::OkStatus();
  const ModelConfig& c = config_;
  Impl& im = *impl_;
  const int64_t S = options_.max_slots;
  const int64_t BT = options_.block_tokens;
  const int64_t kvd = c.kv_dim();
  const int64_t used = (slot_tokens_[src] + BT - 1) / BT;
  const int64_t have = slot_blocks_[dst];
  if (used - have > static_cast<int64_t>(free_blocks_.size())) {
    return absl::ResourceExhaustedError("CloneSlot: the K/V block pool is exhausted");
  }
  cudaStream_t st = ctx_->stream();
  auto copy = [&](DeviceBuffer& buf, int64_t per_slot, int64_t layers) -> absl::Status {
    for (int64_t l = 0; l < layers; ++l) {
      SAMBAY_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(buf.as<char>() + (l * S + dst) * per_slot,
                                                  buf.as<char>() + (l * S + src) * per_slot,
                                                  per_slot, cudaMemcpyDeviceToDevice, st));
    }
    return absl::OkStatus();
  };
  SAMBAY_RETURN_IF_ERROR(copy(im.conv, (c.d_conv - 1) * c.d_inner * 2, im.n_mamba));
  SAMBAY_RETURN_IF_ERROR(
      copy(im.ssm, c.d_inner * c.d_state * (options_.ssm_state_bf16 ? 2 : 4), im.n_mamba));
  SAMBAY_RETURN_IF_ERROR(copy(im.ring_k, c.sliding_window * kvd * 2, im.n_swa));
  SAMBAY_RETURN_IF_ERROR(copy(im.ring_v, c.sliding_window * kvd * 2, im.n_swa));
  const int64_t block_bytes = BT * kvd * 2;
  for (int64_t b = 0; b < used; ++b) {
    int32_t& id = host_block_table_[dst * max_blocks_ + b];
    if (id < 0) {
      id = free_blocks_.back();
      free_blocks_.pop_back();
      ++slot_blocks_[dst];
    }
    const int32_t from = host_block_table_[src * max_blocks_ + b];
    SAMBAY_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(im.kpool.as<char>() + id * block_bytes,
                                                im.kpool.as<char>() + from * block_bytes,
                                                block_bytes, cudaMemcpyDeviceToDevice, st));
    SAMBAY_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(im.vpool.as<char>() + id * block_bytes,
                                                im.vpool.as<char>() + from * block_bytes,
                                                block_bytes, cudaMemcpyDeviceToDevice, st));
  }
  SAMBAY_RETURN_IF_ERROR(ctx_->Synchronize());
  SAMBAY_RETURN_IF_ERROR(im.Stage(im.block_table, host_block_table_, st));
  slot_tokens_[dst] = slot_tokens_[src];
  return ctx_->Synchronize();
}

int64_t CudaModel::StateBytesPerStep(int64_t context) const {
  const ModelConfig& c = config_;
  const int64_t kvd = c.kv_dim();
  const int64_t ssm = options_.ssm_state_bf16 ? 2 : 4;
  // Mamba: conv and SSM state read and written; SWA: the ring read (up to the window);
  // global K/V read by the global layer and every cross layer, plus one new row written.
  const int64_t mamba =
      impl_->n_mamba * 2 * ((c.d_conv - 1) * c.d_inner * 2 + c.d_inner * c.d_state * ssm);
  const int64_t swa = impl_->n_swa * std::min(context, c.sliding_window) * kvd * 2 * 2;
  int64_t readers = 0;
  for (LayerKind k : c.layers) readers += (k == LayerKind::kGlobal || k == LayerKind::kCross);
  const int64_t global = readers * context * kvd * 2 * 2 + kvd * 2 * 2;
  return mamba + swa + global;
}

const float* CudaModel::device_logits() const { return impl_->logits.as<float>(); }

absl::Status CudaModel::ArgmaxLast(std::vector<int32_t>* out) {
  SAMBAY_RETURN_IF_ERROR(ctx_->Activate());  // the caller's thread may be on another GPU
  Impl& im = *impl_;
  const int64_t n = im.last_logits_rows;
  out->clear();
  if (n == 0) return absl::OkStatus();
  cudaStream_t st = ctx_->stream();
  SAMBAY_RETURN_IF_ERROR(
      Argmax(st, im.logits.as<float>(), n, config_.vocab_size, im.next_ids.as<int32_t>()));
  out->resize(static_cast<size_t>(n));
  SAMBAY_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(out->data(), im.next_ids.data(), n * 4, cudaMemcpyDeviceToHost, st));
  return ctx_->Synchronize();
}

absl::Status CudaModel::CopyLastLogits(absl::Span<const int> rows, std::vector<float>* out) {
  SAMBAY_RETURN_IF_ERROR(ctx_->Activate());  // the caller's thread may be on another GPU
  Impl& im = *impl_;
  const int64_t V = config_.vocab_size;
  for (int r : rows) {
    if (r < 0 || r >= im.last_logits_rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("CopyLastLogits: row ", r, " is outside [0, ", im.last_logits_rows, ")"));
    }
  }
  const size_t old = out->size();
  out->resize(old + rows.size() * static_cast<size_t>(V));
  cudaStream_t st = ctx_->stream();
  for (size_t i = 0; i < rows.size(); ++i) {
    SAMBAY_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out->data() + old + i * V,
                                                im.logits.as<float>() + rows[i] * V, V * 4,
                                                cudaMemcpyDeviceToHost, st));
  }
  return ctx_->Synchronize();
}

absl::Status CudaModel::SampleLast(const SampleParamsHost& params, std::vector<int32_t>* out) {
  SAMBAY_RETURN_IF_ERROR(ctx_->Activate());  // the caller's thread may be on another GPU
  Impl& im = *impl_;
  const int64_t n = im.last_logits_rows;
  if (n == 0) return absl::FailedPreconditionError("SampleLast: the last Forward made no logits");
  if (static_cast<int64_t>(params.temperature.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat("SampleLast: ", params.temperature.size(),
                                                   " parameter rows for ", n, " logits rows"));
  }
  cudaStream_t st = ctx_->stream();
  SAMBAY_RETURN_IF_ERROR(ctx_->Synchronize());
  SAMBAY_RETURN_IF_ERROR(im.Stage(im.samp_t, params.temperature, st));
  SAMBAY_RETURN_IF_ERROR(im.Stage(im.samp_k, params.top_k, st));
  SAMBAY_RETURN_IF_ERROR(im.Stage(im.samp_p, params.top_p, st));
  SAMBAY_RETURN_IF_ERROR(im.Stage(im.samp_u, params.uniform, st));
  SampleArgs a;
  a.logits = im.logits.as<float>();
  a.rows = n;
  a.vocab = config_.vocab_size;
  a.temperature = im.samp_t.as<float>();
  a.top_k = im.samp_k.as<int32_t>();
  a.top_p = im.samp_p.as<float>();
  a.uniform = im.samp_u.as<float>();
  a.out = im.next_ids.as<int32_t>();
  SAMBAY_RETURN_IF_ERROR(SampleTopKTopP(st, a, params));
  out->resize(static_cast<size_t>(n));
  SAMBAY_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(out->data(), im.next_ids.data(), n * 4, cudaMemcpyDeviceToHost, st));
  return ctx_->Synchronize();
}

absl::Status CudaModel::Prefill(int slot, absl::Span<const int32_t> tokens,
                                std::vector<float>* last_logits) {
  if (tokens.empty()) return absl::InvalidArgumentError("Prefill: no tokens");
  SAMBAY_RETURN_IF_ERROR(CheckSlot(slot, "Prefill"));
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("Prefill: token id ", tokens[i],
                                                     " at position ", i, " is outside [0, ",
                                                     config_.vocab_size, ")"));
    }
  }
  if (slot_tokens_[slot] + static_cast<int64_t>(tokens.size()) > options_.max_context) {
    return absl::InvalidArgumentError("Prefill: the prompt exceeds max_context");
  }
  if (last_logits != nullptr) last_logits->clear();
  const int64_t n = static_cast<int64_t>(tokens.size());
  for (int64_t b = 0; b < n; b += options_.max_chunk) {
    const int64_t e = std::min(n, b + options_.max_chunk);
    CudaSegment seg{slot, tokens.subspan(b, e - b), e == n ? LogitsMode::kLast : LogitsMode::kNone};
    SAMBAY_RETURN_IF_ERROR(Forward({&seg, 1}, e == n ? last_logits : nullptr));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::DecodeStep(absl::Span<const int> slots, absl::Span<const int32_t> tokens,
                                   std::vector<float>* logits) {
  if (slots.size() != tokens.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeStep: ", slots.size(), " slots but ", tokens.size(), " tokens"));
  }
  std::vector<CudaSegment> segs(slots.size());
  for (size_t i = 0; i < slots.size(); ++i) segs[i] = {slots[i], tokens.subspan(i, 1)};
  if (logits != nullptr) logits->clear();
  return Forward(segs, logits);
}

absl::Status CudaModel::DecodeStepGreedy(absl::Span<const int> slots,
                                         absl::Span<const int32_t> tokens,
                                         std::vector<int32_t>* next) {
  SAMBAY_RETURN_IF_ERROR(ctx_->Activate());  // the caller's thread may be on another GPU
  SAMBAY_RETURN_IF_ERROR(DecodeStep(slots, tokens, nullptr));
  const int64_t n = static_cast<int64_t>(slots.size());
  Impl& im = *impl_;
  SAMBAY_RETURN_IF_ERROR(Argmax(ctx_->stream(), im.logits.as<float>(), n, config_.vocab_size,
                                im.next_ids.as<int32_t>()));
  next->resize(static_cast<size_t>(n));
  SAMBAY_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(next->data(), im.next_ids.data(), n * 4,
                                              cudaMemcpyDeviceToHost, ctx_->stream()));
  return ctx_->Synchronize();
}

}  // namespace sambay::cuda
