// CudaModel: the whole SambaY forward (docs/model-spec.md "Layer schedule" to "Prefill
// behaviour (YOCO)") on one GPU, from the weights a CPU Model loaded, with continuous batching
// of decode over state slots.
//
// Weights: every matrix is uploaded as bf16 (converted from F32/F16 checkpoints), every small
// vector as fp32. Sequence state lives in slot arrays on the device: Mamba conv state (bf16)
// and SSM state (fp32, or bf16 with CudaModelOptions::ssm_state_bf16 as in the HF reference),
// SWA K/V rings (bf16), and the global layer's K/V in fixed-size blocks of a shared pool with a
// per-slot block table (allocated as a sequence grows, returned by FreeSlot). The residual
// stream is fp32; LayerNorm inputs are rounded to bf16 and GEMM inputs are bf16
// (docs/model-spec.md "Precision map of the HF reference").
//
// A Forward runs segments (a prefill chunk of one sequence, or one token for each of many
// sequences) through layers 0..N/2+1 for all rows and the cross-decoder only for the rows whose
// logits are wanted (YOCO), like Model::Forward.
//
// Tensor parallelism (CreateRank; engine/cuda/cuda_group.h drives the ranks): a CudaModel can
// be one rank of a group. It then holds the rank's shard of the weights (engine/tp/tp_weights.h)
// and runs with the rank's shard config (fewer heads / channels, engine/tp/tp_plan.h); its forward
// enqueues an fp32 all-reduce after every row-parallel GEMM (Mamba x_proj and out_proj,
// attention and GMU out_proj, MLP fc2; rank 0 adds its partial to the residual, the others
// contribute theirs alone) and an all-gather of the vocabulary-parallel logits, so every rank
// holds the same residual stream and the whole logits rows. State slots are sharded like the
// weights; every rank of a group sees the same calls, so slots and blocks match across ranks.
//
// Ownership: owns its CudaContext, device weights and state; borrows a rank's collectives. The
// CPU Model / weights passed to Create / CreateRank are only read during the call.
// Thread-safety: none; one thread drives a CudaModel.
#ifndef SAMBAY_ENGINE_CUDA_CUDA_MODEL_H_
#define SAMBAY_ENGINE_CUDA_CUDA_MODEL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/config.h"
#include "engine/cuda/cuda_util.h"
#include "engine/cuda/device_collectives.h"
#include "engine/cuda/gemm.h"
#include "engine/cuda/ops.h"
#include "engine/model.h"

namespace sambay::cuda {

struct CudaModelOptions {
  int device = 0;
  int max_slots = 8;             // sequences held at once
  int64_t max_context = 4096;    // tokens per sequence (width of the block table)
  int64_t kv_blocks = 0;         // blocks in the global K/V pool; 0 = enough for every slot full
  int block_tokens = 256;        // tokens per K/V block
  int64_t max_chunk = 1024;      // rows per forward pass (prefill chunk size)
  int64_t max_logits_rows = 64;  // logits rows per forward pass (>= max_slots is enforced)
  bool ssm_state_bf16 = false;   // store the SSM state in bf16 between calls (HF / vLLM)
  // Decode steps (one token per sequence, logits for all) replay a CUDA graph captured once per
  // batch size; split-K is then sized for max_context instead of the current context.
  bool cuda_graphs = false;
};

struct ForwardPlan;  // cuda_model_impl.h

// What makes a CudaModel one rank of a tensor-parallel group.
struct CudaTpRank {
  DeviceCollectives* comm = nullptr;  // the rank's collectives (not owned; outlives the model)
  // comm->size() + 1 token ids: rank r's LM-head rows are [vocab_bounds[r], vocab_bounds[r+1]).
  std::vector<int64_t> vocab_bounds;
};

struct CudaSegment {
  int slot = 0;
  absl::Span<const int32_t> tokens;
  LogitsMode logits = LogitsMode::kLast;
};

class CudaModel {
 public:
  // The whole model on options.device: `cpu` must be loaded with tp = 1.
  static absl::StatusOr<std::unique_ptr<CudaModel>> Create(const Model& cpu,
                                                           const CudaModelOptions& options);
  // One model from `config` and `weights` (bound to that config). With `tp`, rank
  // tp->comm->rank() of a group: `config` is the rank's shard config, `weights` its shard with
  // the LOGICAL attention out_proj biases (added once, after the all-reduce), and its LM-head
  // rows are the rank's vocabulary slice. InvalidArgument for bad options or a `tp` that does
  // not match the weights.
  static absl::StatusOr<std::unique_ptr<CudaModel>> CreateRank(const ModelConfig& config,
                                                               const ModelWeights& weights,
                                                               const CudaModelOptions& options,
                                                               const CudaTpRank* tp);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  const ModelConfig& config() const { return config_; }
  const CudaModelOptions& options() const { return options_; }
  CudaContext& context() { return *ctx_; }

