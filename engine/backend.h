// EngineBackend: the seam between the worker (scheduler, service) and the engine that runs a
// replica: the CPU Model (CpuBackend) or, in a build with CUDA, a CudaGroup on one or more GPUs
// (worker/cuda_backend.h, loaded as a plugin: worker/gpu_plugin.h). See docs/worker.md
// "Devices" and docs/gpu.md.
//
// The worker always holds a sequence as a CPU SequenceState (engine/state.h): on the CPU it
// carries the tensors; on a device it carries the host fields (num_tokens, last_token,
// rng_state) and SequenceState::device (the device slot, freed with the state), and its tensors
// are a staging copy filled on Export. A state without a device slot (new, or imported from the
// wire) is uploaded by the backend on its first Forward, so import is the CPU StateImporter
// followed by that upload, and export is a download followed by the CPU ExportState: the wire
// format is the same on every device. Logits come back to the host, so sampling is the same
// Sampler code everywhere.
//
// Ownership: CpuBackend borrows the Model (must outlive it). States handed out by NewState must
// not outlive their backend. Thread-safety: every method is thread-safe (the CPU Model
// serializes Forward; CudaBackend serializes all calls with a mutex).
#ifndef SAMBAY_ENGINE_BACKEND_H_
#define SAMBAY_ENGINE_BACKEND_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/config.h"
#include "engine/model.h"
#include "engine/state.h"
#include "engine/state_io.h"

namespace sambay {

class EngineBackend {
 public:
  virtual ~EngineBackend() = default;

  virtual const ModelConfig& config() const = 0;
  // Model::fingerprint() of the loaded checkpoint (same on every device: it names the weights).
  virtual const std::string& fingerprint() const = 0;
  // TP size that imported states are built for (StateImporter's tp).
  virtual int tp_size() const = 0;
  // "cpu" or "cuda:N (device name)".
  virtual std::string device_name() const = 0;

  // A fresh state (no tokens). Device resources are taken on its first Forward.
  virtual std::unique_ptr<SequenceState> NewState() const = 0;
  // Model::Forward's contract: one batch, logits rows appended in segment order.
  virtual absl::Status Forward(absl::Span<const ForwardSegment> segments,
                               std::vector<float>* logits) = 0;
  // Forward for a caller that needs only the greedy token of some logits rows, so a device
  // backend can skip copying those rows to the host. `want_logits` has one entry per logits row
  // of the pass (OutputRows, engine/model.h): rows marked true are appended to *logits (compacted,
  // in order); *argmax gets every row's greedy token by GreedyToken's rule (engine/sampler.h; the
  // CUDA argmax kernel follows it too). This default runs Forward and takes the argmax here.
  virtual absl::Status ForwardArgmax(absl::Span<const ForwardSegment> segments,
                                     const std::vector<bool>& want_logits,
                                     std::vector<float>* logits, std::vector<int32_t>* argmax);
  // True when ForwardArgmax saves host copies (the scheduler then uses it for greedy rows).
  virtual bool argmax_on_device() const { return false; }
  // The state in the wire format (ExportState; chunks of at most max_chunk_bytes).
  virtual absl::StatusOr<std::vector<std::string>> Export(SequenceState& state,
                                                          size_t max_chunk_bytes) = 0;
  // The same chunks, each handed to `sink` as it is made. This default runs Export first (all
  // chunks in memory at once); the CPU backend streams (ExportStateTo).
  virtual absl::Status ExportTo(SequenceState& state, size_t max_chunk_bytes,
                                const StateChunkSink& sink);
};

// The CPU Model, unchanged: every call forwards to it (bit-identical to using Model directly).
class CpuBackend final : public EngineBackend {
 public:
  explicit CpuBackend(Model& model) : model_(model) {}
  const ModelConfig& config() const override { return model_.config(); }
  const std::string& fingerprint() const override { return model_.fingerprint(); }
  int tp_size() const override { return model_.tp_size(); }
  std::string device_name() const override { return "cpu"; }
  std::unique_ptr<SequenceState> NewState() const override { return model_.NewState(); }
  absl::Status Forward(absl::Span<const ForwardSegment> segments,
                       std::vector<float>* logits) override {
    return model_.Forward(segments, logits);
  }
  absl::StatusOr<std::vector<std::string>> Export(SequenceState& state,
                                                  size_t max_chunk_bytes) override;
  absl::Status ExportTo(SequenceState& state, size_t max_chunk_bytes,
                        const StateChunkSink& sink) override;

 private:
  Model& model_;
};

}  // namespace sambay

#endif  // SAMBAY_ENGINE_BACKEND_H_
