#include "engine/cpu/precision.h"

#include "engine/dtype.h"

namespace sambay::cpu {
namespace {
thread_local bool t_bf16_activations = false;
}  // namespace

bool Bf16Activations() { return t_bf16_activations; }

void RoundBf16IfEmulating(float* x, int64_t n) {
  if (!t_bf16_activations) return;
  for (int64_t i = 0; i < n; ++i) x[i] = Bf16ToF32(F32ToBf16(x[i]));
}

ScopedBf16Activations::ScopedBf16Activations(bool on) : previous_(t_bf16_activations) {
  t_bf16_activations = on;
}

ScopedBf16Activations::~ScopedBf16Activations() { t_bf16_activations = previous_; }

}  // namespace sambay::cpu