  // A free slot with zeroed state; ResourceExhausted when all are in use.
  absl::StatusOr<int> AllocSlot();
  absl::Status FreeSlot(int slot);
  // dst (allocated) becomes a copy of src (allocated): state, K/V blocks, token count.
  absl::Status CloneSlot(int src, int dst);
  absl::StatusOr<int64_t> NumTokens(int slot) const;
  // Slot <-> CPU state transfer (cuda_state.cc), so a slot can travel in the CPU wire format
  // (engine/state_io.h): export = DownloadSlot + ExportState, import = StateImporter +
  // UploadSlot. bf16 device tensors (conv state, SWA rings, global K/V blocks) become the CPU
  // state's fp32 tensors and back (round to nearest even); the SSM state is fp32 or bf16
  // (ssm_state_bf16). SWA rings are copied whole (both sides index the ring by position %
  // window), the global K/V for all num_tokens positions through the block table.
  // DownloadSlot: `out` must be a logical (TP=1) state of this config; its num_tokens is set,
  // last_token and rng_state are left alone. UploadSlot: `slot` (allocated) takes in's tensors
  // and num_tokens; InvalidArgument for a sharded or mismatched state or num_tokens over
  // max_context, ResourceExhausted when the K/V pool cannot hold it (the slot is unchanged).
  absl::Status DownloadSlot(int slot, SequenceState* out);
  absl::Status UploadSlot(const SequenceState& in, int slot);
  int64_t free_blocks() const { return static_cast<int64_t>(free_blocks_.size()); }

  // Runs the segments as one batch; appends logits rows (vocab floats each) to `logits` in
  // segment order (kLast: 1, kAll: len, kNone: 0). With logits == nullptr they stay on the
  // device (device_logits()). Errors (nothing modified): bad slot, repeated slot, empty
  // segment, token out of range, too many rows, context over max_context (InvalidArgument);
  // K/V pool exhausted (ResourceExhausted).
  absl::Status Forward(absl::Span<const CudaSegment> segments, std::vector<float>* logits);
  // The checks of Forward alone (same errors; nothing is modified or enqueued).
  absl::Status ValidateForward(absl::Span<const CudaSegment> segments) const;
  // Chunked prefill (max_chunk rows per pass); last_logits receives [vocab].
  absl::Status Prefill(int slot, absl::Span<const int32_t> tokens, std::vector<float>* last_logits);
  // One decode step: tokens[i] is consumed by slots[i]; logits [slots.size(), vocab].
  absl::Status DecodeStep(absl::Span<const int> slots, absl::Span<const int32_t> tokens,
                          std::vector<float>* logits);
  // Decode step with greedy sampling on the device: next[i] = argmax of slot i's logits.
  absl::Status DecodeStepGreedy(absl::Span<const int> slots, absl::Span<const int32_t> tokens,
                                std::vector<int32_t>* next);
  // Samples one token per logits row of the last Forward on the device (temperature, top-k,
  // top-p; kernels.h); params has one entry per row (uniform: the draw in [0, 1), e.g. from the
  // sequence's Sampler RNG). Penalties and min-p are not applied here.
  absl::Status SampleLast(const SampleParamsHost& params, std::vector<int32_t>* out);
  // The first maximum of each logits row of the last Forward (ties to the lowest id), computed
  // on the device: out gets one id per row.
  absl::Status ArgmaxLast(std::vector<int32_t>* out);
  // Appends the listed logits rows of the last Forward (indices < its row count, in the given
  // order) to *out, [rows.size(), vocab]; InvalidArgument for an index out of range.
  absl::Status CopyLastLogits(absl::Span<const int> rows, std::vector<float>* out);
  // The logits of the last Forward, fp32 [rows, vocab] on the device.
  const float* device_logits() const;

