#include "engine/cuda/ops.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_util.h"

namespace sambay::cuda {
namespace {

// Returns InvalidArgument "<op>: <arg> <msg...>" from the enclosing function when cond fails.
#define SAMBAY_CHECK_ARG(cond, op, arg, ...)                                            \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      return absl::InvalidArgumentError(absl::StrCat(op, ": ", arg, " ", __VA_ARGS__)); \
    }                                                                                   \
  } while (0)

constexpr int64_t kMaxGrid = (int64_t{1} << 31) - 1;
constexpr int64_t kMaxGridY = 65535;

absl::Status Launched(cudaError_t e, const char* op) { return CudaStatus(e, op); }

absl::Status CheckSlots(const char* op, absl::Span<const int32_t> slots, int64_t num_slots) {
  std::vector<bool> seen(static_cast<size_t>(std::max<int64_t>(num_slots, 0)), false);
  for (size_t i = 0; i < slots.size(); ++i) {
    const int32_t s = slots[i];
    SAMBAY_CHECK_ARG(s >= 0 && s < num_slots, op, "slots", "[", i, "] = ", s, " is outside [0, ",
                     num_slots, ")");
    SAMBAY_CHECK_ARG(!seen[s], op, "slots", "[", i, "] = ", s, " appears twice in one batch");
    seen[s] = true;
  }
  return absl::OkStatus();
}

}  // namespace

void BuildSegments(absl::Span<const int32_t> slots, absl::Span<const int64_t> starts,
                   absl::Span<const int32_t> lens, Segments* s) {
  s->host.clear();
  s->host_row_seg.clear();
  int32_t row = 0;
  for (size_t i = 0; i < slots.size(); ++i) {
    SegDev d;
    d.row0 = row;
    d.len = lens[i];
    d.slot = slots[i];
    d.start = starts[i];
    s->host.push_back(d);
    for (int32_t t = 0; t < lens[i]; ++t) s->host_row_seg.push_back(static_cast<int32_t>(i));
    row += lens[i];
  }
}

absl::Status ValidateSegments(const char* op, const Segments& s, int64_t num_slots) {
  SAMBAY_CHECK_ARG(!s.host.empty(), op, "segments", "is empty");
  SAMBAY_CHECK_ARG(s.dev != nullptr && s.dev_row_seg != nullptr, op, "segments",
                   "have no device copy");
  SAMBAY_CHECK_ARG(s.rows() < kMaxGrid / 64, op, "segments", "have too many rows: ", s.rows());
  int64_t row = 0;
  std::vector<int32_t> slots;
  for (size_t i = 0; i < s.host.size(); ++i) {
    const SegDev& d = s.host[i];
    SAMBAY_CHECK_ARG(d.row0 == row, op, "segments", "[", i, "].row0 = ", d.row0, ", expected ",
                     row);
    SAMBAY_CHECK_ARG(d.len > 0, op, "segments", "[", i, "].len = ", d.len, " must be positive");
    SAMBAY_CHECK_ARG(d.start >= 0, op, "segments", "[", i, "].start = ", d.start, " is negative");
    SAMBAY_CHECK_ARG(row + d.len <= s.rows(), op, "segments", "[", i, "] ends past the ", s.rows(),
                     " rows");
    for (int32_t t = 0; t < d.len; ++t) {
      SAMBAY_CHECK_ARG(s.host_row_seg[row + t] == static_cast<int32_t>(i), op, "row_seg", "[",
                       row + t, "] = ", s.host_row_seg[row + t], ", expected ", i);
    }
    row += d.len;
    slots.push_back(d.slot);
  }
  SAMBAY_CHECK_ARG(row == s.rows(), op, "segments", "cover ", row, " of ", s.rows(), " rows");
  return CheckSlots(op, slots, num_slots);
}

