// CudaModel::Forward: the batched SambaY forward on the GPU (docs/model-spec.md "Exact math of
// every block" and "Prefill behaviour (YOCO)").
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/cuda/cuda_model.h"
#include "engine/cuda/cuda_model_impl.h"

namespace sambay::cuda {

absl::Status CudaModel::ValidateForward(absl::Span<const CudaSegment> segments) const {
  ForwardCounts counts;
  return CountForward(segments, &counts);
}

absl::Status CudaModel::CountForward(absl::Span<const CudaSegment> segments,
                                     ForwardCounts* counts) const {
  const ModelConfig& c = config_;
  const int64_t BT = options_.block_tokens;
  if (segments.empty()) return absl::InvalidArgumentError("Forward: no segments");
  std::set<int> seen;
  int64_t rows = 0;
  int64_t out_rows = 0;
  int64_t need_blocks = 0;
  bool decode = true;
  for (size_t i = 0; i < segments.size(); ++i) {
    const CudaSegment& s = segments[i];
    SAMBAY_RETURN_IF_ERROR(CheckSlot(s.slot, "Forward"));
    if (!seen.insert(s.slot).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("Forward: segment ", i, ": slot ", s.slot, " appears twice"));
    }
    if (s.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: segment ", i, ": no tokens"));
    }
    for (size_t t = 0; t < s.tokens.size(); ++t) {
      if (s.tokens[t] < 0 || s.tokens[t] >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("Forward: segment ", i, ": token id ",
                                                       s.tokens[t], " at position ", t,
                                                       " is outside [0, ", c.vocab_size, ")"));
      }
    }
    const int64_t len = static_cast<int64_t>(s.tokens.size());
    const int64_t end = slot_tokens_[s.slot] + len;
    if (end > options_.max_context) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Forward: segment ", i, ": ", end, " tokens exceed max_context ", options_.max_context));
    }
    const int64_t have = slot_blocks_[s.slot];  // O(1): no walk over the block table
    need_blocks += std::max<int64_t>(0, (end + BT - 1) / BT - have);
    rows += len;
    decode = decode && len == 1;
    out_rows += s.logits == LogitsMode::kAll ? len : (s.logits == LogitsMode::kLast ? 1 : 0);
  }
  if (rows > max_rows_) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: ", rows, " rows exceed the ",
                                                   max_rows_, " of one pass (max_chunk)"));
  }
  if (out_rows > impl_->logits_cap) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Forward: ", out_rows, " logits rows exceed max_logits_rows ", impl_->logits_cap));
  }
  if (need_blocks > static_cast<int64_t>(free_blocks_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "Forward: needs ", need_blocks, " K/V blocks, ", free_blocks_.size(), " free"));
  }
  counts->rows = rows;
  counts->decode = decode;
  return absl::OkStatus();
}

absl::Status CudaModel::Forward(absl::Span<const CudaSegment> segments,
                                std::vector<float>* logits) {
  SAMBAY_RETURN_IF_ERROR(ctx_->Activate());  // the caller's thread may be on another GPU
  const ModelConfig& c = config_;
  Impl& im = *impl_;
  cudaStream_t st = ctx_->stream();

  // ---- Validate everything before touching any state.
  ForwardCounts counts;
  SAMBAY_RETURN_IF_ERROR(CountForward(segments, &counts));

  // ---- Blocks and the batch layout.
  const bool table_dirty = AssignBlocks(segments);
  ForwardPlan p;
  PlanRows(segments, counts, &p);
  PlanCrossRows(segments, &p);

  // ---- Metadata to the device (the previous pass's uploads are done: the stream is idle).
  SAMBAY_RETURN_IF_ERROR(StageMetadata(p, table_dirty));

  // ---- The kernels: replayed from a graph for decode steps, else enqueued directly.
  SAMBAY_RETURN_IF_ERROR(EnqueueOrReplay(p));
  for (const CudaSegment& s : segments) {
    slot_tokens_[s.slot] += static_cast<int64_t>(s.tokens.size());
  }
  im.last_logits_rows = p.n;
  if (p.n > 0 && logits != nullptr) {
    const size_t old = logits->size();
    const size_t count = static_cast<size_t>(p.n * c.vocab_size);
    logits->resize(old + count);
    SAMBAY_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logits->data() + old, im.logits.data(), count * 4,
                                                cudaMemcpyDeviceToHost, st));
  }
  return ctx_->Synchronize();
}

