// CudaBackend: an EngineBackend over a CudaGroup: the model on one GPU, or tensor-parallel over
// several (engine/cuda/cuda_group.h; only in builds with SAMBAY_HAVE_CUDA). It lives in the
// plugin libsambay_worker_cuda.so (worker/gpu_plugin.h), not in sambay-worker itself. Each live
// sequence holds one state slot (on every rank) through SequenceState::device; the slot is taken
// (and an imported state uploaded, UploadSlot) on the sequence's first Forward and returned when
// the state is destroyed. Export downloads the slot (DownloadSlot) into the state's CPU tensors and
// writes the CPU wire format, so handoff works between CPU and GPU workers in either direction
// (bf16 device state: docs/gpu.md).
//
// Ownership: owns the CudaGroup; states it handed out must be destroyed before it.
// Thread-safety: thread-safe; mu_ guards the CudaGroup (model_'s pointee) and so serializes
// every call into it (the engine thread's Forward, export from handler threads, slot release
// from wherever a state dies). The configuration fields are set by Create and then only read.
#ifndef SAMBAY_WORKER_CUDA_BACKEND_H_
#define SAMBAY_WORKER_CUDA_BACKEND_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "engine/backend.h"
#include "engine/cuda/cuda_group.h"
#include "engine/cuda/cuda_model.h"
#include "engine/model.h"

namespace sambay {

class CudaBackend final : public EngineBackend {
 public:
  // Uploads the CPU model's weights (loaded with tp = 1) to `devices` (one: TP = 1; N: TP = N
  // over NCCL, sharded at upload); the Model may be freed afterwards. FailedPrecondition when
  // no CUDA device is present or a device does not exist; InvalidArgument for a TP size the
  // model cannot split (CudaGroup::Create).
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const Model& cpu,
                                                             const cuda::CudaModelOptions& options,
                                                             const std::vector<int>& devices);
  ~CudaBackend() override;

  const ModelConfig& config() const override { return config_; }
  const std::string& fingerprint() const override { return fingerprint_; }
  int tp_size() const override { return tp_; }
  std::string device_name() const override { return device_name_; }

  std::unique_ptr<SequenceState> NewState() const override;
  absl::Status Forward(absl::Span<const ForwardSegment> segments,
                       std::vector<float>* logits) override ABSL_LOCKS_EXCLUDED(mu_);
  // Greedy rows: argmax on the device, only the other rows' logits copied to the host.
  absl::Status ForwardArgmax(absl::Span<const ForwardSegment> segments,
                             const std::vector<bool>& want_logits, std::vector<float>* logits,
                             std::vector<int32_t>* argmax) override ABSL_LOCKS_EXCLUDED(mu_);
  bool argmax_on_device() const override { return true; }
  absl::StatusOr<std::vector<std::string>> Export(SequenceState& state,
                                                  size_t max_chunk_bytes) override
      ABSL_LOCKS_EXCLUDED(mu_);

  // Free state slots / K/V blocks now (for tests and logs).
  int64_t free_blocks() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Slot;
  CudaBackend() = default;
  // With mu_ held: the state's slot, taking one (and uploading the state) if it has none.
  absl::StatusOr<int> SlotOf(SequenceState& state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // With mu_ held: the segments' slots, taken / uploaded as needed (SlotOf).
  absl::StatusOr<std::vector<cuda::CudaSegment>> Segments(absl::Span<const ForwardSegment> segments)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Free(int slot) ABSL_LOCKS_EXCLUDED(mu_);

  ModelConfig config_;
  std::string fingerprint_;
  std::string device_name_;
  int tp_ = 1;
  Mutex mu_;
  // Set by Create before the backend is shared; the group itself is used only under mu_.
  std::unique_ptr<cuda::CudaGroup> model_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace sambay

#endif  // SAMBAY_WORKER_CUDA_BACKEND_H_