absl::Status LayerNorm(cudaStream_t stream, const float* x, int64_t rows, int64_t dim,
                       const float* w, const float* b, float eps, bf16* y) {
  constexpr const char* op = "LayerNorm";
  SAMBAY_CHECK_ARG(x != nullptr && w != nullptr && b != nullptr && y != nullptr, op, "x/w/b/y",
                   "must not be null");
  SAMBAY_CHECK_ARG(rows > 0 && rows <= kMaxGrid, op, "rows", rows, " is out of range");
  SAMBAY_CHECK_ARG(dim > 0, op, "dim", dim, " must be positive");
  SAMBAY_CHECK_ARG(eps > 0 && std::isfinite(eps), op, "eps", eps, " must be positive");
  return Launched(LaunchLayerNorm(x, rows, dim, w, b, eps, y, stream), op);
}

absl::Status Embedding(cudaStream_t stream, const bf16* table, int64_t vocab, int64_t dim,
                       absl::Span<const int32_t> host_ids, const int32_t* dev_ids, float* x) {
  constexpr const char* op = "Embedding";
  SAMBAY_CHECK_ARG(table != nullptr && dev_ids != nullptr && x != nullptr, op, "table/ids/x",
                   "must not be null");
  SAMBAY_CHECK_ARG(!host_ids.empty(), op, "ids", "is empty");
  SAMBAY_CHECK_ARG(dim > 0, op, "dim", dim, " must be positive");
  for (size_t i = 0; i < host_ids.size(); ++i) {
    SAMBAY_CHECK_ARG(host_ids[i] >= 0 && host_ids[i] < vocab, op, "ids", "[", i,
                     "] = ", host_ids[i], " is outside [0, ", vocab, ")");
  }
  return Launched(
      LaunchEmbedding(table, dim, dev_ids, static_cast<int64_t>(host_ids.size()), x, stream), op);
}

absl::Status CausalConv1d(cudaStream_t stream, ConvArgs a, const Segments& segs,
                          int64_t num_slots) {
  constexpr const char* op = "CausalConv1d";
  SAMBAY_CHECK_ARG(a.x != nullptr && a.conv_state != nullptr && a.w != nullptr &&
                       a.bias != nullptr && a.y != nullptr,
                   op, "x/conv_state/w/bias/y", "must not be null");
  SAMBAY_CHECK_ARG(a.di > 0 && (a.di + 127) / 128 <= kMaxGridY, op, "di", a.di, " is out of range");
  SAMBAY_CHECK_ARG(a.ldx >= a.di, op, "ldx", a.ldx, " < di ", a.di);
  SAMBAY_CHECK_ARG(a.K >= 2 && a.K <= 16, op, "K", a.K, " must be in [2, 16]");
  absl::Status s = ValidateSegments(op, segs, num_slots);
  if (!s.ok()) return s;
  a.segs = segs.dev;
  a.row_seg = segs.dev_row_seg;
  a.rows = segs.rows();
  a.nsegs = segs.size();
  return Launched(LaunchCausalConv1d(a, stream), op);
}

absl::Status CausalConv1dUpdate(cudaStream_t stream, ConvArgs a,
                                absl::Span<const int32_t> host_slots, int64_t num_slots) {
  constexpr const char* op = "CausalConv1dUpdate";
  SAMBAY_CHECK_ARG(a.x != nullptr && a.slots != nullptr && a.conv_state != nullptr &&
                       a.w != nullptr && a.bias != nullptr && a.y != nullptr,
                   op, "x/slots/conv_state/w/bias/y", "must not be null");
  SAMBAY_CHECK_ARG(!host_slots.empty(), op, "slots", "is empty");
  SAMBAY_CHECK_ARG(a.di > 0 && (a.di + 127) / 128 <= kMaxGridY, op, "di", a.di, " is out of range");
  SAMBAY_CHECK_ARG(a.ldx >= a.di, op, "ldx", a.ldx, " < di ", a.di);
  SAMBAY_CHECK_ARG(a.K >= 2 && a.K <= 16, op, "K", a.K, " must be in [2, 16]");
  absl::Status s = CheckSlots(op, host_slots, num_slots);
  if (!s.ok()) return s;
  a.rows = static_cast<int64_t>(host_slots.size());
  return Launched(LaunchCausalConv1dUpdate(a, stream), op);
}