bool CudaModel::AssignBlocks(absl::Span<const CudaSegment> segments) {
  const int64_t BT = options_.block_tokens;
  bool table_dirty = false;
  for (const CudaSegment& s : segments) {
    const int64_t end = slot_tokens_[s.slot] + static_cast<int64_t>(s.tokens.size());
    for (int64_t b = 0; b < (end + BT - 1) / BT; ++b) {
      int32_t& id = host_block_table_[s.slot * max_blocks_ + b];
      if (id < 0) {
        id = free_blocks_.back();
        free_blocks_.pop_back();
        ++slot_blocks_[s.slot];
        table_dirty = true;
      }
    }
  }
  return table_dirty;
}

void CudaModel::PlanRows(absl::Span<const CudaSegment> segments, const ForwardCounts& counts,
                         ForwardPlan* plan) const {
  ForwardPlan& p = *plan;
  const Impl& im = *impl_;
  std::vector<int32_t> lens;
  std::vector<int64_t> starts;
  for (const CudaSegment& s : segments) {
    p.slots.push_back(s.slot);
    starts.push_back(slot_tokens_[s.slot]);
    lens.push_back(static_cast<int32_t>(s.tokens.size()));
    p.ids.insert(p.ids.end(), s.tokens.begin(), s.tokens.end());
  }
  BuildSegments(p.slots, starts, lens, &p.segs);
  p.segs.dev = im.segs.as<SegDev>();
  p.segs.dev_row_seg = im.row_seg.as<int32_t>();
  p.rows = counts.rows;
  p.decode = counts.decode;
  for (const SegDev& d : p.segs.host) p.max_keys = std::max<int64_t>(p.max_keys, d.start + d.len);
}

void CudaModel::PlanCrossRows(absl::Span<const CudaSegment> segments, ForwardPlan* plan) const {
  ForwardPlan& p = *plan;
  const Impl& im = *impl_;
  // Cross-decoder rows (YOCO): per segment the rows whose logits are wanted, contiguous.
  std::vector<int32_t> cslots, clens;
  std::vector<int64_t> cstarts;
  for (size_t i = 0; i < segments.size(); ++i) {
    const SegDev& d = p.segs.host[i];
    int64_t first = d.len;
    if (segments[i].logits == LogitsMode::kAll) first = 0;
    if (segments[i].logits == LogitsMode::kLast) first = d.len - 1;
    if (first >= d.len) continue;
    for (int64_t t = first; t < d.len; ++t) p.sel.push_back(static_cast<int32_t>(d.row0 + t));
    cslots.push_back(d.slot);
    cstarts.push_back(d.start + first);
    clens.push_back(static_cast<int32_t>(d.len - first));
  }
  BuildSegments(cslots, cstarts, clens, &p.cross);
  p.cross.dev = im.cross_segs.as<SegDev>();
  p.cross.dev_row_seg = im.cross_row_seg.as<int32_t>();
  p.n = static_cast<int64_t>(p.sel.size());
}