  // Bytes of weight matrices one decode step reads (embedding rows excluded, LM head included).
  int64_t weight_bytes() const { return weight_bytes_; }
  // Bytes of sequence state one decode step reads and writes for one sequence at `context`.
  int64_t StateBytesPerStep(int64_t context) const;

  // Switches decode graphs on or off (CudaModelOptions::cuda_graphs); graphs stay cached.
  void set_cuda_graphs(bool on) { options_.cuda_graphs = on; }

  struct Impl;

 private:
  CudaModel() = default;
  absl::Status Upload(const ModelWeights& w);
  absl::Status AllocState();
  // AllocState's steps: slot state, the K/V pool and the host slot tables; the activation
  // scratch; the tensor-parallel buffers; the batch metadata and its pinned staging.
  absl::Status AllocSlotState(int64_t nblocks);
  absl::Status AllocActivations();
  absl::Status AllocTpBuffers();
  absl::Status AllocMetadata();
  absl::Status CheckSlot(int slot, const char* what) const;
  struct ForwardCounts {
    int64_t rows = 0;     // self-decoder rows
    bool decode = false;  // one token per segment
  };
  absl::Status CountForward(absl::Span<const CudaSegment> segments, ForwardCounts* counts) const;
  // Forward's steps (cuda_forward.cc). AssignBlocks gives every segment the K/V blocks its new
  // tokens reach (true when the block table changed); PlanRows and PlanCrossRows lay out the
  // self-decoder rows and the cross-decoder (YOCO) rows; StageMetadata waits for the stream,
  // then uploads the plan; EnqueueOrReplay runs the kernels (a decode graph or Enqueue).
  bool AssignBlocks(absl::Span<const CudaSegment> segments);
  void PlanRows(absl::Span<const CudaSegment> segments, const ForwardCounts& counts,
                ForwardPlan* plan) const;
  void PlanCrossRows(absl::Span<const CudaSegment> segments, ForwardPlan* plan) const;
  absl::Status StageMetadata(const ForwardPlan& plan, bool table_dirty);
  absl::Status EnqueueOrReplay(ForwardPlan& plan);
  // Enqueues every kernel of one forward pass on the context's stream (no sync, no host copy).
  absl::Status Enqueue(const ForwardPlan& plan);
  // The kernels of one pass, one method per layer kind (cuda_forward.cc).
  class Pass;
  // Captures one decode pass of `plan` (split-K fixed for max_context) as a graph; an error
  // leaves the stream out of capture mode and nothing enqueued.
  absl::StatusOr<cudaGraphExec_t> Capture(ForwardPlan& plan);

  ModelConfig config_;
  CudaModelOptions options_;
  bool has_tp_ = false;
  CudaTpRank tp_;
  std::unique_ptr<CudaContext> ctx_;
  std::unique_ptr<Impl> impl_;
  int64_t weight_bytes_ = 0;
  int64_t max_blocks_ = 0;  // per slot
  int64_t max_rows_ = 0;
  std::vector<int32_t> host_block_table_;  // [max_slots, max_blocks]
  std::vector<int32_t> free_blocks_;
  std::vector<int64_t> slot_blocks_;  // K/V blocks held per slot (always a prefix of its row)
  std::vector<bool> slot_used_;
  std::vector<int64_t> slot_tokens_;
};

}  // namespace sambay::cuda

#endif  // SAMBAY_ENGINE_CUDA_CUDA_MODEL_H_
