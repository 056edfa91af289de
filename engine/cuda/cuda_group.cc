#include "engine/cuda/cuda_group.h"

#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "engine/state_io.h"
#include "engine/tp/tp_weights.h"

#if defined(SAMBAY_HAVE_NCCL)
#include "engine/tp/nccl_communicator.h"
#endif

namespace sambay::cuda {
namespace {

// A logical copy of `in`'s tensors and token count (states are move-only).
SequenceState CopyTensors(const ModelConfig& c, const SequenceState& in) {
  SequenceState out(c);
  out.mamba = in.mamba;
  out.swa = in.swa;
  out.global.Resize(in.num_tokens);
  const size_t row = static_cast<size_t>(c.kv_dim()) * sizeof(float);
  for (int64_t p = 0; p < in.num_tokens; ++p) {
    std::memcpy(out.global.k(p), in.global.k(p), row);
    std::memcpy(out.global.v(p), in.global.v(p), row);
  }
  out.num_tokens = in.num_tokens;
  return out;
}

absl::Status CheckLogical(const ModelConfig& c, const SequenceState& s, const char* what) {
  if (!s.shards.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": sharded state"));
  if (s.mamba.size() != static_cast<size_t>(c.num_layers) ||
      s.swa.size() != static_cast<size_t>(c.num_layers) || s.global.kv_dim() != c.kv_dim() ||
      s.num_tokens < 0 || s.global.size() < s.num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": state does not match the config"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaGroup>> CudaGroup::Create(const Model& cpu,
                                                             const CudaModelOptions& options,
                                                             const std::vector<int>& devices) {
  if (devices.empty()) return absl::InvalidArgumentError("devices: empty list");
  const int present = DeviceCount();
  std::set<int> seen;
  for (int d : devices) {
    if (d < 0 || d >= present) {
      return absl::FailedPreconditionError(
          absl::StrCat("CUDA device ", d, " does not exist (", present, " present)"));
    }
    if (!seen.insert(d).second) {
      return absl::InvalidArgumentError(absl::StrCat("devices: device ", d, " appears twice"));
    }
  }
  const int tp = static_cast<int>(devices.size());
  if (auto plan = MakeTpPlan(cpu.config(), tp); !plan.ok()) return plan.status();
  std::vector<std::unique_ptr<DeviceCollectives>> comms;
  if (tp > 1) {
#if defined(SAMBAY_HAVE_NCCL)
    auto group = NcclCommunicator::CreateGroup(devices);
    if (!group.ok()) return group.status();
    for (auto& c : *group) comms.push_back(std::move(c));
#else
    return absl::FailedPreconditionError(
        "tensor parallelism on GPUs needs NCCL; this build has none (SAMBAY_NCCL)");
#endif
  }
  return Build(cpu, options, devices, std::move(comms));
}

absl::StatusOr<std::unique_ptr<CudaGroup>> CudaGroup::CreateWithCollectives(
    const Model& cpu, const CudaModelOptions& options, const std::vector<int>& devices,
    std::vector<std::unique_ptr<DeviceCollectives>> comms) {
  if (devices.empty()) return absl::InvalidArgumentError("devices: empty list");
  if (comms.size() != devices.size()) {
    return absl::InvalidArgumentError(absl::StrCat("CreateWithCollectives: ", comms.size(),
                                                   " collectives for ", devices.size(), " ranks"));
  }
  return Build(cpu, options, devices, std::move(comms));
}

absl::StatusOr<std::unique_ptr<CudaGroup>> CudaGroup::Build(
    const Model& cpu, const CudaModelOptions& options, const std::vector<int>& devices,
    std::vector<std::unique_ptr<DeviceCollectives>> comms) {
  if (cpu.tp_size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CudaGroup needs a CPU model loaded with tp = 1 (full weights), got tp = ", cpu.tp_size()));
  }
  const int tp = static_cast<int>(devices.size());
  std::unique_ptr<CudaGroup> g(new CudaGroup());
  g->config_ = cpu.config();
  g->devices_ = devices;
  SAMBAY_ASSIGN_OR_RETURN(g->plan_, MakeTpPlan(g->config_, tp));
  CudaModelOptions o = options;
  if (tp == 1) {
    o.device = devices[0];
    std::unique_ptr<CudaModel> m;
    SAMBAY_ASSIGN_OR_RETURN(m, CudaModel::CreateRank(g->config_, cpu.weights(), o, nullptr));
    g->ranks_.push_back(std::move(m));
    g->threads_ = std::make_unique<RankThreads>(1);
    return g;
  }
  for (int r = 0; r < tp; ++r) {
    if (comms[r] == nullptr || comms[r]->rank() != r || comms[r]->size() != tp) {
      return absl::InvalidArgumentError(
          absl::StrCat("collectives ", r, " are not rank ", r, " of ", tp));
    }
  }
  g->comms_ = std::move(comms);
  std::vector<int64_t> bounds;
  for (const TpRankSlice& s : g->plan_.ranks) bounds.push_back(s.vocab0);
  bounds.push_back(g->plan_.ranks.back().vocab1);
  for (int r = 0; r < tp; ++r) {
    ModelWeights shard = ShardWeights(g->config_, cpu.weights(), g->plan_, r);
    // The logical out_proj biases: added once per rank after the all-reduce (cuda_model.h).
    for (int i = 0; i < g->config_.num_layers; ++i) {
      const LayerKind k = g->config_.layers[i];
      if (k == LayerKind::kSwa || k == LayerKind::kGlobal || k == LayerKind::kCross) {
        shard.layers[i].attn.out_bias = cpu.weights().layers[i].attn.out_bias;
      }
    }
    o.device = devices[r];
    CudaTpRank t{g->comms_[r].get(), bounds};
    std::unique_ptr<CudaModel> m;
    SAMBAY_ASSIGN_OR_RETURN(m, CudaModel::CreateRank(g->plan_.ranks[r].config, shard, o, &t));
    g->ranks_.push_back(std::move(m));
  }
  g->threads_ = std::make_unique<RankThreads>(tp);
  return g;
}

CudaGroup::~CudaGroup() {
  threads_.reset();
  for (std::unique_ptr<CudaModel>& m : ranks_) {
    (void)m->context().Activate();  // free each rank's resources on its own device
    m.reset();
  }
}

const std::string& CudaGroup::device_name() const { return ranks_[0]->context().device_name(); }

absl::Status CudaGroup::RunAll(const Job& job, bool collective) {
  if (!broken_.ok()) return broken_;
  const std::vector<absl::Status> status = threads_->Run([&](int rank) {
    absl::Status s = ranks_[rank]->context().Activate();
    if (s.ok()) s = job(rank, *ranks_[rank]);
    // A peer may be waiting in a collective for this rank: release it.
    if (!s.ok() && collective) {
      for (std::unique_ptr<DeviceCollectives>& c : comms_) c->Abort();
    }
    return s;
  });
  const RankOutcome out = CombineRankStatus(status, collective);
  if (!out.broken.ok()) broken_ = out.broken;
  return out.status;
}

RankOutcome CombineRankStatus(const std::vector<absl::Status>& status, bool collective) {
  RankOutcome out;
  const int n = static_cast<int>(status.size());
  int failed = 0;
  bool agree = true;
  for (const absl::Status& s : status) {
    if (s.ok()) continue;
    ++failed;
    if (out.status.ok()) out.status = s;
    agree = agree && s.code() == out.status.code();
  }
  if (failed == 0 || n == 1 || (!collective && failed == n && agree)) return out;
  std::vector<std::string> what;
  for (int r = 0; r < n; ++r) {
    if (!status[r].ok()) what.push_back(absl::StrCat("rank ", r, ": ", status[r].message()));
  }
  out.broken =
      absl::InternalError(absl::StrCat("the tensor-parallel CUDA group is broken (",
                                       absl::StrJoin(what, "; "), "); restart the process"));
  return out;
}

absl::StatusOr<int> CudaGroup::AllocSlot() {
  std::vector<int> got(static_cast<size_t>(tp()), -1);
  SAMBAY_RETURN_IF_ERROR(RunAll(
      [&](int r, CudaModel& m) -> absl::Status {
        SAMBAY_ASSIGN_OR_RETURN(got[r], m.AllocSlot());
        return absl::OkStatus();
      },
      false));
  for (int v : got) {
    if (v != got[0]) {
      broken_ = absl::InternalError(
          "the tensor-parallel CUDA group is broken (ranks allocated "
          "different slots); restart the process");
      return broken_;
    }
  }
  return got[0];
}

absl::Status CudaGroup::FreeSlot(int slot) {
  return RunAll([&](int, CudaModel& m) { return m.FreeSlot(slot); }, false);
}

absl::StatusOr<int64_t> CudaGroup::NumTokens(int slot) const {
  if (!broken_.ok()) return broken_;
  return ranks_[0]->NumTokens(slot);
}

int64_t CudaGroup::free_blocks() const { return ranks_[0]->free_blocks(); }

absl::Status CudaGroup::Forward(absl::Span<const CudaSegment> segments,
                                std::vector<float>* logits) {
  if (!broken_.ok()) return broken_;
  // With TP, an error during the pass breaks the group (RunAll), so input errors are found
  // first, on one rank (every rank would find the same). TP = 1 leaves them to Forward.
  if (tp() > 1) SAMBAY_RETURN_IF_ERROR(ranks_[0]->ValidateForward(segments));
  return RunAll([&](int r, CudaModel& m) { return m.Forward(segments, r == 0 ? logits : nullptr); },
                true);
}

absl::Status CudaGroup::ArgmaxLast(std::vector<int32_t>* out) {
  if (!broken_.ok()) return broken_;
  SAMBAY_RETURN_IF_ERROR(ranks_[0]->context().Activate());
  return ranks_[0]->ArgmaxLast(out);
}

absl::Status CudaGroup::CopyLastLogits(absl::Span<const int> rows, std::vector<float>* out) {
  if (!broken_.ok()) return broken_;
  SAMBAY_RETURN_IF_ERROR(ranks_[0]->context().Activate());
  return ranks_[0]->CopyLastLogits(rows, out);
}

absl::Status CudaGroup::DownloadSlot(int slot, SequenceState* out) {
  if (tp() == 1) {
    return RunAll([&](int, CudaModel& m) { return m.DownloadSlot(slot, out); }, false);
  }
  if (!out->shards.empty()) return absl::InvalidArgumentError("DownloadSlot: sharded state");
  SequenceState sharded(config_, plan_);
  SAMBAY_RETURN_IF_ERROR(
      RunAll([&](int r, CudaModel& m) { return m.DownloadSlot(slot, &sharded.shards[r]); }, false));
  sharded.num_tokens = sharded.shards[0].num_tokens;
  SAMBAY_RETURN_IF_ERROR(ReshardState(config_, 1, sharded));  // gather
  out->mamba = std::move(sharded.mamba);
  out->swa = std::move(sharded.swa);
  out->global = std::move(sharded.global);
  out->num_tokens = sharded.num_tokens;
  return absl::OkStatus();
}

absl::Status CudaGroup::UploadSlot(const SequenceState& in, int slot) {
  if (tp() == 1) return RunAll([&](int, CudaModel& m) { return m.UploadSlot(in, slot); }, false);
  SAMBAY_RETURN_IF_ERROR(CheckLogical(config_, in, "UploadSlot"));
  SequenceState sharded = CopyTensors(config_, in);
  SAMBAY_RETURN_IF_ERROR(ReshardState(config_, tp(), sharded));  // scatter
  return RunAll([&](int r, CudaModel& m) { return m.UploadSlot(sharded.shards[r], slot); }, false);
}

}  // namespace sambay::cuda
