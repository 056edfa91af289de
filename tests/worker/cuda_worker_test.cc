// sambay-worker --device cuda (worker/cuda_backend.h): prefill on the GPU handing off to a CPU
// decode worker and the reverse, and a colocated GPU worker, compared with sambay-run (CPU).
// The GPU runs bf16 weights and state, so exact equality is not promised: the greedy ids must
// equal sambay-run's, or the first divergence must be at a near-tie of the CPU model's logits
// (margin below kTieFactor x kLogitsTol x the row's RMS: the rule and the fp32 tolerance of
// tests/cuda/cuda_model_util.h, docs/gpu.md "Precision"). These tests skip without a GPU (and in
// builds without CUDA). Plus, on any machine without a GPU: --device cuda fails at start with exit
// code 1 and one clear error.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "tests/worker/process.h"
#include "tests/worker/worker_harness.h"
#include "worker/gpu_plugin.h"

namespace sambay::testing {
namespace {

constexpr double kLogitsTol = 6e-2;  // tests/cuda/cuda_model_util.h: GPU vs the fp32 CPU
constexpr double kTieFactor = 4;

// Devices the CUDA plugin sees (0 without the plugin: a build without CUDA).
int GpuCount() {
  auto plugin = LoadGpuPlugin();
  return plugin.ok() ? (*plugin)->device_count() : 0;
}

bool HaveGpu() { return GpuCount() > 0; }

struct Margin {
  double margin = 0;  // logit of ref[i] minus logit of `other`
  double rms = 0;     // RMS of that logits row
};

// The CPU model's logit margin at step `i` of the greedy continuation `ref` of `prompt` (how
// close the two candidates were), with the row's RMS for scale.
absl::StatusOr<Margin> CpuMargin(const std::vector<uint32_t>& prompt,
                                 const std::vector<uint32_t>& ref, size_t i, uint32_t other) {
  std::unique_ptr<Model> model;
  SAMBAY_ASSIGN_OR_RETURN(model, Model::Load(TinyModelDir(), ModelOptions()));
  std::vector<int32_t> ids(prompt.begin(), prompt.end());
  ids.insert(ids.end(), ref.begin(), ref.begin() + static_cast<std::ptrdiff_t>(i));
  auto state = model->NewState();
  std::vector<float> logits;
  SAMBAY_RETURN_IF_ERROR(model->Prefill(*state, ids, 0, &logits));
  const int64_t V = model->config().vocab_size;
  if (static_cast<int64_t>(logits.size()) < V || ref[i] >= V || other >= V) {
    return absl::InternalError("CpuMargin: logits or ids out of range");
  }
  const float* last = logits.data() + logits.size() - V;
  Margin m;
  m.margin = last[ref[i]] - last[other];
  for (int64_t k = 0; k < V; ++k) m.rms += static_cast<double>(last[k]) * last[k];
  m.rms = std::sqrt(m.rms / static_cast<double>(V));
  return m;
}

size_t CommonPrefix(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

// The plugin beside the binaries loads in a CUDA build (on any machine: no GPU is needed to map
// it) and is explained away otherwise.
TEST(CudaWorkerTest, PluginLoadsInCudaBuilds) {
  auto plugin = LoadGpuPlugin();
#ifdef SAMBAY_HAVE_CUDA
  ASSERT_TRUE(plugin.ok()) << plugin.status();
  EXPECT_EQ((*plugin)->abi, kGpuPluginAbi);
  EXPECT_GE((*plugin)->device_count(), 0);
#else
  ASSERT_FALSE(plugin.ok());
  EXPECT_EQ(plugin.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(plugin.status().message().find("built without the CUDA backend"), std::string::npos)
      << plugin.status();
#endif
}

TEST(CudaWorkerTest, MissingPluginExitsWithOne) {
  ScratchDir dir;
  auto s = ServerProcess::Start(
      BinDir() + "/sambay-worker",
      {"--model", TinyModelDir(), "--device", "cuda", "--port", "0", "--metrics-port", "0"},
      dir.path(), "noplugin", absl::Seconds(20), {"SAMBAY_CUDA_PLUGIN=/nonexistent/plugin.so"});
  ASSERT_FALSE(s.ok()) << "the worker started";
  const std::string msg(s.status().message());
  EXPECT_NE(msg.find("exited with code 1"), std::string::npos) << msg;
#ifdef SAMBAY_HAVE_CUDA
  EXPECT_NE(msg.find("cannot load the CUDA plugin /nonexistent/plugin.so"), std::string::npos)
      << msg;
#else
  EXPECT_NE(msg.find("built without the CUDA backend"), std::string::npos) << msg;
#endif
}

TEST(CudaWorkerTest, DeviceCudaWithoutGpuExitsWithOne) {
  if (HaveGpu()) GTEST_SKIP() << "a CUDA device is present";
  ScratchDir dir;
  auto s = ServerProcess::Start(
      BinDir() + "/sambay-worker",
      {"--model", TinyModelDir(), "--device", "cuda", "--port", "0", "--metrics-port", "0"},
      dir.path(), "nogpu", absl::Seconds(20));
  ASSERT_FALSE(s.ok()) << "the worker started";
  const std::string msg(s.status().message());
  EXPECT_NE(msg.find("exited with code 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--device cuda"), std::string::npos) << msg;
  // Also from the environment, and a bad value is a flag error (exit 2).
  auto e = ServerProcess::Start(BinDir() + "/sambay-worker",
                                {"--model", TinyModelDir(), "--port", "0", "--metrics-port", "0"},
                                dir.path(), "nogpu-env", absl::Seconds(20), {"SAMBAY_DEVICE=cuda"});
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("exited with code 1"), std::string::npos) << e.status();
  auto bad = ServerProcess::Start(
      BinDir() + "/sambay-worker",
      {"--model", TinyModelDir(), "--device", "tpu", "--port", "0", "--metrics-port", "0"},
      dir.path(), "baddev", absl::Seconds(20));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("exited with code 2"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("--device"), std::string::npos) << bad.status();
}

class CudaWorkerGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU worker tests run on a GPU machine";
  }
  // Runs a few greedy prompts (shorter and longer than the window) through the flow `gen`.
  template <typename Gen>
  void Compare(const char* what, Gen gen) {
    for (size_t len : {5, 40, 300}) {
      GenerateSpec spec;
      spec.prompt = PromptIds(len, 1000 + len);
      spec.max_new_tokens = 16;
      spec.timeout = absl::Seconds(120);
      auto ref =
          ReferenceGenerate(spec.prompt, spec.sampling, spec.max_new_tokens, {}, dir_.path());
      ASSERT_TRUE(ref.ok()) << ref.status();
      GenerateResult got = gen(spec);
      ASSERT_TRUE(got.status.ok()) << got.Describe();
      const size_t common = CommonPrefix(got.tokens, *ref);
      std::printf("%s, prompt %zu: %zu of %zu greedy ids equal to sambay-run\n", what, len, common,
                  ref->size());
      if (common == ref->size()) continue;
      ASSERT_LT(common, got.tokens.size()) << what << ": the GPU stopped early";
      auto margin = CpuMargin(spec.prompt, *ref, common, got.tokens[common]);
      ASSERT_TRUE(margin.ok()) << margin.status();
      const double tie = kTieFactor * kLogitsTol * margin->rms;
      std::printf(
          "%s, prompt %zu: first divergence at %zu, CPU logit margin %.4g (near-tie below "
          "%.4g)\n",
          what, len, common, margin->margin, tie);
      EXPECT_LT(margin->margin, tie)
          << what << " prompt " << len << ": divergence at " << common << " is not a near-tie: got "
          << JoinIds(got.tokens) << " want " << JoinIds(*ref);
    }
  }
  ScratchDir dir_;
};

TEST_F(CudaWorkerGpuTest, GpuPrefillCpuDecode) {
  auto p = Worker::Start("prefill", {"--device", "cuda", "--max-running", "4"}, dir_.path(), "gp");
  ASSERT_TRUE(p.ok()) << p.status();
  auto d = Worker::Start("decode", {"--max-running", "4"}, dir_.path(), "cd");
  ASSERT_TRUE(d.ok()) << d.status();
  auto info = (*p)->GetInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->max_running(), 4u);
  Compare("GPU prefill -> CPU decode",
          [&](const GenerateSpec& s) { return DisaggregatedGenerate(**p, **d, s); });
}

