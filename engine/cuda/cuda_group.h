// CudaGroup: a SambaY model on one GPU or tensor-parallel over several (docs/design.md "Tensor
// parallelism"), behind one API with the CudaModel calls a server needs: slots, Forward,
// slot <-> CPU state transfer.
//
// TP = 1: one CudaModel driven on the calling thread. TP = N: N CudaModel ranks
// (CudaModel::CreateRank) on devices[0..N-1], each with its shard of the weights
// (engine/tp/tp_weights.h) and its rank of an NCCL group (or of caller-supplied collectives, for
// tests). Every call runs on all ranks at once: rank 0 on the calling thread, ranks 1..N-1 on
// their own threads (each makes its device current). Slots and K/V blocks are allocated
// identically on every rank, so a slot number names the same sequence on all of them. Logits
// come back once (rank 0's copy; every rank holds the whole rows after the all-gather).
//
// Failure: a request-input error (Forward's checks) is found before any rank runs. An error on
// a rank during a pass aborts the collectives (so no rank waits forever for a peer) and breaks
// the group: every later call returns Internal with the first error, and the process should
// be restarted (a device fault is not recoverable in-process either).
//
// Ownership: owns the ranks' models, collectives and threads (joined by the destructor). The
// CPU Model passed to Create is only read during Create.
// Thread-safety: none; one thread at a time drives a CudaGroup (CudaBackend holds a mutex).
#ifndef SAMBAY_ENGINE_CUDA_CUDA_GROUP_H_
#define SAMBAY_ENGINE_CUDA_CUDA_GROUP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/rank_threads.h"
#include "engine/config.h"
#include "engine/cuda/cuda_model.h"
#include "engine/cuda/device_collectives.h"
#include "engine/model.h"
#include "engine/state.h"
#include "engine/tp/tp_plan.h"

namespace sambay::cuda {

// How a call that ran on every rank ends (CudaGroup::RunAll; a free function so the policy is
// tested without a GPU). `status`: the first rank error, or OK. `broken`: non-OK (Internal,
// naming every failed rank) when the group can no longer be trusted: with more than one rank,
// any error in a call that enqueues collectives (`collective`), or ranks that disagree (some
// failed, or with different codes). Ranks that all fail alike outside a collective call (the
// same input error everywhere) leave the group usable.
struct RankOutcome {
  absl::Status status;
  absl::Status broken;
};
RankOutcome CombineRankStatus(const std::vector<absl::Status>& status, bool collective);

class CudaGroup {
 public:
  // The model on `devices` (tp = devices.size(); options.device is ignored). `cpu` must be
  // loaded with tp = 1. TP > 1 needs NCCL (built with SAMBAY_HAVE_NCCL) and distinct devices.
  // Errors: InvalidArgument for an empty or repeated device list, a TP size the model cannot
  // split (naming the size), bad options; FailedPrecondition for an absent device or a build
  // without NCCL; Internal / ResourceExhausted from CUDA and NCCL.
  static absl::StatusOr<std::unique_ptr<CudaGroup>> Create(const Model& cpu,
                                                           const CudaModelOptions& options,
                                                           const std::vector<int>& devices);
  // As Create, with caller-made collectives: comms[r] is rank r's (rank() == r, size() ==
  // comms.size()); devices[r] is rank r's device, which may repeat (tests run TP on one GPU).
  static absl::StatusOr<std::unique_ptr<CudaGroup>> CreateWithCollectives(
      const Model& cpu, const CudaModelOptions& options, const std::vector<int>& devices,
      std::vector<std::unique_ptr<DeviceCollectives>> comms);
  ~CudaGroup();
  CudaGroup(const CudaGroup&) = delete;
  CudaGroup& operator=(const CudaGroup&) = delete;

  int tp() const { return static_cast<int>(ranks_.size()); }
  const ModelConfig& config() const { return config_; }  // the logical model
  const std::vector<int>& devices() const { return devices_; }
  // "NVIDIA H100 80GB HBM3" (rank 0's device).
  const std::string& device_name() const;
  CudaModel& rank(int r) { return *ranks_[r]; }

  // CudaModel's calls, on every rank (cuda_model.h).
  absl::StatusOr<int> AllocSlot();
  absl::Status FreeSlot(int slot);
  absl::StatusOr<int64_t> NumTokens(int slot) const;
  int64_t free_blocks() const;
  absl::Status Forward(absl::Span<const CudaSegment> segments, std::vector<float>* logits);
  // CudaModel::ArgmaxLast / CopyLastLogits of the last Forward (rank 0's copy of the logits).
  absl::Status ArgmaxLast(std::vector<int32_t>* out);
  absl::Status CopyLastLogits(absl::Span<const int> rows, std::vector<float>* out);
  // `out`: a logical state of config(); its tensors and num_tokens are replaced (gathered from
  // the ranks' shards), everything else (device, last_token, rng_state) is left alone.
  absl::Status DownloadSlot(int slot, SequenceState* out);
  // `in`: a logical state of config() (scattered to the ranks' shards).
  absl::Status UploadSlot(const SequenceState& in, int slot);

 private:
  using Job = std::function<absl::Status(int rank, CudaModel& model)>;
  CudaGroup() = default;
  static absl::StatusOr<std::unique_ptr<CudaGroup>> Build(
      const Model& cpu, const CudaModelOptions& options, const std::vector<int>& devices,
      std::vector<std::unique_ptr<DeviceCollectives>> comms);
  // Runs job on every rank at once and returns the first error. With `collective` (the job
  // enqueues collectives), an error on any rank aborts the collectives and breaks the group;
  // otherwise the group breaks only when the ranks disagree (some succeed, or codes differ).
  absl::Status RunAll(const Job& job, bool collective);

  ModelConfig config_;
  TpPlan plan_;
  std::vector<int> devices_;
  // Declared before ranks_: a rank's model borrows its collectives.
  std::vector<std::unique_ptr<DeviceCollectives>> comms_;
  std::vector<std::unique_ptr<CudaModel>> ranks_;
  std::unique_ptr<RankThreads> threads_;  // after ranks_: joined before the ranks are freed
  absl::Status broken_;                   // set once, by the driving thread
};

}  // namespace sambay::cuda

#endif  // SAMBAY_ENGINE_CUDA_CUDA_GROUP_H_
