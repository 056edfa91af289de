// CudaModel::DownloadSlot / UploadSlot: a slot's device state <-> a CPU SequenceState
// (cuda_model.h). Synchronous (stream synchronized before and after).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/cuda/cuda_model.h"
#include "engine/cuda/cuda_model_impl.h"
#include "engine/dtype.h"

namespace sambay::cuda {
namespace {

void ToBf16(const float* src, int64_t n, uint16_t* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = F32ToBf16(src[i]);
}
void FromBf16(const uint16_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(src[i]);
}

// InvalidArgument unless `s` is a logical state shaped for `c`.
absl::Status CheckShape(const ModelConfig& c, const SequenceState& s, const char* what) {
  if (!s.shards.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": sharded state"));
  const auto n = static_cast<size_t>(c.num_layers);
  if (s.mamba.size() != n || s.swa.size() != n || s.global.kv_dim() != c.kv_dim()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": state does not match the config"));
  }
  const auto conv = static_cast<size_t>((c.d_conv - 1) * c.d_inner);
  const auto ssm = static_cast<size_t>(c.d_inner * c.d_state);
  const auto ring = static_cast<size_t>(c.sliding_window * c.kv_dim());
  for (int i = 0; i < c.num_layers; ++i) {
    const bool bad = c.layers[i] == LayerKind::kMamba
                         ? (s.mamba[i].conv.size() != conv || s.mamba[i].ssm.size() != ssm)
                         : (c.layers[i] == LayerKind::kSwa &&
                            (s.swa[i].k.size() != ring || s.swa[i].v.size() != ring));
    if (bad) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": layer ", i, " state does not match the config"));
    }
  }
  if (s.num_tokens < 0 || s.global.size() < s.num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": bad token count ", s.num_tokens));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CudaModel::DownloadSlot(int slot, SequenceState* out) {
  SAMBAY_RETURN_IF_ERROR(CheckSlot(slot, "DownloadSlot"));
  const ModelConfig& c = config_;
  const int64_t n = slot_tokens_[slot];
  out->global.Resize(n);
  out->num_tokens = n;
  SAMBAY_RETURN_IF_ERROR(CheckShape(c, *out, "DownloadSlot"));
  SAMBAY_RETURN_IF_ERROR(ctx_->Activate());
  SAMBAY_RETURN_IF_ERROR(ctx_->Synchronize());
  Impl& im = *impl_;
  const int64_t S = options_.max_slots, kvd = c.kv_dim(), W = c.sliding_window;
  const int64_t conv_n = (c.d_conv - 1) * c.d_inner, ssm_n = c.d_inner * c.d_state;
  const bool ssm16 = options_.ssm_state_bf16;
  std::vector<uint16_t> h16;
  for (int i = 0; i < c.num_layers; ++i) {
    const int64_t si = im.layers[i].state_index;
    if (c.layers[i] == LayerKind::kMamba) {
      MambaLayerState& m = out->mamba[i];
      h16.resize(static_cast<size_t>(std::max(conv_n, ssm_n)));
      SAMBAY_RETURN_IF_ERROR(
          im.conv.CopyToHost(h16.data(), conv_n * 2, (si * S + slot) * conv_n * 2));
      FromBf16(h16.data(), conv_n, m.conv.data());
      if (ssm16) {
        SAMBAY_RETURN_IF_ERROR(
            im.ssm.CopyToHost(h16.data(), ssm_n * 2, (si * S + slot) * ssm_n * 2));
        FromBf16(h16.data(), ssm_n, m.ssm.data());
      } else {
        SAMBAY_RETURN_IF_ERROR(
            im.ssm.CopyToHost(m.ssm.data(), ssm_n * 4, (si * S + slot) * ssm_n * 4));
      }
    } else if (c.layers[i] == LayerKind::kSwa) {
      const int64_t ring = W * kvd;
      h16.resize(static_cast<size_t>(ring));
      SAMBAY_RETURN_IF_ERROR(
          im.ring_k.CopyToHost(h16.data(), ring * 2, (si * S + slot) * ring * 2));
      FromBf16(h16.data(), ring, out->swa[i].k.data());
      SAMBAY_RETURN_IF_ERROR(
          im.ring_v.CopyToHost(h16.data(), ring * 2, (si * S + slot) * ring * 2));
      FromBf16(h16.data(), ring, out->swa[i].v.data());
    }
  }
  // Global K/V: block by block through the table, position order.
  const int64_t BT = options_.block_tokens;
  h16.resize(static_cast<size_t>(BT * kvd));
  std::vector<uint16_t> v16(h16.size());
  for (int64_t p0 = 0; p0 < n; p0 += BT) {
    const int32_t id = host_block_table_[slot * max_blocks_ + p0 / BT];
    if (id < 0) return absl::InternalError("DownloadSlot: a K/V block is missing");
    const int64_t rows = std::min(BT, n - p0);
    SAMBAY_RETURN_IF_ERROR(im.kpool.CopyToHost(h16.data(), rows * kvd * 2, id * BT * kvd * 2));
    SAMBAY_RETURN_IF_ERROR(im.vpool.CopyToHost(v16.data(), rows * kvd * 2, id * BT * kvd * 2));
    for (int64_t r = 0; r < rows; ++r) {
      FromBf16(h16.data() + r * kvd, kvd, out->global.k(p0 + r));
      FromBf16(v16.data() + r * kvd, kvd, out->global.v(p0 + r));
    }
  }
  out->num_tokens = n;
  return absl::OkStatus();
}