absl::Status SelectiveScan(cudaStream_t stream, ScanArgs a, const Segments* segs,
                           absl::Span<const int32_t> host_slots, int64_t num_slots) {
  constexpr const char* op = "SelectiveScan";
  SAMBAY_CHECK_ARG(a.xc != nullptr && a.dt != nullptr && a.dt_bias != nullptr && a.A != nullptr &&
                       a.bc != nullptr && a.D != nullptr && a.z != nullptr && a.state != nullptr &&
                       a.y_gated != nullptr,
                   op, "xc/dt/dt_bias/A/bc/D/z/state/y_gated", "must not be null");
  SAMBAY_CHECK_ARG(a.di > 0 && (a.di + 63) / 64 <= kMaxGridY, op, "di", a.di, " is out of range");
  SAMBAY_CHECK_ARG(a.S > 0 && a.S <= kMaxDState, op, "d_state", a.S, " must be in [1, ", kMaxDState,
                   "]");
  SAMBAY_CHECK_ARG(a.b_off >= 0 && a.ld_bc >= a.b_off + 2 * a.S, op, "ld_bc", a.ld_bc,
                   " < b_off + 2 d_state = ", a.b_off + 2 * a.S);
  SAMBAY_CHECK_ARG(a.ldz >= a.di, op, "ldz", a.ldz, " < di ", a.di);
  if (segs != nullptr) {
    absl::Status s = ValidateSegments(op, *segs, num_slots);
    if (!s.ok()) return s;
    a.segs = segs->dev;
    a.nsegs = segs->size();
    a.rows = segs->rows();
    a.slots = nullptr;
  } else {
    SAMBAY_CHECK_ARG(a.slots != nullptr && !host_slots.empty(), op, "slots",
                     "must be given without segments");
    absl::Status s = CheckSlots(op, host_slots, num_slots);
    if (!s.ok()) return s;
    a.segs = nullptr;
    a.nsegs = 0;
    a.rows = static_cast<int64_t>(host_slots.size());
  }
  return Launched(LaunchSelectiveScan(a, stream), op);
}

absl::Status SwiGlu(cudaStream_t stream, const bf16* in, int64_t rows, int64_t n, bf16* out) {
  constexpr const char* op = "SwiGlu";
  SAMBAY_CHECK_ARG(in != nullptr && out != nullptr, op, "in/out", "must not be null");
  SAMBAY_CHECK_ARG(rows > 0 && n > 0, op, "rows/n", rows, "/", n, " must be positive");
  return Launched(LaunchSwiGlu(in, rows, n, out, stream), op);
}

absl::Status GmuGate(cudaStream_t stream, const bf16* g, const bf16* m, int64_t count, bf16* out) {
  constexpr const char* op = "GmuGate";
  SAMBAY_CHECK_ARG(g != nullptr && m != nullptr && out != nullptr, op, "g/m/out",
                   "must not be null");
  SAMBAY_CHECK_ARG(count > 0, op, "count", count, " must be positive");
  return Launched(LaunchGmuGate(g, m, count, out, stream), op);
}

absl::Status BiasToBf16(cudaStream_t stream, const float* in, int64_t rows, int64_t cols,
                        const float* bias, bf16* out) {
  constexpr const char* op = "BiasToBf16";
  SAMBAY_CHECK_ARG(in != nullptr && out != nullptr, op, "in/out", "must not be null");
  SAMBAY_CHECK_ARG(rows > 0 && cols > 0, op, "rows/cols", rows, "/", cols, " must be positive");
  return Launched(LaunchBiasToBf16(in, rows, cols, bias, out, stream), op);
}

absl::Status AddBias(cudaStream_t stream, float* x, int64_t rows, int64_t cols, const float* bias) {
  constexpr const char* op = "AddBias";
  SAMBAY_CHECK_ARG(x != nullptr && bias != nullptr, op, "x/bias", "must not be null");
  SAMBAY_CHECK_ARG(rows > 0 && cols > 0, op, "rows/cols", rows, "/", cols, " must be positive");
  return Launched(LaunchAddBias(x, rows, cols, bias, stream), op);
}

