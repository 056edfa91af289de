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
  const int64_t BT = options_.block_tokens;

  // ---- Validate everything before touching any state.
  ForwardCounts counts;
  SAMBAY_RETURN_IF_ERROR(CountForward(segments, &counts));
  const int64_t rows = counts.rows;
  const bool decode = counts.decode;

  // ---- Blocks and the batch layout.
  bool table_dirty = false;
  ForwardPlan p;
  std::vector<int32_t> lens;
  std::vector<int64_t> starts;
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
    p.slots.push_back(s.slot);
    starts.push_back(slot_tokens_[s.slot]);
    lens.push_back(static_cast<int32_t>(s.tokens.size()));
    p.ids.insert(p.ids.end(), s.tokens.begin(), s.tokens.end());
  }
  BuildSegments(p.slots, starts, lens, &p.segs);
  p.segs.dev = im.segs.as<SegDev>();
  p.segs.dev_row_seg = im.row_seg.as<int32_t>();
  p.rows = rows;
  p.decode = decode;
  for (const SegDev& d : p.segs.host) p.max_keys = std::max<int64_t>(p.max_keys, d.start + d.len);

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

  // ---- Metadata to the device (the previous pass's uploads are done: the stream is idle).
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

  // ---- The kernels: replayed from a graph for decode steps, else enqueued directly.
  // The first decode step of a batch size runs directly (it also creates the GEMM plans); the
  // second captures the graph; later ones replay it.
  const bool graphable =
      options_.cuda_graphs && decode && p.n == rows && im.graph_failed.count(rows) == 0;
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

