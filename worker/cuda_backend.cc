#include "worker/cuda_backend.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "engine/cuda/cuda_util.h"
#include "engine/state_io.h"

namespace sambay {

struct CudaBackend::Slot {
  int id = -1;
};

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(
    const Model& cpu, const cuda::CudaModelOptions& options, const std::vector<int>& devices) {
  const int n = cuda::DeviceCount();
  if (n == 0) {
    return absl::FailedPreconditionError("--device cuda: no CUDA device is present");
  }
  for (int d : devices) {
    if (d < 0 || d >= n) {
      return absl::FailedPreconditionError(
          absl::StrCat("--gpu: device ", d, " does not exist (", n, " present)"));
    }
  }
  std::unique_ptr<CudaBackend> b(new CudaBackend());
  SAMBAY_ASSIGN_OR_RETURN(std::unique_ptr<cuda::CudaGroup> group,
                          cuda::CudaGroup::Create(cpu, options, devices));
  b->config_ = cpu.config();
  b->fingerprint_ = cpu.fingerprint();
  b->tp_ = group->tp();
  b->device_name_ =
      absl::StrCat("cuda:", absl::StrJoin(devices, ","), " (", group->device_name(), ")");
  b->model_ = std::move(group);  // not shared yet: no other thread can see `b`
  return b;
}

CudaBackend::~CudaBackend() = default;

std::unique_ptr<SequenceState> CudaBackend::NewState() const {
  return std::make_unique<SequenceState>(config_);
}

void CudaBackend::Free(int slot) {
  MutexLock lock(&mu_);
  (void)model_->FreeSlot(slot);
}

absl::StatusOr<int> CudaBackend::SlotOf(SequenceState& state) {
  if (state.device != nullptr) return static_cast<Slot*>(state.device.get())->id;
  if (!state.shards.empty()) {
    return absl::InvalidArgumentError("CudaBackend: a sharded state cannot be uploaded");
  }
  SAMBAY_ASSIGN_OR_RETURN(const int slot, model_->AllocSlot());
  if (state.num_tokens > 0) {
    if (absl::Status s = model_->UploadSlot(state, slot); !s.ok()) {
      (void)model_->FreeSlot(slot);
      return s;
    }
    state.global.Resize(0);  // the device holds it now; Export downloads it again
  }
  auto* p = new Slot{slot};
  // The deleter runs wherever the state dies; it takes mu_ (never held while a state dies).
  state.device = std::shared_ptr<void>(p, [this](void* v) {
    auto* s = static_cast<Slot*>(v);
    Free(s->id);
    delete s;
  });
  return slot;
}

absl::StatusOr<std::vector<cuda::CudaSegment>> CudaBackend::Segments(
    absl::Span<const ForwardSegment> segments) {
  std::vector<cuda::CudaSegment> segs;
  segs.reserve(segments.size());
  for (size_t i = 0; i < segments.size(); ++i) {
    const ForwardSegment& f = segments[i];
    if (f.state == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: segment ", i, ": null state"));
    }
    SAMBAY_ASSIGN_OR_RETURN(const int slot, SlotOf(*f.state));
    segs.push_back({slot, f.tokens, f.logits});
  }
  return segs;
}

absl::Status CudaBackend::Forward(absl::Span<const ForwardSegment> segments,
                                  std::vector<float>* logits) {
  MutexLock lock(&mu_);
  SAMBAY_ASSIGN_OR_RETURN(const std::vector<cuda::CudaSegment> segs, Segments(segments));
  SAMBAY_RETURN_IF_ERROR(model_->Forward(segs, logits));
  for (const ForwardSegment& f : segments) {
    f.state->num_tokens += static_cast<int64_t>(f.tokens.size());
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::ForwardArgmax(absl::Span<const ForwardSegment> segments,
                                        const std::vector<bool>& want_logits,
                                        std::vector<float>* logits, std::vector<int32_t>* argmax) {
  const int64_t rows = OutputRows(segments);
  if (static_cast<int64_t>(want_logits.size()) != rows) {
    return absl::InvalidArgumentError(absl::StrCat("ForwardArgmax: ", want_logits.size(),
                                                   " want_logits entries for ", rows, " rows"));
  }
  MutexLock lock(&mu_);
  SAMBAY_ASSIGN_OR_RETURN(const std::vector<cuda::CudaSegment> segs, Segments(segments));
  SAMBAY_RETURN_IF_ERROR(model_->Forward(segs, nullptr));  // logits stay on the device
  for (const ForwardSegment& f : segments) {
    f.state->num_tokens += static_cast<int64_t>(f.tokens.size());
  }
  SAMBAY_RETURN_IF_ERROR(model_->ArgmaxLast(argmax));
  std::vector<int> wanted;
  for (int64_t r = 0; r < rows; ++r) {
    if (want_logits[r]) wanted.push_back(static_cast<int>(r));
  }
  return model_->CopyLastLogits(wanted, logits);
}

absl::StatusOr<std::vector<std::string>> CudaBackend::Export(SequenceState& state,
                                                             size_t max_chunk_bytes) {
  {
    MutexLock lock(&mu_);
    if (state.device != nullptr) {
      SAMBAY_RETURN_IF_ERROR(
          model_->DownloadSlot(static_cast<Slot*>(state.device.get())->id, &state));
    }
  }
  return ExportState(config_, fingerprint_, state, max_chunk_bytes);
}

int64_t CudaBackend::free_blocks() {
  MutexLock lock(&mu_);
  return model_->free_blocks();
}

}  // namespace sambay