absl::Status CudaModel::UploadSlot(const SequenceState& in, int slot) {
  SAMBAY_RETURN_IF_ERROR(CheckSlot(slot, "UploadSlot"));
  const ModelConfig& c = config_;
  SAMBAY_RETURN_IF_ERROR(CheckShape(c, in, "UploadSlot"));
  const int64_t n = in.num_tokens;
  if (n > options_.max_context) {
    return absl::InvalidArgumentError(
        absl::StrCat("UploadSlot: ", n, " tokens exceed max_context ", options_.max_context));
  }
  const int64_t BT = options_.block_tokens;
  const int64_t need = (n + BT - 1) / BT;
  const int64_t have = slot_blocks_[slot];
  if (need - have > static_cast<int64_t>(free_blocks_.size())) {
    return absl::ResourceExhaustedError("UploadSlot: the K/V block pool is exhausted");
  }
  SAMBAY_RETURN_IF_ERROR(ctx_->Activate());
  SAMBAY_RETURN_IF_ERROR(ctx_->Synchronize());
  Impl& im = *impl_;
  const int64_t S = options_.max_slots, kvd = c.kv_dim(), W = c.sliding_window;
  const int64_t conv_n = (c.d_conv - 1) * c.d_inner, ssm_n = c.d_inner * c.d_state;
  std::vector<uint16_t> h16;
  for (int i = 0; i < c.num_layers; ++i) {
    const int64_t si = im.layers[i].state_index;
    if (c.layers[i] == LayerKind::kMamba) {
      const MambaLayerState& m = in.mamba[i];
      h16.resize(static_cast<size_t>(std::max(conv_n, ssm_n)));
      ToBf16(m.conv.data(), conv_n, h16.data());
      SAMBAY_RETURN_IF_ERROR(
          im.conv.CopyFromHost(h16.data(), conv_n * 2, (si * S + slot) * conv_n * 2));
      if (options_.ssm_state_bf16) {
        ToBf16(m.ssm.data(), ssm_n, h16.data());
        SAMBAY_RETURN_IF_ERROR(
            im.ssm.CopyFromHost(h16.data(), ssm_n * 2, (si * S + slot) * ssm_n * 2));
      } else {
        SAMBAY_RETURN_IF_ERROR(
            im.ssm.CopyFromHost(m.ssm.data(), ssm_n * 4, (si * S + slot) * ssm_n * 4));
      }
    } else if (c.layers[i] == LayerKind::kSwa) {
      const int64_t ring = W * kvd;
      h16.resize(static_cast<size_t>(ring));
      ToBf16(in.swa[i].k.data(), ring, h16.data());
      SAMBAY_RETURN_IF_ERROR(
          im.ring_k.CopyFromHost(h16.data(), ring * 2, (si * S + slot) * ring * 2));
      ToBf16(in.swa[i].v.data(), ring, h16.data());
      SAMBAY_RETURN_IF_ERROR(
          im.ring_v.CopyFromHost(h16.data(), ring * 2, (si * S + slot) * ring * 2));
    }
  }
  h16.resize(static_cast<size_t>(BT * kvd));
  std::vector<uint16_t> v16(h16.size());
  for (int64_t b = 0; b < need; ++b) {
    int32_t& id = host_block_table_[slot * max_blocks_ + b];
    if (id < 0) {
      id = free_blocks_.back();
      free_blocks_.pop_back();
      ++slot_blocks_[slot];
    }
    const int64_t p0 = b * BT, rows = std::min(BT, n - p0);
    for (int64_t r = 0; r < rows; ++r) {
      ToBf16(in.global.k(p0 + r), kvd, h16.data() + r * kvd);
      ToBf16(in.global.v(p0 + r), kvd, v16.data() + r * kvd);
    }
    SAMBAY_RETURN_IF_ERROR(im.kpool.CopyFromHost(h16.data(), rows * kvd * 2, id * BT * kvd * 2));
    SAMBAY_RETURN_IF_ERROR(im.vpool.CopyFromHost(v16.data(), rows * kvd * 2, id * BT * kvd * 2));
  }
  SAMBAY_RETURN_IF_ERROR(im.Stage(im.block_table, host_block_table_, ctx_->stream()));
  slot_tokens_[slot] = n;
  return ctx_->Synchronize();
}

}  // namespace sambay::cuda