absl::Status CudaModel::Enqueue(const ForwardPlan& p) {
  const ModelConfig& c = config_;
  Impl& im = *impl_;
  cudaStream_t st = ctx_->stream();
  const int64_t S = options_.max_slots;
  const int64_t BT = options_.block_tokens;
  const Segments& segs = p.segs;
  const Segments& cross = p.cross;
  const std::vector<int32_t>& slots = p.slots;
  const std::vector<int32_t>& sel = p.sel;
  const int64_t rows = p.rows;
  const int64_t n = p.n;
  const bool decode = p.decode;
  const int64_t max_end = p.max_keys;

  // ---- Shapes and shorthands.
  const int64_t h = c.hidden_size, di = c.d_inner, F = c.intermediate_size;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim(), ld = qd + 2 * kvd, xpd = c.x_proj_dim();
  const int K = static_cast<int>(c.d_conv);
  const int pairs = c.num_heads / 2;
  const float eps = static_cast<float>(c.layer_norm_eps);
  const int64_t nblocks = static_cast<int64_t>(im.kpool.bytes() / (BT * kvd * 2));
  auto gemm = [&](const bf16* x, int64_t lda, int64_t M, const DevMat& w, void* y, GemmOut out,
                  int64_t ldy, float beta) {
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
    return Gemm(*ctx_, im.gemm, a);
  };
  // Split-K for few query rows over long contexts: about two blocks per multiprocessor.
  auto splits_for = [&](int64_t q_rows, int64_t max_keys) {
    const int64_t blocks = q_rows * pairs;
    const int64_t target = 2 * static_cast<int64_t>(ctx_->sm_count());
    int64_t s = blocks >= target ? 1 : (target + blocks - 1) / blocks;
    s = std::min<int64_t>({s, std::max<int64_t>(1, max_keys / 128), 64});
    while (s > 1 && DiffAttentionWorkspaceBytes(q_rows, c.num_heads, static_cast<int>(c.head_dim),
                                                static_cast<int>(s)) >
                        static_cast<int64_t>(im.partial.bytes())) {
      --s;
    }
    return static_cast<int>(s);
  };
  auto attn_args = [&](const DevLayer& l) {
    AttnArgs a;
    a.num_heads = c.num_heads;
    a.num_kv_heads = c.num_kv_heads;
    a.head_dim = static_cast<int>(c.head_dim);
    a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    a.lambda = l.lambda;
    a.lambda_init = l.lambda_init;
    a.subln = l.subln.as<float>();
    a.eps = 1e-5f;
    a.partial = im.partial.as<float>();
    a.out = im.attn.as<bf16>();
    a.ldo = qd;
    a.k_pool = im.kpool.as<bf16>();
    a.v_pool = im.vpool.as<bf16>();
    a.block_table = im.block_table.as<int32_t>();
    a.max_blocks = max_blocks_;
    a.block_tokens = static_cast<int>(BT);
    a.prefix_blocks_trusted = true;  // this model fills the table (Forward, UploadSlot, CloneSlot)
    return a;
  };
  // Tensor parallelism: a row-parallel GEMM writes a partial sum. Rank 0 adds its partial to
  // the residual (acc = 1), the other ranks write theirs alone (acc = 0); the all-reduce then
  // leaves residual + every partial on every rank. Without TP both are the plain add.
  const bool tp = has_tp_;
  const float acc = !tp || tp_.comm->rank() == 0 ? 1.0f : 0.0f;
  auto reduce = [&](float* buf, int64_t count) -> absl::Status {
    if (!tp) return absl::OkStatus();
    return tp_.comm->EnqueueAllReduceSumF32(buf, static_cast<size_t>(count), st);
  };
  auto mlp = [&](const DevLayer& l, float* x, int64_t r) -> absl::Status {
    SAMBAY_RETURN_IF_ERROR(
        LayerNorm(st, x, r, h, l.ln2_w.as<float>(), l.ln2_b.as<float>(), eps, im.u.as<bf16>()));
    SAMBAY_RETURN_IF_ERROR(gemm(im.u.as<bf16>(), h, r, l.fc1, im.g.data(), GemmOut::kBf16, 0, 0));
    SAMBAY_RETURN_IF_ERROR(SwiGlu(st, im.g.as<bf16>(), r, F, im.act.as<bf16>()));
    SAMBAY_RETURN_IF_ERROR(gemm(im.act.as<bf16>(), F, r, l.fc2, x, GemmOut::kF32, h, acc));
    return reduce(x, r * h);
  };

  // ---- Self-decoder over every row.
  float* x = im.x.as<float>();
  SAMBAY_RETURN_IF_ERROR(
      Embedding(st, im.embed.p(), c.vocab_size, h, p.ids, im.ids.as<int32_t>(), x));
  for (int i = 0; i < c.first_cross_layer; ++i) {
    const DevLayer& l = im.layers[i];
    SAMBAY_RETURN_IF_ERROR(
        LayerNorm(st, x, rows, h, l.ln1_w.as<float>(), l.ln1_b.as<float>(), eps, im.u.as<bf16>()));
    if (l.kind == LayerKind::kMamba) {
      const int64_t mi = l.state_index;
      bf16* conv = im.conv.as<bf16>() + mi * S * (K - 1) * di;
      void* ssm = im.ssm.as<char>() + mi * S * di * c.d_state * (options_.ssm_state_bf16 ? 2 : 4);
      SAMBAY_RETURN_IF_ERROR(
          gemm(im.u.as<bf16>(), h, rows, l.in_proj, im.xz.data(), GemmOut::kBf16, 0, 0));
      if (decode) {
        SAMBAY_RETURN_IF_ERROR(CausalConv1dUpdate(
            st, im.xz.as<bf16>(), 2 * di, slots, im.slots.as<int32_t>(), S, conv,
            l.conv_w.as<float>(), l.conv_b.as<float>(), di, K, im.xc.as<bf16>()));
      } else {
        SAMBAY_RETURN_IF_ERROR(CausalConv1d(st, im.xz.as<bf16>(), 2 * di, segs, S, conv,
                                            l.conv_w.as<float>(), l.conv_b.as<float>(), di, K,
                                            im.xc.as<bf16>()));
      }
      if (tp) {  // row-parallel: reduce the fp32 partials, then round once
        SAMBAY_RETURN_IF_ERROR(
            gemm(im.xc.as<bf16>(), di, rows, l.x_proj, im.xdbl_f.data(), GemmOut::kF32, 0, 0));
        SAMBAY_RETURN_IF_ERROR(reduce(im.xdbl_f.as<float>(), rows * xpd));
        SAMBAY_RETURN_IF_ERROR(
            BiasToBf16(st, im.xdbl_f.as<float>(), rows, xpd, nullptr, im.xdbl.as<bf16>()));
      } else {
        SAMBAY_RETURN_IF_ERROR(
            gemm(im.xc.as<bf16>(), di, rows, l.x_proj, im.xdbl.data(), GemmOut::kBf16, 0, 0));
      }
      SAMBAY_RETURN_IF_ERROR(
          gemm(im.xdbl.as<bf16>(), xpd, rows, l.dt_proj, im.dt.data(), GemmOut::kF32, 0, 0));
      ScanArgs a;
      a.xc = im.xc.as<bf16>();
      a.dt = im.dt.as<float>();
      a.dt_bias = l.dt_bias.as<float>();
      a.A = l.A.as<float>();
      a.bc = im.xdbl.as<bf16>();
      a.ld_bc = xpd;
      a.b_off = c.dt_rank;
      a.D = l.D.as<float>();
      a.z = im.xz.as<bf16>() + di;
      a.ldz = 2 * di;
      a.state = ssm;
      a.state_bf16 = options_.ssm_state_bf16;
      a.di = di;
      a.S = static_cast<int>(c.d_state);
      a.y_gated = im.yg.as<bf16>();
      a.memory = i == c.memory_layer ? im.mem.as<bf16>() : nullptr;
      a.slots = im.slots.as<int32_t>();
      SAMBAY_RETURN_IF_ERROR(SelectiveScan(st, a, decode ? nullptr : &segs, slots, S));
      SAMBAY_RETURN_IF_ERROR(
          gemm(im.yg.as<bf16>(), di, rows, l.out_proj, x, GemmOut::kF32, h, acc));
      SAMBAY_RETURN_IF_ERROR(reduce(x, rows * h));
    } else {  // kSwa or kGlobal
      SAMBAY_RETURN_IF_ERROR(
          gemm(im.u.as<bf16>(), h, rows, l.wqkv, im.qkv_f.data(), GemmOut::kF32, 0, 0));
      SAMBAY_RETURN_IF_ERROR(BiasToBf16(st, im.qkv_f.as<float>(), rows, ld, l.wqkv_bias.as<float>(),
                                        im.qkv.as<bf16>()));
      AttnArgs a = attn_args(l);
      a.q = im.qkv.as<bf16>();
      a.ldq = ld;
      if (l.kind == LayerKind::kGlobal) {
        SAMBAY_RETURN_IF_ERROR(StoreKvBlocks(st, im.qkv.as<bf16>(), ld, qd, kvd, segs, S,
                                             im.kpool.as<bf16>(), im.vpool.as<bf16>(), nblocks,
                                             im.block_table.as<int32_t>(), host_block_table_,
                                             max_blocks_, static_cast<int>(BT)));
        a.source = KvSource::kBlocks;
        a.window = 0;
        a.splits = splits_for(rows, max_end);
      } else {
        const int64_t si = l.state_index;
        const int64_t ring = si * S * c.sliding_window * kvd;
        a.source = KvSource::kRing;
        a.window = c.sliding_window;
        a.knew = im.qkv.as<bf16>() + qd;
        a.vnew = im.qkv.as<bf16>() + qd + kvd;
        a.ld_new = ld;
        a.k_ring = im.ring_k.as<bf16>() + ring;
        a.v_ring = im.ring_v.as<bf16>() + ring;
        a.splits = splits_for(rows, std::min<int64_t>(max_end, c.sliding_window));
      }
      SAMBAY_RETURN_IF_ERROR(DiffAttention(st, a, segs, S, host_block_table_, nblocks,
                                           static_cast<int64_t>(im.partial.bytes())));
      if (l.kind == LayerKind::kSwa) {
        const int64_t ring = l.state_index * S * c.sliding_window * kvd;
        SAMBAY_RETURN_IF_ERROR(StoreKvRing(st, im.qkv.as<bf16>(), ld, qd, kvd, segs, S,
                                           im.ring_k.as<bf16>() + ring, im.ring_v.as<bf16>() + ring,
                                           c.sliding_window));
      }
      SAMBAY_RETURN_IF_ERROR(gemm(im.attn.as<bf16>(), qd, rows, l.aout, x, GemmOut::kF32, h, acc));
      SAMBAY_RETURN_IF_ERROR(reduce(x, rows * h));
      SAMBAY_RETURN_IF_ERROR(AddBias(st, x, rows, h, l.out_bias.as<float>()));
    }
    SAMBAY_RETURN_IF_ERROR(mlp(l, x, rows));
  }
  if (n == 0) return absl::OkStatus();

  // ---- Cross-decoder on the selected rows only.
  float* xs = im.xs.as<float>();
  SAMBAY_RETURN_IF_ERROR(GatherRows(st, x, rows, h, true, sel, im.sel.as<int32_t>(), xs));
  SAMBAY_RETURN_IF_ERROR(
      GatherRows(st, im.mem.data(), rows, di, false, sel, im.sel.as<int32_t>(), im.ms.data()));
  for (int i = c.first_cross_layer; i < c.num_layers; ++i) {
    const DevLayer& l = im.layers[i];
    SAMBAY_RETURN_IF_ERROR(
        LayerNorm(st, xs, n, h, l.ln1_w.as<float>(), l.ln1_b.as<float>(), eps, im.u.as<bf16>()));
    if (l.kind == LayerKind::kGmu) {
      SAMBAY_RETURN_IF_ERROR(
          gemm(im.u.as<bf16>(), h, n, l.in_proj, im.g.data(), GemmOut::kBf16, 0, 0));
      SAMBAY_RETURN_IF_ERROR(
          GmuGate(st, im.g.as<bf16>(), im.ms.as<bf16>(), n * di, im.act.as<bf16>()));
      SAMBAY_RETURN_IF_ERROR(gemm(im.act.as<bf16>(), di, n, l.out_proj, xs, GemmOut::kF32, h, acc));
      SAMBAY_RETURN_IF_ERROR(reduce(xs, n * h));
    } else {  // kCross
      SAMBAY_RETURN_IF_ERROR(
          gemm(im.u.as<bf16>(), h, n, l.wqkv, im.qkv_f.data(), GemmOut::kF32, 0, 0));
      SAMBAY_RETURN_IF_ERROR(
          BiasToBf16(st, im.qkv_f.as<float>(), n, qd, l.wqkv_bias.as<float>(), im.qkv.as<bf16>()));
      AttnArgs a = attn_args(l);
      a.q = im.qkv.as<bf16>();
      a.ldq = qd;
      a.source = KvSource::kBlocks;
      a.window = 0;
      a.splits = splits_for(n, max_end);
      SAMBAY_RETURN_IF_ERROR(DiffAttention(st, a, cross, S, host_block_table_, nblocks,
                                           static_cast<int64_t>(im.partial.bytes())));
      SAMBAY_RETURN_IF_ERROR(gemm(im.attn.as<bf16>(), qd, n, l.aout, xs, GemmOut::kF32, h, acc));
      SAMBAY_RETURN_IF_ERROR(reduce(xs, n * h));
      SAMBAY_RETURN_IF_ERROR(AddBias(st, xs, n, h, l.out_bias.as<float>()));
    }
    SAMBAY_RETURN_IF_ERROR(mlp(l, xs, n));
  }
  SAMBAY_RETURN_IF_ERROR(LayerNorm(st, xs, n, h, im.final_w.as<float>(), im.final_b.as<float>(),
                                   eps, im.u.as<bf16>()));
  GemmArgs la;
  la.x = im.u.as<bf16>();
  la.M = n;
  la.K = h;
  la.w = im.head();
  la.N = im.head_rows;
  la.y = im.logits.data();
  la.out = GemmOut::kF32;
  if (!tp) return Gemm(*ctx_, im.gemm, la);
  // Vocabulary-parallel head: this rank's columns, padded rows of vocab_pad, gathered from every
  // rank and laid into the logits rows in rank order.
  const int64_t vp = im.vocab_pad;
  la.y = im.logits_send.data();
  la.ldy = vp;
  SAMBAY_RETURN_IF_ERROR(Gemm(*ctx_, im.gemm, la));
  SAMBAY_RETURN_IF_ERROR(tp_.comm->EnqueueAllGatherF32(
      im.logits_send.as<float>(), im.logits_recv.as<float>(), static_cast<size_t>(n * vp), st));
  const std::vector<int64_t>& vb = tp_.vocab_bounds;
  for (int r = 0; r + 1 < static_cast<int>(vb.size()); ++r) {
    if (vb[r + 1] == vb[r]) continue;
    SAMBAY_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(
        im.logits.as<float>() + vb[r], c.vocab_size * 4, im.logits_recv.as<float>() + r * n * vp,
        vp * 4, (vb[r + 1] - vb[r]) * 4, n, cudaMemcpyDeviceToDevice, st));
  }
  return absl::OkStatus();
}

}  // namespace sambay::cuda