absl::Status CudaModel::StageMetadata(const ForwardPlan& p, bool table_dirty) {
  Impl& im = *impl_;
  cudaStream_t st = ctx_->stream();
  SAMBAY_RETURN_IF_ERROR(ctx_->Synchronize());
  if (table_dirty) SAMBAY_RETURN_IF_ERROR(im.Stage(im.block_table, host_block_table_, st));
  SAMBAY_RETURN_IF_ERROR(im.Stage(im.segs, p.segs.host, st));
  SAMBAY_RETURN_IF_ERROR(im.Stage(im.row_seg, p.segs.host_row_seg, st));
  SAMBAY_RETURN_IF_ERROR(im.Stage(im.ids, p.ids, st));
  SAMBAY_RETURN_IF_ERROR(im.Stage(im.slots, p.slots, st));
  if (p.n > 0) {
    SAMBAY_RETURN_IF_ERROR(im.Stage(im.sel, p.sel, st));
    SAMBAY_RETURN_IF_ERROR(im.Stage(im.cross_segs, p.cross.host, st));
    SAMBAY_RETURN_IF_ERROR(im.Stage(im.cross_row_seg, p.cross.host_row_seg, st));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::EnqueueOrReplay(ForwardPlan& p) {
  Impl& im = *impl_;
  cudaStream_t st = ctx_->stream();
  const int64_t rows = p.rows;
  // The first decode step of a batch size runs directly (it also creates the GEMM plans); the
  // second captures the graph; later ones replay it.
  const bool graphable =
      options_.cuda_graphs && p.decode && p.n == rows && im.graph_failed.count(rows) == 0;
  auto it = im.graphs.find(rows);
  if (graphable && it == im.graphs.end() && im.graph_warm.count(rows) > 0) {
    absl::StatusOr<cudaGraphExec_t> exec = Capture(p);
    if (exec.ok()) {
      it = im.graphs.emplace(rows, *exec).first;
    } else {
      // Not sticky: this batch size runs directly from now on (the stream left capture mode).
      im.graph_failed.insert(rows);
      (void)cudaGetLastError();
      std::fprintf(stderr,
                   "CudaModel: decode graph capture for %lld rows failed (%s); "
                   "running that batch size directly\n",
                   static_cast<long long>(rows), exec.status().ToString().c_str());
    }
  }
  if (graphable && it != im.graphs.end()) {
    SAMBAY_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(it->second, st));
  } else {
    SAMBAY_RETURN_IF_ERROR(Enqueue(p));
    if (graphable) im.graph_warm.insert(rows);
  }
  return absl::OkStatus();
}

absl::StatusOr<cudaGraphExec_t> CudaModel::Capture(ForwardPlan& p) {
  cudaStream_t st = ctx_->stream();
  p.max_keys = options_.max_context;  // split-K fixed per batch size
  SAMBAY_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  const absl::Status enq = Enqueue(p);
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(st, &graph);
  if (!enq.ok()) {
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    return enq;
  }
  SAMBAY_CUDA_RETURN_IF_ERROR(end);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  SAMBAY_CUDA_RETURN_IF_ERROR(inst);
  return exec;
}

// One forward pass being enqueued on the context's stream: the plan, the model's device buffers
// and the shapes every layer uses. One method per layer kind, split like the CPU engine
// (engine/forward.cc, engine/mamba.cc, engine/attention.cc); Enqueue runs them in order.
class CudaModel::Pass {
 public:
  Pass(CudaModel& model, const ForwardPlan& plan);

  // Embedding of every row into the residual stream x.
  absl::Status Embed();
  // Self-decoder layer i (Mamba, SWA or global attention, then the MLP) over every row.
  absl::Status SelfDecoderLayer(int i);
  // The residual and memory rows of the cross-decoder (YOCO) into xs / ms.
  absl::Status GatherCrossRows();
  // Cross-decoder layer i (GMU or cross attention, then the MLP) over the selected rows.
  absl::Status CrossDecoderLayer(int i);
  // Final LayerNorm and the LM head into the logits rows.
  absl::Status FinalNormAndLogits();

 private:
  // y = x W^T (+ beta y) with W = w (GemmArgs for the rest).
  absl::Status Linear(const bf16* x, int64_t lda, int64_t M, const DevMat& w, void* y, GemmOut out,
                      int64_t ldy, float beta);
  // Split-K for few query rows over long contexts: about two blocks per multiprocessor.
  int SplitsFor(int64_t q_rows, int64_t max_keys) const;
  // The attention arguments every attention layer shares (heads, layer constants, workspace,
  // output, the global K/V pool).
  AttnArgs BaseAttnArgs(const DevLayer& l) const;
  // The all-reduce of a row-parallel GEMM's partial sums (nothing without TP).
  absl::Status Reduce(float* buf, int64_t count);
  // x += MLP(LayerNorm2(x)) over r rows (all-reduced with TP).
  absl::Status MlpResidual(const DevLayer& l, float* x, int64_t r);

  // x += the Mamba mixer of layer i on u (docs/model-spec.md "Mamba-1 mixer"; all-reduced with TP).
  absl::Status Mamba(const DevLayer& l, int i);
  // The causal conv of xz's first di columns into xc, per segment or (decode) per slot.
  absl::Status MambaConv(const DevLayer& l);
  // x_proj into xdbl (bf16); with TP the fp32 partial sums are reduced, then rounded once.
  absl::Status MambaXProj(const DevLayer& l);
  absl::Status MambaScan(const DevLayer& l, int i);

  absl::Status SelfAttention(const DevLayer& l);
  // qkv = bf16(u W_qkv^T + bias) over r rows of `cols` columns.
  absl::Status QkvProjection(const DevLayer& l, int64_t r, int64_t cols);
  // Element offset of SWA layer l's ring in ring_k / ring_v.
  int64_t RingOffset(const DevLayer& l) const;
  // DiffAttention of `a` over the rows of `segs` (the model's block table and workspace).
  absl::Status DiffAttentionOver(const AttnArgs& a, const Segments& segs);
  // x += out_proj(attn) (all-reduced with TP), then the out_proj bias.
  absl::Status AttentionOutput(const DevLayer& l, float* x, int64_t r);

  absl::Status Gmu(const DevLayer& l);
  absl::Status CrossAttention(const DevLayer& l);
  // TP: every rank's logits columns (logits_send) gathered and laid into the logits rows.
  absl::Status GatherVocabShards();

  CudaModel& m_;
  const ModelConfig& c_;
  Impl& im_;
  const ForwardPlan& p_;
  const cudaStream_t st_;
  // Shapes and shorthands.
  const int64_t S_, BT_;
  const int64_t h_, di_, F_;
  const int64_t qd_, kvd_, ld_, xpd_;
  const int K_;
  const int pairs_;
  const float eps_;
  const int64_t nblocks_;
  // Tensor parallelism: a row-parallel GEMM writes a partial sum. Rank 0 adds its partial to
  // the residual (acc = 1), the other ranks write theirs alone (acc = 0); the all-reduce then
  // leaves residual + every partial on every rank. Without TP both are the plain add.
  const float acc_;
};

CudaModel::Pass::Pass(CudaModel& model, const ForwardPlan& plan)
    : m_(model),
      c_(model.config_),
      im_(*model.impl_),
      p_(plan),
      st_(model.ctx_->stream()),
      S_(model.options_.max_slots),
      BT_(model.options_.block_tokens),
      h_(c_.hidden_size),
      di_(c_.d_inner),
      F_(c_.intermediate_size),
      qd_(c_.q_dim()),
      kvd_(c_.kv_dim()),
      ld_(qd_ + 2 * kvd_),
      xpd_(c_.x_proj_dim()),
      K_(static_cast<int>(c_.d_conv)),
      pairs_(c_.num_heads / 2),
      eps_(static_cast<float>(c_.layer_norm_eps)),
      nblocks_(static_cast<int64_t>(im_.kpool.bytes() / (BT_ * kvd_ * 2))),
      acc_(!model.has_tp_ || model.tp_.comm->rank() == 0 ? 1.0f : 0.0f) {}

absl::Status CudaModel::Pass::Linear(const bf16* x, int64_t lda, int64_t M, const DevMat& w,
                                     void* y, GemmOut out, int64_t ldy, float beta) {
  GemmArgs a;
  a.x = x;
  a.lda = lda;
  a.M = M;
  a.K = w.cols;
  a.w = w.p();
  a.N = w.rows;
  a.y = y;
  a.out = out;
  a.ldy = ldy;
  a.beta = beta;
  return Gemm(*m_.ctx_, im_.gemm, a);
}

int CudaModel::Pass::SplitsFor(int64_t q_rows, int64_t max_keys) const {
  const int64_t blocks = q_rows * pairs_;
  const int64_t target = 2 * static_cast<int64_t>(m_.ctx_->sm_count());
  int64_t s = blocks >= target ? 1 : (target + blocks - 1) / blocks;
  s = std::min<int64_t>({s, std::max<int64_t>(1, max_keys / 128), 64});
  while (s > 1 && DiffAttentionWorkspaceBytes(q_rows, c_.num_heads, static_cast<int>(c_.head_dim),
                                              static_cast<int>(s)) >
                      static_cast<int64_t>(im_.partial.bytes())) {
    --s;
  }
  return static_cast<int>(s);
}

AttnArgs CudaModel::Pass::BaseAttnArgs(const DevLayer& l) const {
  AttnArgs a;
  a.num_heads = c_.num_heads;
  a.num_kv_heads = c_.num_kv_heads;
  a.head_dim = static_cast<int>(c_.head_dim);
  a.scale = 1.0f / std::sqrt(static_cast<float>(c_.head_dim));
  a.lambda = l.lambda;
  a.lambda_init = l.lambda_init;
  a.subln = l.subln.as<float>();
  a.eps = 1e-5f;
  a.partial = im_.partial.as<float>();
  a.out = im_.attn.as<bf16>();
  a.ldo = qd_;
  a.k_pool = im_.kpool.as<bf16>();
  a.v_pool = im_.vpool.as<bf16>();
  a.block_table = im_.block_table.as<int32_t>();
  a.max_blocks = m_.max_blocks_;
  a.block_tokens = static_cast<int>(BT_);
  a.prefix_blocks_trusted = true;  // this model fills the table (Forward, UploadSlot, CloneSlot)
  return a;
}

absl::Status CudaModel::Pass::Reduce(float* buf, int64_t count) {
  if (!m_.has_tp_) return absl::OkStatus();
  return m_.tp_.comm->EnqueueAllReduceSumF32(buf, static_cast<size_t>(count), st_);
}

absl::Status CudaModel::Pass::MlpResidual(const DevLayer& l, float* x, int64_t r) {
  SAMBAY_RETURN_IF_ERROR(
      LayerNorm(st_, x, r, h_, l.ln2_w.as<float>(), l.ln2_b.as<float>(), eps_, im_.u.as<bf16>()));
  SAMBAY_RETURN_IF_ERROR(
      Linear(im_.u.as<bf16>(), h_, r, l.fc1, im_.g.data(), GemmOut::kBf16, 0, 0));
  SAMBAY_RETURN_IF_ERROR(SwiGlu(st_, im_.g.as<bf16>(), r, F_, im_.act.as<bf16>()));
  SAMBAY_RETURN_IF_ERROR(Linear(im_.act.as<bf16>(), F_, r, l.fc2, x, GemmOut::kF32, h_, acc_));
  return Reduce(x, r * h_);
}

absl::Status CudaModel::Pass::Embed() {
  return Embedding(st_, im_.embed.p(), c_.vocab_size, h_, p_.ids, im_.ids.as<int32_t>(),
                   im_.x.as<float>());
}

absl::Status CudaModel::Pass::SelfDecoderLayer(int i) {
  const DevLayer& l = im_.layers[i];
  float* x = im_.x.as<float>();
  SAMBAY_RETURN_IF_ERROR(LayerNorm(st_, x, p_.rows, h_, l.ln1_w.as<float>(), l.ln1_b.as<float>(),
                                   eps_, im_.u.as<bf16>()));
  if (l.kind == LayerKind::kMamba) {
    SAMBAY_RETURN_IF_ERROR(Mamba(l, i));
  } else {  // kSwa or kGlobal
    SAMBAY_RETURN_IF_ERROR(SelfAttention(l));
  }
  return MlpResidual(l, x, p_.rows);
}

absl::Status CudaModel::Pass::Mamba(const DevLayer& l, int i) {
  const int64_t rows = p_.rows;
  SAMBAY_RETURN_IF_ERROR(
      Linear(im_.u.as<bf16>(), h_, rows, l.in_proj, im_.xz.data(), GemmOut::kBf16, 0, 0));
  SAMBAY_RETURN_IF_ERROR(MambaConv(l));
  SAMBAY_RETURN_IF_ERROR(MambaXProj(l));
  SAMBAY_RETURN_IF_ERROR(
      Linear(im_.xdbl.as<bf16>(), xpd_, rows, l.dt_proj, im_.dt.data(), GemmOut::kF32, 0, 0));
  SAMBAY_RETURN_IF_ERROR(MambaScan(l, i));
  float* x = im_.x.as<float>();
  SAMBAY_RETURN_IF_ERROR(
      Linear(im_.yg.as<bf16>(), di_, rows, l.out_proj, x, GemmOut::kF32, h_, acc_));
  return Reduce(x, rows * h_);
}

absl::Status CudaModel::Pass::MambaConv(const DevLayer& l) {
  const int64_t mi = l.state_index;
  ConvArgs a;
  a.x = im_.xz.as<bf16>();
  a.ldx = 2 * di_;
  a.conv_state = im_.conv.as<bf16>() + mi * S_ * (K_ - 1) * di_;
  a.w = l.conv_w.as<float>();
  a.bias = l.conv_b.as<float>();
  a.di = di_;
  a.K = K_;
  a.y = im_.xc.as<bf16>();
  if (p_.decode) {
    a.slots = im_.slots.as<int32_t>();
    return CausalConv1dUpdate(st_, a, p_.slots, S_);
  }
  return CausalConv1d(st_, a, p_.segs, S_);
}

absl::Status CudaModel::Pass::MambaXProj(const DevLayer& l) {
  const int64_t rows = p_.rows;
  if (!m_.has_tp_) {
    return Linear(im_.xc.as<bf16>(), di_, rows, l.x_proj, im_.xdbl.data(), GemmOut::kBf16, 0, 0);
  }
  SAMBAY_RETURN_IF_ERROR(
      Linear(im_.xc.as<bf16>(), di_, rows, l.x_proj, im_.xdbl_f.data(), GemmOut::kF32, 0, 0));
  SAMBAY_RETURN_IF_ERROR(Reduce(im_.xdbl_f.as<float>(), rows * xpd_));
  return BiasToBf16(st_, im_.xdbl_f.as<float>(), rows, xpd_, nullptr, im_.xdbl.as<bf16>());
}

absl::Status CudaModel::Pass::MambaScan(const DevLayer& l, int i) {
  const int64_t mi = l.state_index;
  ScanArgs a;
  a.xc = im_.xc.as<bf16>();
  a.dt = im_.dt.as<float>();
  a.dt_bias = l.dt_bias.as<float>();
  a.A = l.A.as<float>();
  a.bc = im_.xdbl.as<bf16>();
  a.ld_bc = xpd_;
  a.b_off = c_.dt_rank;
  a.D = l.D.as<float>();
  a.z = im_.xz.as<bf16>() + di_;
  a.ldz = 2 * di_;
  a.state = im_.ssm.as<char>() + mi * S_ * di_ * c_.d_state * (m_.options_.ssm_state_bf16 ? 2 : 4);
  a.state_bf16 = m_.options_.ssm_state_bf16;
  a.di = di_;
  a.S = static_cast<int>(c_.d_state);
  a.y_gated = im_.yg.as<bf16>();
  a.memory = i == c_.memory_layer ? im_.mem.as<bf16>() : nullptr;
  a.slots = im_.slots.as<int32_t>();
  return SelectiveScan(st_, a, p_.decode ? nullptr : &p_.segs, p_.slots, S_);
}

absl::Status CudaModel::Pass::QkvProjection(const DevLayer& l, int64_t r, int64_t cols) {
  SAMBAY_RETURN_IF_ERROR(
      Linear(im_.u.as<bf16>(), h_, r, l.wqkv, im_.qkv_f.data(), GemmOut::kF32, 0, 0));
  return BiasToBf16(st_, im_.qkv_f.as<float>(), r, cols, l.wqkv_bias.as<float>(),
                    im_.qkv.as<bf16>());
}

int64_t CudaModel::Pass::RingOffset(const DevLayer& l) const {
  return static_cast<int64_t>(l.state_index) * S_ * c_.sliding_window * kvd_;
}

absl::Status CudaModel::Pass::DiffAttentionOver(const AttnArgs& a, const Segments& segs) {
  return DiffAttention(st_, a, segs, S_, m_.host_block_table_, nblocks_,
                       static_cast<int64_t>(im_.partial.bytes()));
}

absl::Status CudaModel::Pass::AttentionOutput(const DevLayer& l, float* x, int64_t r) {
  SAMBAY_RETURN_IF_ERROR(Linear(im_.attn.as<bf16>(), qd_, r, l.aout, x, GemmOut::kF32, h_, acc_));
  SAMBAY_RETURN_IF_ERROR(Reduce(x, r * h_));
  return AddBias(st_, x, r, h_, l.out_bias.as<float>());
}

absl::Status CudaModel::Pass::SelfAttention(const DevLayer& l) {
  const int64_t rows = p_.rows;
  SAMBAY_RETURN_IF_ERROR(QkvProjection(l, rows, ld_));
  KvStoreArgs kv;
  kv.qkv = im_.qkv.as<bf16>();
  kv.ld = ld_;
  kv.k_off = qd_;
  kv.kvd = kvd_;
  AttnArgs a = BaseAttnArgs(l);
  a.q = im_.qkv.as<bf16>();
  a.ldq = ld_;
  if (l.kind == LayerKind::kGlobal) {
    kv.k_pool = im_.kpool.as<bf16>();
    kv.v_pool = im_.vpool.as<bf16>();
    kv.block_table = im_.block_table.as<int32_t>();
    kv.max_blocks = m_.max_blocks_;
    kv.block_tokens = static_cast<int>(BT_);
    SAMBAY_RETURN_IF_ERROR(StoreKvBlocks(st_, kv, p_.segs, S_, m_.host_block_table_, nblocks_));
    a.source = KvSource::kBlocks;
    a.window = 0;
    a.splits = SplitsFor(rows, p_.max_keys);
  } else {
    const int64_t ring = RingOffset(l);
    a.source = KvSource::kRing;
    a.window = c_.sliding_window;
    a.knew = im_.qkv.as<bf16>() + qd_;
    a.vnew = im_.qkv.as<bf16>() + qd_ + kvd_;
    a.ld_new = ld_;
    a.k_ring = im_.ring_k.as<bf16>() + ring;
    a.v_ring = im_.ring_v.as<bf16>() + ring;
    a.splits = SplitsFor(rows, std::min<int64_t>(p_.max_keys, c_.sliding_window));
  }
  SAMBAY_RETURN_IF_ERROR(DiffAttentionOver(a, p_.segs));
  if (l.kind == LayerKind::kSwa) {
    const int64_t ring = RingOffset(l);
    kv.k_ring = im_.ring_k.as<bf16>() + ring;
    kv.v_ring = im_.ring_v.as<bf16>() + ring;
    kv.window = c_.sliding_window;
    SAMBAY_RETURN_IF_ERROR(StoreKvRing(st_, kv, p_.segs, S_));
  }
  return AttentionOutput(l, im_.x.as<float>(), rows);
}

absl::Status CudaModel::Pass::GatherCrossRows() {
  const int32_t* sel = im_.sel.as<int32_t>();
  SAMBAY_RETURN_IF_ERROR(
      GatherRows(st_, im_.x.as<float>(), p_.rows, h_, true, p_.sel, sel, im_.xs.as<float>()));
  return GatherRows(st_, im_.mem.data(), p_.rows, di_, false, p_.sel, sel, im_.ms.data());
}

absl::Status CudaModel::Pass::CrossDecoderLayer(int i) {
  const DevLayer& l = im_.layers[i];
  float* xs = im_.xs.as<float>();
  SAMBAY_RETURN_IF_ERROR(LayerNorm(st_, xs, p_.n, h_, l.ln1_w.as<float>(), l.ln1_b.as<float>(),
                                   eps_, im_.u.as<bf16>()));
  if (l.kind == LayerKind::kGmu) {
    SAMBAY_RETURN_IF_ERROR(Gmu(l));
  } else {  // kCross
    SAMBAY_RETURN_IF_ERROR(CrossAttention(l));
  }
  return MlpResidual(l, xs, p_.n);
}

absl::Status CudaModel::Pass::Gmu(const DevLayer& l) {
  const int64_t n = p_.n;
  float* xs = im_.xs.as<float>();
  SAMBAY_RETURN_IF_ERROR(
      Linear(im_.u.as<bf16>(), h_, n, l.in_proj, im_.g.data(), GemmOut::kBf16, 0, 0));
  SAMBAY_RETURN_IF_ERROR(
      GmuGate(st_, im_.g.as<bf16>(), im_.ms.as<bf16>(), n * di_, im_.act.as<bf16>()));
  SAMBAY_RETURN_IF_ERROR(
      Linear(im_.act.as<bf16>(), di_, n, l.out_proj, xs, GemmOut::kF32, h_, acc_));
  return Reduce(xs, n * h_);
}

absl::Status CudaModel::Pass::CrossAttention(const DevLayer& l) {
  SAMBAY_RETURN_IF_ERROR(QkvProjection(l, p_.n, qd_));
  AttnArgs a = BaseAttnArgs(l);
  a.q = im_.qkv.as<bf16>();
  a.ldq = qd_;
  a.source = KvSource::kBlocks;
  a.window = 0;
  a.splits = SplitsFor(p_.n, p_.max_keys);
  SAMBAY_RETURN_IF_ERROR(DiffAttentionOver(a, p_.cross));
  return AttentionOutput(l, im_.xs.as<float>(), p_.n);
}

absl::Status CudaModel::Pass::FinalNormAndLogits() {
  const int64_t n = p_.n;
  SAMBAY_RETURN_IF_ERROR(LayerNorm(st_, im_.xs.as<float>(), n, h_, im_.final_w.as<float>(),
                                   im_.final_b.as<float>(), eps_, im_.u.as<bf16>()));
  GemmArgs la;
  la.x = im_.u.as<bf16>();
  la.M = n;
  la.K = h_;
  la.w = im_.head();
  la.N = im_.head_rows;
  la.y = im_.logits.data();
  la.out = GemmOut::kF32;
  if (!m_.has_tp_) return Gemm(*m_.ctx_, im_.gemm, la);
  // Vocabulary-parallel head: this rank's columns, padded rows of vocab_pad, gathered from every
  // rank and laid into the logits rows in rank order.
  la.y = im_.logits_send.data();
  la.ldy = im_.vocab_pad;
  SAMBAY_RETURN_IF_ERROR(Gemm(*m_.ctx_, im_.gemm, la));
  return GatherVocabShards();
}

absl::Status CudaModel::Pass::GatherVocabShards() {
  // Short names: the call text of SAMBAY_CUDA_RETURN_IF_ERROR is part of its error message.
  const ModelConfig& c = c_;
  Impl& im = im_;
  cudaStream_t st = st_;
  const int64_t n = p_.n;
  const int64_t vp = im.vocab_pad;
  SAMBAY_RETURN_IF_ERROR(m_.tp_.comm->EnqueueAllGatherF32(
      im.logits_send.as<float>(), im.logits_recv.as<float>(), static_cast<size_t>(n * vp), st));
  const std::vector<int64_t>& vb = m_.tp_.vocab_bounds;
  for (int r = 0; r + 1 < static_cast<int>(vb.size()); ++r) {
    if (vb[r + 1] == vb[r]) continue;
    SAMBAY_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(
        im.logits.as<float>() + vb[r], c.vocab_size * 4, im.logits_recv.as<float>() + r * n * vp,
        vp * 4, (vb[r + 1] - vb[r]) * 4, n, cudaMemcpyDeviceToDevice, st));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::Enqueue(const ForwardPlan& p) {
  Pass pass(*this, p);
  // ---- Self-decoder over every row.
  SAMBAY_RETURN_IF_ERROR(pass.Embed());
  for (int i = 0; i < config_.first_cross_layer; ++i) {
    SAMBAY_RETURN_IF_ERROR(pass.SelfDecoderLayer(i));
  }
  if (p.n == 0) return absl::OkStatus();

  // ---- Cross-decoder on the selected rows only.
  SAMBAY_RETURN_IF_ERROR(pass.GatherCrossRows());
  for (int i = config_.first_cross_layer; i < config_.num_layers; ++i) {
    SAMBAY_RETURN_IF_ERROR(pass.CrossDecoderLayer(i));
  }
  return pass.FinalNormAndLogits();
}

}  // namespace sambay::cuda
