#include "engine/state.h"

#include <algorithm>

namespace sambay {

void BlockKv::Resize(int64_t n) {
  const int64_t blocks = (n + kKvBlockTokens - 1) / kKvBlockTokens;
  while (num_blocks() < blocks) {
    k_blocks_.emplace_back(new float[kKvBlockTokens * kv_dim_]);
    v_blocks_.emplace_back(new float[kKvBlockTokens * kv_dim_]);
  }
  while (num_blocks() > blocks) {
    k_blocks_.pop_back();
    v_blocks_.pop_back();
  }
  size_ = n;
}

SequenceState::SequenceState(const ModelConfig& c) : global(c.kv_dim()) {
  mamba.resize(c.num_layers);
  swa.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    if (c.layers[i] == LayerKind::kMamba) {
      mamba[i].conv.assign((c.d_conv - 1) * c.d_inner, 0.0f);
      mamba[i].ssm.assign(c.d_inner * c.d_state, 0.0f);
    } else if (c.layers[i] == LayerKind::kSwa) {
      swa[i].k.assign(c.sliding_window * c.kv_dim(), 0.0f);
      swa[i].v.assign(c.sliding_window * c.kv_dim(), 0.0f);
    }
  }
}

SequenceState::SequenceState(const ModelConfig& c, const TpPlan& plan) : global(c.kv_dim()) {
  mamba.resize(c.num_layers);
  swa.resize(c.num_layers);
  if (plan.tp == 1) {
    *this = SequenceState(c);
    return;
  }
  shards.reserve(plan.ranks.size());
  for (const TpRankSlice& r : plan.ranks) shards.emplace_back(r.config);
}

int64_t SequenceState::memory_bytes() const {
  int64_t b = global.allocated_bytes();
  for (const SequenceState& s : shards) b += s.memory_bytes();
  for (const auto& m : mamba) b += static_cast<int64_t>((m.conv.size() + m.ssm.size()) * 4);
  for (const auto& s : swa) b += static_cast<int64_t>((s.k.size() + s.v.size()) * 4);
  return b;
}

void SequenceState::Reset() {
  num_tokens = 0;
  last_token = -1;
  rng_state = {};
  for (auto& m : mamba) {
    std::fill(m.conv.begin(), m.conv.end(), 0.0f);
    std::fill(m.ssm.begin(), m.ssm.end(), 0.0f);
  }
  global.Resize(0);
  for (SequenceState& s : shards) s.Reset();
}

}  // namespace sambay