absl::Status GatherRows(cudaStream_t stream, const void* src, int64_t src_rows, int64_t cols,
                        bool elem4, absl::Span<const int32_t> host_idx, const int32_t* dev_idx,
                        void* dst) {
  constexpr const char* op = "GatherRows";
  SAMBAY_CHECK_ARG(src != nullptr && dev_idx != nullptr && dst != nullptr, op, "src/idx/dst",
                   "must not be null");
  SAMBAY_CHECK_ARG(!host_idx.empty() && static_cast<int64_t>(host_idx.size()) <= kMaxGrid, op,
                   "idx", "size ", host_idx.size(), " is out of range");
  SAMBAY_CHECK_ARG(cols > 0, op, "cols", cols, " must be positive");
  for (size_t i = 0; i < host_idx.size(); ++i) {
    SAMBAY_CHECK_ARG(host_idx[i] >= 0 && host_idx[i] < src_rows, op, "idx", "[", i,
                     "] = ", host_idx[i], " is outside [0, ", src_rows, ")");
  }
  return Launched(LaunchGatherRows(src, cols, elem4, dev_idx, static_cast<int64_t>(host_idx.size()),
                                   dst, stream),
                  op);
}

absl::Status StoreKvBlocks(cudaStream_t stream, KvStoreArgs a, const Segments& segs,
                           int64_t num_slots, absl::Span<const int32_t> host_block_table,
                           int64_t num_blocks) {
  constexpr const char* op = "StoreKvBlocks";
  SAMBAY_CHECK_ARG(
      a.qkv != nullptr && a.k_pool != nullptr && a.v_pool != nullptr && a.block_table != nullptr,
      op, "qkv/k_pool/v_pool/block_table", "must not be null");
  SAMBAY_CHECK_ARG(a.kvd > 0 && a.k_off >= 0 && a.ld >= a.k_off + 2 * a.kvd, op, "ld", a.ld,
                   " < k_off + 2 kvd = ", a.k_off + 2 * a.kvd);
  SAMBAY_CHECK_ARG(a.block_tokens > 0 && a.max_blocks > 0, op, "block_tokens/max_blocks",
                   a.block_tokens, "/", a.max_blocks, " must be positive");
  SAMBAY_CHECK_ARG(static_cast<int64_t>(host_block_table.size()) == num_slots * a.max_blocks, op,
                   "host_block_table", "has ", host_block_table.size(), " entries, expected ",
                   num_slots * a.max_blocks);
  absl::Status s = ValidateSegments(op, segs, num_slots);
  if (!s.ok()) return s;
  for (const SegDev& d : segs.host) {
    const int64_t last_block = (d.start + d.len - 1) / a.block_tokens;
    SAMBAY_CHECK_ARG(last_block < a.max_blocks, op, "segment", "of slot ", d.slot,
                     " reaches block ", last_block, " >= max_blocks ", a.max_blocks);
    for (int64_t b = d.start / a.block_tokens; b <= last_block; ++b) {
      const int32_t id = host_block_table[d.slot * a.max_blocks + b];
      SAMBAY_CHECK_ARG(id >= 0 && id < num_blocks, op, "block_table", "[", d.slot, ", ", b,
                       "] = ", id, " is outside [0, ", num_blocks, ")");
    }
  }
  a.segs = segs.dev;
  a.row_seg = segs.dev_row_seg;
  a.rows = segs.rows();
  return Launched(LaunchStoreKvBlocks(a, stream), op);
}

absl::Status StoreKvRing(cudaStream_t stream, KvStoreArgs a, const Segments& segs,
                         int64_t num_slots) {
  constexpr const char* op = "StoreKvRing";
  SAMBAY_CHECK_ARG(a.qkv != nullptr && a.k_ring != nullptr && a.v_ring != nullptr, op,
                   "qkv/k_ring/v_ring", "must not be null");
  SAMBAY_CHECK_ARG(a.kvd > 0 && a.k_off >= 0 && a.ld >= a.k_off + 2 * a.kvd, op, "ld", a.ld,
                   " < k_off + 2 kvd = ", a.k_off + 2 * a.kvd);
  SAMBAY_CHECK_ARG(a.window > 0, op, "window", a.window, " must be positive");
  absl::Status s = ValidateSegments(op, segs, num_slots);
  if (!s.ok()) return s;
  a.segs = segs.dev;
  a.row_seg = segs.dev_row_seg;
  a.rows = segs.rows();
  return Launched(LaunchStoreKvRing(a, stream), op);
}

