// SequenceState: everything a sequence carries between forward passes (docs/model-spec.md
// "Decode-time state per sequence", docs/design.md "State wire format").
//
//   Mamba layers:  conv state (the last d_conv-1 pre-conv x vectors) and SSM state h, fp32.
//   SWA layers:    K/V ring of the last `sliding_window` tokens (slot = position % window).
//   Global layer:  K/V of every token, in fixed-size blocks of kKvBlockTokens tokens, so a later
//                  paged allocator can hand out blocks (the block list is the block table).
//   Cross/GMU layers keep nothing.
// Plus the sampler's position: last sampled token and RNG state, exported with the tensors.
//
// Tensor parallelism (engine/tp/tp_plan.h): the state of a TP=N model is sharded like its weights.
// Its per-layer tensors are then empty and shards[r] holds rank r's slice of every tensor, as a
// SequenceState of rank r's shard config (its d_inner channels, its KV heads). Export gathers
// the shards into logical tensors and import scatters them (engine/state_io.h), so the wire
// format does not depend on the TP size.
//
// Ownership: value-like, owns all its buffers (moveable, not copyable).
// Thread-safety: none; a state is used by one forward pass at a time.
#ifndef SAMBAY_ENGINE_STATE_H_
#define SAMBAY_ENGINE_STATE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/config.h"
#include "engine/tp/tp_plan.h"

namespace sambay {

inline constexpr int64_t kKvBlockTokens = 256;

struct MambaLayerState {
  std::vector<float> conv;  // [d_conv - 1, d_inner], row 0 oldest; zero before any token
  std::vector<float> ssm;   // [d_inner, d_state]
};

struct RingKv {
  std::vector<float> k,
      v;  // [window, kv_dim]; slot s holds the token at position p with p % window == s
};

class BlockKv {
 public:
  explicit BlockKv(int64_t kv_dim = 0) : kv_dim_(kv_dim) {}
  int64_t size() const { return size_; }
  int64_t kv_dim() const { return kv_dim_; }
  // REQUIRES: pos < size().
  float* k(int64_t pos) { return k_blocks_[pos / kKvBlockTokens].get() + Offset(pos); }
  float* v(int64_t pos) { return v_blocks_[pos / kKvBlockTokens].get() + Offset(pos); }
  const float* k(int64_t pos) const { return k_blocks_[pos / kKvBlockTokens].get() + Offset(pos); }
  const float* v(int64_t pos) const { return v_blocks_[pos / kKvBlockTokens].get() + Offset(pos); }
  // Grows to n tokens (new rows uninitialized), allocating blocks as needed.
  void Resize(int64_t n);
  int64_t num_blocks() const { return static_cast<int64_t>(k_blocks_.size()); }
  int64_t allocated_bytes() const { return num_blocks() * kKvBlockTokens * kv_dim_ * 8; }

 private:
  int64_t Offset(int64_t pos) const { return (pos % kKvBlockTokens) * kv_dim_; }
  int64_t kv_dim_;
  int64_t size_ = 0;
  std::vector<std::unique_ptr<float[]>> k_blocks_, v_blocks_;
};

class SequenceState {
 public:
  // A logical (unsharded) state, as used by TP=1 models.
  explicit SequenceState(const ModelConfig& config);
  // A state for a model split by `plan`: one shard per rank and no logical buffers (a logical
  // state when plan.tp == 1).
  SequenceState(const ModelConfig& config, const TpPlan& plan);
  SequenceState(SequenceState&&) = default;
  SequenceState& operator=(SequenceState&&) = default;

  // Tokens consumed by the model so far (the position of the next token).
  int64_t num_tokens = 0;
  // Last sampled token (not yet consumed), or -1.
  int32_t last_token = -1;
  std::array<uint64_t, 4> rng_state{};

  // Indexed by layer; only entries of the matching kind are non-empty.
  std::vector<MambaLayerState> mamba;
  std::vector<RingKv> swa;
  BlockKv global;

  // Empty for a logical state; else one state per TP rank (see above). The fields above
  // (num_tokens, last_token, rng_state) are authoritative; each shard's num_tokens follows
  // num_tokens, its last_token and rng_state are unused.
  std::vector<SequenceState> shards;
  // 1 for a logical state, else the number of shards.
  int tp_size() const { return shards.empty() ? 1 : static_cast<int>(shards.size()); }

  // Opaque resource of a non-CPU backend holding this sequence's tensors (e.g. a CUDA state
  // slot, engine/backend.h), released with the state; null on the CPU path. The tensors
  // above are then only a staging copy, filled on export. Not part of the wire format.
  std::shared_ptr<void> device;

  // Bytes held now (allocated buffers, shards included).
  int64_t memory_bytes() const;

  // Returns the state to "no tokens consumed" (buffers kept, zeroed where it matters).
  void Reset();
};

}  // namespace sambay

#endif  // SAMBAY_ENGINE_STATE_H_
