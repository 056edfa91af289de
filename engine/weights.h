// ModelWeights: every parameter of a SambaY model, bound to checkpoint tensors and validated.
//
// Matrices (every Linear weight and the embedding, >99.9% of the bytes) are WeightViews into the
// memory-mapped checkpoint, in their checkpoint dtype: a bf16 model stays bf16 in memory.
// Vectors and small tensors (norms, biases, conv1d, A, D, lambda, subln) are converted to fp32
// at load; A = -exp(A_log) and lambda (docs/model-spec.md "Differential attention core") are
// precomputed here.
//
// Ownership: holds the Checkpoint the views point into. Immutable after load; thread-safe.
#ifndef SAMBAY_ENGINE_WEIGHTS_H_
#define SAMBAY_ENGINE_WEIGHTS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/checkpoint.h"
#include "engine/config.h"
#include "engine/cpu/linear.h"

namespace sambay {

using cpu::WeightView;

struct MambaWeights {
  WeightView in_proj;   // [2 * d_inner, hidden]: rows [0, d_inner) = x, [d_inner, 2 d_inner) = z
  WeightView x_proj;    // [dt_rank + 2 d_state, d_inner]: dt_low | B | C
  WeightView dt_proj;   // [d_inner, dt_rank]
  WeightView out_proj;  // [hidden, d_inner]
  std::vector<float> conv_w;   // [d_inner, d_conv]; conv_w[c * K + K-1] multiplies the current x
  std::vector<float> conv_b;   // [d_inner]
  std::vector<float> dt_bias;  // [d_inner]
  std::vector<float> A;        // [d_inner, d_state] = -exp(A_log)
  std::vector<float> D;        // [d_inner]
};

struct AttentionWeights {
  WeightView wqkv;               // [q_dim + 2 kv_dim, hidden] (cross layers: [q_dim, hidden])
  std::vector<float> wqkv_bias;  // matching rows
  WeightView out_proj;           // [hidden, q_dim]
  std::vector<float> out_bias;   // [hidden]
  std::vector<float> subln;      // [2 * head_dim]
  float lambda = 0;              // exp(q1.k1) - exp(q2.k2) + lambda_init
  float lambda_init = 0;
};

struct GmuWeights {
  WeightView in_proj;   // [d_inner, hidden]
  WeightView out_proj;  // [hidden, d_inner]
};

struct LayerWeights {
  LayerKind kind = LayerKind::kMamba;
  std::vector<float> ln1_w, ln1_b, ln2_w, ln2_b;  // [hidden] each
  WeightView fc1;         // [2 * intermediate, hidden]: gate rows then up rows
  WeightView fc2;         // [hidden, intermediate]
  MambaWeights mamba;     // kMamba
  AttentionWeights attn;  // kSwa, kGlobal, kCross
  GmuWeights gmu;         // kGmu
};

struct LoadReport {
  std::vector<std::string> unknown_tensors;  // in the files, not used by the model
  std::vector<std::string> warnings;
  std::string weights_dtype;  // "F32", "BF16", "F16" or "mixed"
};

struct ModelWeights {
  std::unique_ptr<Checkpoint> checkpoint;  // null for a TP rank's shard (engine/tp/tp_weights.h)
  // Storage of matrices copied at load (a TP rank's column slices); views may point here.
  std::vector<std::unique_ptr<unsigned char[]>> owned;
  WeightView embed;    // [vocab, hidden]
  WeightView lm_head;  // == embed when tied
  std::vector<float> final_w, final_b;
  std::vector<LayerWeights> layers;
  int64_t matrix_bytes = 0;  // bytes of all matrices read by one forward pass (embedding once)
};

// Binds and validates every tensor the config requires (docs/model-spec.md "Checkpoint
// tensors"). Missing tensor: NotFound
// naming it and its expected shape; wrong shape: InvalidArgument naming the tensor and both
// shapes. Tensors the model does not use are listed in report->unknown_tensors.
absl::StatusOr<ModelWeights> BindWeights(const ModelConfig& config,
                                         std::unique_ptr<Checkpoint> checkpoint,
                                         LoadReport* report);

// The name and shape of every tensor a checkpoint of `config` holds (lm_head excluded when
// tied), in checkpoint order. Used by the loader and by sambay-mkmodel.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config);

}  // namespace sambay

#endif  // SAMBAY_ENGINE_WEIGHTS_H_