int64_t DiffAttentionWorkspaceBytes(int64_t rows, int num_heads, int head_dim, int splits) {
  return rows * (num_heads / 2) * static_cast<int64_t>(splits) * 2 * (2 * head_dim + 2) * 4;
}

absl::Status DiffAttention(cudaStream_t stream, AttnArgs a, const Segments& segs, int64_t num_slots,
                           absl::Span<const int32_t> host_block_table, int64_t num_blocks,
                           int64_t partial_bytes) {
  constexpr const char* op = "DiffAttention";
  SAMBAY_CHECK_ARG(a.q != nullptr && a.subln != nullptr && a.partial != nullptr && a.out != nullptr,
                   op, "q/subln/partial/out", "must not be null");
  SAMBAY_CHECK_ARG(a.num_heads > 0 && a.num_kv_heads > 0 && a.num_heads % 2 == 0 &&
                       a.num_kv_heads % 2 == 0 && a.num_heads % a.num_kv_heads == 0,
                   op, "num_heads/num_kv_heads", a.num_heads, "/", a.num_kv_heads,
                   " must be even and divide");
  SAMBAY_CHECK_ARG(a.head_dim > 0 && a.head_dim <= kMaxHeadDim, op, "head_dim", a.head_dim,
                   " must be in [1, ", kMaxHeadDim, "]");
  const int64_t qd = static_cast<int64_t>(a.num_heads) * a.head_dim;
  const int64_t kvd = static_cast<int64_t>(a.num_kv_heads) * a.head_dim;
  SAMBAY_CHECK_ARG(a.ldq >= qd, op, "ldq", a.ldq, " < q_dim ", qd);
  SAMBAY_CHECK_ARG(a.ldo >= qd, op, "ldo", a.ldo, " < q_dim ", qd);
  SAMBAY_CHECK_ARG(a.splits >= 1 && a.splits <= kMaxGridY, op, "splits", a.splits,
                   " is out of range");
  SAMBAY_CHECK_ARG(std::isfinite(a.scale) && std::isfinite(a.lambda) &&
                       std::isfinite(a.lambda_init) && a.eps > 0,
                   op, "scale/lambda/lambda_init/eps", "must be finite (eps > 0)");
  SAMBAY_CHECK_ARG(a.window >= 0, op, "window", a.window, " is negative");
  absl::Status s = ValidateSegments(op, segs, num_slots);
  if (!s.ok()) return s;
  a.segs = segs.dev;
  a.row_seg = segs.dev_row_seg;
  a.rows = segs.rows();
  SAMBAY_CHECK_ARG(a.rows * (a.num_heads / 2) <= kMaxGrid, op, "rows", a.rows, " is too many");
  const int64_t need = DiffAttentionWorkspaceBytes(a.rows, a.num_heads, a.head_dim, a.splits);
  SAMBAY_CHECK_ARG(partial_bytes >= need, op, "partial", "has ", partial_bytes, " bytes, needs ",
                   need);
  if (a.source == KvSource::kRing) {
    SAMBAY_CHECK_ARG(
        a.knew != nullptr && a.vnew != nullptr && a.k_ring != nullptr && a.v_ring != nullptr, op,
        "knew/vnew/k_ring/v_ring", "must not be null");
    SAMBAY_CHECK_ARG(a.window > 0, op, "window", "must be positive for a ring");
    SAMBAY_CHECK_ARG(a.ld_new >= kvd, op, "ld_new", a.ld_new, " < kv_dim ", kvd);
  } else {
    SAMBAY_CHECK_ARG(a.k_pool != nullptr && a.v_pool != nullptr && a.block_table != nullptr, op,
                     "k_pool/v_pool/block_table", "must not be null");
    SAMBAY_CHECK_ARG(a.block_tokens > 0 && a.max_blocks > 0, op, "block_tokens/max_blocks",
                     a.block_tokens, "/", a.max_blocks, " must be positive");
    SAMBAY_CHECK_ARG(static_cast<int64_t>(host_block_table.size()) == num_slots * a.max_blocks, op,
                     "host_block_table", "has ", host_block_table.size(), " entries, expected ",
                     num_slots * a.max_blocks);
    for (const SegDev& d : segs.host) {
      const int64_t last = d.start + d.len - 1;
      int64_t first = a.window > 0 ? std::max<int64_t>(0, d.start - a.window + 1) : 0;
      if (a.prefix_blocks_trusted) first = d.start;
      const int64_t last_block = last / a.block_tokens;
      SAMBAY_CHECK_ARG(last_block < a.max_blocks, op, "segment", "of slot ", d.slot,
                       " reaches block ", last_block, " >= max_blocks ", a.max_blocks);
      for (int64_t b = first / a.block_tokens; b <= last_block; ++b) {
        const int32_t id = host_block_table[d.slot * a.max_blocks + b];
        SAMBAY_CHECK_ARG(id >= 0 && id < num_blocks, op, "block_table", "[", d.slot, ", ", b,
                         "] = ", id, " is outside [0, ", num_blocks, ")");
      }
    }
  }
  return Launched(LaunchDiffAttention(a, stream), op);
}