TEST_F(CudaWorkerGpuTest, CpuPrefillGpuDecode) {
  auto p = Worker::Start("prefill", {"--max-running", "4"}, dir_.path(), "cp");
  ASSERT_TRUE(p.ok()) << p.status();
  auto d = Worker::Start("decode", {"--device", "cuda", "--max-running", "4"}, dir_.path(), "gd");
  ASSERT_TRUE(d.ok()) << d.status();
  Compare("CPU prefill -> GPU decode",
          [&](const GenerateSpec& s) { return DisaggregatedGenerate(**p, **d, s); });
}

TEST_F(CudaWorkerGpuTest, GpuColocated) {
  auto b = Worker::Start("both", {"--device", "cuda", "--max-running", "4"}, dir_.path(), "gb");
  ASSERT_TRUE(b.ok()) << b.status();
  Compare("GPU colocated", [&](const GenerateSpec& s) { return LocalGenerate(**b, s); });
  auto load = (*b)->GetLoad();
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->running(), 0u);
}

TEST_F(CudaWorkerGpuTest, GpuColocatedWithCudaGraphs) {
  auto b = Worker::Start("both", {"--device", "cuda", "--cuda-graphs", "--max-running", "4"},
                         dir_.path(), "gg");
  ASSERT_TRUE(b.ok()) << b.status();
  Compare("GPU colocated, CUDA graphs",
          [&](const GenerateSpec& s) { return LocalGenerate(**b, s); });
}

// --tp with --device cuda takes GPUs --gpu .. --gpu+tp-1: more than exist is a start error.
TEST_F(CudaWorkerGpuTest, TpBeyondTheDevicesExitsWithOne) {
  const std::string tp = std::to_string(GpuCount() + 1);
  auto s = ServerProcess::Start(BinDir() + "/sambay-worker",
                                {"--model", TinyModelDir(), "--device", "cuda", "--tp", tp,
                                 "--port", "0", "--metrics-port", "0"},
                                dir_.path(), "tp-too-many", absl::Seconds(20));
  ASSERT_FALSE(s.ok()) << "the worker started";
  const std::string msg(s.status().message());
  EXPECT_NE(msg.find("exited with code 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--tp " + tp), std::string::npos) << msg;
}

}  // namespace
}  // namespace sambay::testing
