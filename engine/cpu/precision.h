// GPU-precision emulation for the CPU engine: while a ScopedBf16Activations is alive on a
// thread, the CPU forward rounds to bf16 every tensor the CUDA backend stores in bf16
// (docs/gpu.md "Precision"): the input of every Linear, the LayerNorm input, and the outputs the
// GPU writes as bf16 (Mamba in_proj, the conv output that the scan also reads, x_proj, the
// scan's memory output, attention QKV after the bias, MLP fc1, GMU in_proj). Accumulation,
// statistics, the residual stream, the SSM state and the logits stay fp32, as on the GPU. Off by
// default: the CPU engine is the fp32 reference. It exists so the CUDA tests can compare the GPU
// with a CPU run at the same rounding points (a tight bound) as well as with the fp32 model (the
// bf16 error itself).
//
// Thread-safety: the flag is thread-local and read on the thread that calls the forward (before
// any pool work), so a scope covers exactly the calls made on its own thread; CPU tensor
// parallelism's rank threads do not see it.
#ifndef SAMBAY_ENGINE_CPU_PRECISION_H_
#define SAMBAY_ENGINE_CPU_PRECISION_H_

#include <cstdint>

namespace sambay::cpu {

// True while a ScopedBf16Activations(true) is alive on this thread.
bool Bf16Activations();

// Rounds x[0..n) to bf16 (round to nearest even) in place when Bf16Activations(); else nothing.
void RoundBf16IfEmulating(float* x, int64_t n);

class ScopedBf16Activations {
 public:
  explicit ScopedBf16Activations(bool on);
  ~ScopedBf16Activations();
  ScopedBf16Activations(const ScopedBf16Activations&) = delete;
  ScopedBf16Activations& operator=(const ScopedBf16Activations&) = delete;

 private:
  bool previous_;
};

}  // namespace sambay::cpu

#endif  // SAMBAY_ENGINE_CPU_PRECISION_H_