absl::Status Argmax(cudaStream_t stream, const float* logits, int64_t rows, int64_t vocab,
                    int32_t* out) {
  constexpr const char* op = "Argmax";
  SAMBAY_CHECK_ARG(logits != nullptr && out != nullptr, op, "logits/out", "must not be null");
  SAMBAY_CHECK_ARG(rows > 0 && rows <= kMaxGrid, op, "rows", rows, " is out of range");
  SAMBAY_CHECK_ARG(vocab > 0 && vocab < (int64_t{1} << 31), op, "vocab", vocab, " is out of range");
  return Launched(LaunchArgmax(logits, rows, vocab, out, stream), op);
}

absl::Status SampleTopKTopP(cudaStream_t stream, const SampleArgs& a,
                            const SampleParamsHost& host) {
  constexpr const char* op = "SampleTopKTopP";
  SAMBAY_CHECK_ARG(a.logits != nullptr && a.out != nullptr && a.temperature != nullptr &&
                       a.top_k != nullptr && a.top_p != nullptr && a.uniform != nullptr,
                   op, "logits/out/params", "must not be null");
  SAMBAY_CHECK_ARG(a.rows > 0 && a.rows <= kMaxGrid, op, "rows", a.rows, " is out of range");
  SAMBAY_CHECK_ARG(a.vocab > 0 && a.vocab < (int64_t{1} << 24), op, "vocab", a.vocab,
                   " must be in [1, 2^24)");
  const size_t n = static_cast<size_t>(a.rows);
  SAMBAY_CHECK_ARG(host.temperature.size() == n && host.top_k.size() == n &&
                       host.top_p.size() == n && host.uniform.size() == n,
                   op, "params", "must have one entry per row");
  for (size_t i = 0; i < n; ++i) {
    SAMBAY_CHECK_ARG(std::isfinite(host.temperature[i]) && host.temperature[i] >= 0, op,
                     "temperature", "[", i, "] = ", host.temperature[i],
                     " must be finite and >= 0");
    SAMBAY_CHECK_ARG(host.top_k[i] >= 0, op, "top_k", "[", i, "] = ", host.top_k[i],
                     " is negative");
    SAMBAY_CHECK_ARG(host.top_p[i] > 0 && host.top_p[i] <= 1, op, "top_p", "[", i,
                     "] = ", host.top_p[i], " must be in (0, 1]");
    SAMBAY_CHECK_ARG(host.uniform[i] >= 0 && host.uniform[i] < 1, op, "uniform", "[", i,
                     "] = ", host.uniform[i], " must be in [0, 1)");
  }
  return Launched(LaunchSampleTopKTopP(a, stream), op);
}

}  // namespace sambay::cuda
