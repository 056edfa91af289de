// Test support for the CUDA model tests: a random bf16 checkpoint loaded both as the CPU Model
// and as a CudaModel, the mid-size test config, and the CPU-vs-GPU logits tolerance.
//
// Ownership: Models owns its scratch directory and both models.
// Thread-safety: none (one test thread).
#ifndef SAMBAY_TESTS_CUDA_CUDA_MODEL_UTIL_H_
#define SAMBAY_TESTS_CUDA_CUDA_MODEL_UTIL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "engine/cuda/cuda_model.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "tests/engine/test_util.h"
#include "tools/model_maker.h"

namespace sambay::cuda::testing {

// Logits relative error CPU vs GPU allowed on these random bf16 models (activations rounded
// to bf16 at every GEMM input on the GPU, fp32 on the CPU).
inline constexpr double kLogitsTol = 3e-2;

struct Models {
  sambay::testing::TempDir dir;
  std::unique_ptr<Model> cpu;
  std::unique_ptr<CudaModel> gpu;
};

inline ModelConfig MidConfig() {
  ModelConfig c = *PresetConfig("tiny");
  c.vocab_size = 1500;
  c.hidden_size = 384;
  c.intermediate_size = 1000;
  c.num_layers = 8;
  c.num_heads = 8;
  c.num_kv_heads = 4;  // head_dim 48
  c.sliding_window = 40;
  c.dt_rank = 24;
  return c;
}

// A random bf16 checkpoint of config `c` written to `dir` and loaded on the CPU (tp = 1); null
// (with the test failed) on error.
inline std::unique_ptr<Model> MakeCpuModel(const std::string& dir, const ModelConfig& c,
                                           uint64_t seed) {
  MakeModelOptions mo;
  mo.seed = seed;
  mo.dtype = DType::kBF16;
  absl::Status st = MakeModel(dir, c, mo);
  EXPECT_TRUE(st.ok()) << st;
  ModelOptions opt;
  opt.num_threads = 2;
  auto cpu = Model::Load(dir, opt);
  EXPECT_TRUE(cpu.ok()) << cpu.status();
  return cpu.ok() ? std::move(*cpu) : nullptr;
}

// The checkpoint of MakeCpuModel, also uploaded with options `o`; null (with the test failed)
// when either step fails.
inline std::unique_ptr<Models> Make(const ModelConfig& c, uint64_t seed,
                                    const CudaModelOptions& o) {
  auto m = std::make_unique<Models>();
  m->cpu = MakeCpuModel(m->dir.path(), c, seed);
  if (m->cpu == nullptr) return nullptr;
  auto gpu = CudaModel::Create(*m->cpu, o);
  EXPECT_TRUE(gpu.ok()) << gpu.status();
  if (!gpu.ok()) return nullptr;
  m->gpu = std::move(*gpu);
  return m;
}

}  // namespace sambay::cuda::testing

#endif  // SAMBAY_TESTS_CUDA_CUDA_MODEL_UTIL_H_
