// Model: a loaded SambaY model and its CPU forward pass (docs/model-spec.md "Layer schedule" to
// "Prefill behaviour (YOCO)").
//
// The worker's view of the engine (docs/design.md "Engine boundary"): load; create sequence states;
// run a batched forward over segments (a prefill chunk is one segment of many tokens, a decode step
// is one token per sequence); read logits. YOCO: layers 0..N/2+1 run on every new token and write
// the sequence state; the cross-decoder (N/2+2..N-1) runs only on rows whose logits are requested.
//
// Tensor parallelism (ModelOptions::tp = N > 1, docs/design.md "Tensor parallelism",
// docs/tensor-parallel.md): the weights are split over N ranks at load (engine/tp/tp_plan.h), each
// rank is a thread with its own share of the threads, and the ranks meet in an in-process
// all-reduce (engine/tp/tp_group.h). The API is the same; NewState returns states sharded like the
// weights, Forward accepts a state of any layout (e.g. freshly imported, logical) and converts it
// on first use, and state export/import use logical tensors, so a TP=N model hands sequences to a
// TP=M one.
//
// Ownership: owns the weights (and the mapped checkpoint) and a thread pool (TP: the rank
// group).
// Thread-safety: the model is immutable after Load; Forward serializes callers with mu_, which
// guards running a job on the thread pool or the TP group (each runs one job at a time). States
// passed to Forward must not be used elsewhere during the call.
#ifndef SAMBAY_ENGINE_MODEL_H_
#define SAMBAY_ENGINE_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/mutex.h"
#include "common/thread_pool.h"
#include "engine/config.h"
#include "engine/state.h"
#include "engine/weights.h"

namespace sambay {

class TpGroup;  // engine/tp/tp_group.h

struct ModelOptions {
  int num_threads = 0;  // 0 = all hardware threads (with tp > 1: shared by the ranks)
  // Tensor-parallel ranks (threads), 1 = off. The model's KV heads / 2 (differential-attention
  // KV pairs), d_inner and intermediate_size must be divisible by tp; else Load fails with
  // InvalidArgument naming the size.
  int tp = 1;
};

enum class LogitsMode { kNone, kLast, kAll };

struct ForwardSegment {
  SequenceState* state = nullptr;
  absl::Span<const int32_t> tokens;
  LogitsMode logits = LogitsMode::kLast;
};

// Rows of logits a pass over `segments` writes: kLast 1, kAll len, kNone 0 per segment.
inline int64_t OutputRows(absl::Span<const ForwardSegment> segments) {
  int64_t n = 0;
  for (const ForwardSegment& s : segments) {
    if (s.logits == LogitsMode::kAll) n += static_cast<int64_t>(s.tokens.size());
    if (s.logits == LogitsMode::kLast) n += 1;
  }
  return n;
}

class Model {
 public:
  ~Model();
  // Loads dir/config.json and the safetensors weights. `report` (optional) receives unknown
  // tensors and warnings.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir,
                                                     const ModelOptions& options = {},
                                                     LoadReport* report = nullptr);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  // Hex digest of config + tensor names/shapes/dtypes + a sample of weight bytes: two processes
  // with the same fingerprint run the same model.
  const std::string& fingerprint() const { return fingerprint_; }
  int num_threads() const { return num_threads_; }
  int tp_size() const;

  // A fresh state (no tokens), sharded like the weights when tp_size() > 1.
  std::unique_ptr<SequenceState> NewState() const;

  // Runs all segments as one batch. Appends to `logits` (row-major, vocab columns) one row per
  // requested position, in segment order: kLast -> 1 row, kAll -> len rows, kNone -> 0 rows.
  // Errors (nothing is modified): empty segment, token id out of range (InvalidArgument naming
  // the position), a state appearing twice, a null state.
  // Batch invariance: when every segment has one token (a decode batch), each segment's logits
  // are bit-identical to running it alone. A multi-token segment is bit-identical to the same
  // chunk run alone (row count decides the kernels), so a scheduler runs a prefill chunk in its
  // own call to keep results independent of what else is running.
  // A state in another TP layout than this model's (SequenceState::shards) is first converted
  // in place (ReshardState); its values do not change.
  absl::Status Forward(absl::Span<const ForwardSegment> segments, std::vector<float>* logits)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Prefill of one sequence in chunks of at most `chunk` tokens (0 = one chunk); writes the
  // last token's logits [vocab].
  absl::Status Prefill(SequenceState& state, absl::Span<const int32_t> tokens, int64_t chunk,
                       std::vector<float>* last_logits);
  // Logits at every position [tokens.size(), vocab] (cross-decoder on all rows).
  absl::Status Score(SequenceState& state, absl::Span<const int32_t> tokens,
                     std::vector<float>* logits);
  // One decode step: token i is consumed by states[i]; logits [states.size(), vocab].
  absl::Status DecodeStep(absl::Span<SequenceState* const> states, absl::Span<const int32_t> tokens,
                          std::vector<float>* logits);

 private:
  Model();
  absl::Status Validate(absl::Span<const ForwardSegment> segments) const;

  ModelConfig config_;
  ModelWeights weights_;
  std::string fingerprint_;
  int num_threads_ = 1;
  Mutex mu_;
  std::unique_ptr<ThreadPool> pool_ ABSL_PT_GUARDED_BY(mu_);  // TP = 1
  // TP > 1. Its Forward runs under mu_ (like the pool's jobs); its plan is immutable and read
  // without it, so the pointer is not annotated.
  std::unique_ptr<TpGroup> tp_;
};

}  // namespace sambay

#endif  // SAMBAY_ENGINE_MODEL_H_
