// CudaModel::DownloadSlot / UploadSlot (the worker's CPU <-> GPU handoff, worker/cuda_backend.h)
// on random tiny/mid bf16 checkpoints: a round trip keeps every tensor to bf16 rounding; a CPU
// prefill uploaded to the GPU decodes like the CPU (logits within the bf16 tolerance of
// model_test.cc, greedy ids compared and reported); a GPU prefill downloaded, exported in the
// wire format and imported decodes on the CPU like a CPU prefill. Skips without a CUDA device.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "engine/cuda/cuda_model.h"
#include "engine/model.h"
#include "engine/state_io.h"
#include "tests/cuda/cuda_model_util.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/engine/test_util.h"
#include "tools/model_maker.h"

namespace sambay::cuda {
namespace {

using testing::kLogitsTol;
using testing::Make;
using testing::MidConfig;
using testing::Models;

using sambay::testing::RandomIds;
using sambay::testing::RelErr;
using sambay::testing::TempDir;

CudaModelOptions Opts(bool ssm_bf16) {
  CudaModelOptions o;
  o.max_slots = 3;
  o.max_context = 640;
  o.block_tokens = 32;  // device blocks differ from the CPU's 256-token blocks on purpose
  o.max_chunk = 128;
  o.ssm_state_bf16 = ssm_bf16;
  return o;
}

int32_t Argmax(const float* x, int64_t n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

// Largest |a - b| / max(|b|, floor) over two tensors (bf16 rounding: about 2^-8).
double WorstRel(const float* a, const float* b, int64_t n) {
  double w = 0;
  for (int64_t i = 0; i < n; ++i) {
    w = std::max(w, std::fabs(double(a[i]) - b[i]) / std::max(std::fabs(double(b[i])), 1e-2));
  }
  return w;
}

void ExpectStatesClose(const ModelConfig& c, const SequenceState& got, const SequenceState& want,
                       bool ssm_bf16) {
  ASSERT_EQ(got.num_tokens, want.num_tokens);
  ASSERT_EQ(got.global.size(), want.num_tokens);
  const double tol = 1.0 / 128;
  for (int i = 0; i < c.num_layers; ++i) {
    if (c.layers[i] == LayerKind::kMamba) {
      const auto& g = got.mamba[i];
      const auto& w = want.mamba[i];
      EXPECT_LT(WorstRel(g.conv.data(), w.conv.data(), (int64_t)w.conv.size()), tol) << i;
      const double ssm = WorstRel(g.ssm.data(), w.ssm.data(), (int64_t)w.ssm.size());
      if (ssm_bf16) {
        EXPECT_LT(ssm, tol) << i;
      } else {
        EXPECT_EQ(ssm, 0.0) << i;
      }
    } else if (c.layers[i] == LayerKind::kSwa) {
      // Live window only: the positions max(0, n - window) .. n - 1.
      const int64_t W = c.sliding_window, kvd = c.kv_dim();
      for (int64_t p = std::max<int64_t>(0, want.num_tokens - W); p < want.num_tokens; ++p) {
        const int64_t off = (p % W) * kvd;
        EXPECT_LT(WorstRel(got.swa[i].k.data() + off, want.swa[i].k.data() + off, kvd), tol);
        EXPECT_LT(WorstRel(got.swa[i].v.data() + off, want.swa[i].v.data() + off, kvd), tol);
      }
    }
  }
  for (int64_t p = 0; p < want.num_tokens; ++p) {
    ASSERT_LT(WorstRel(got.global.k(p), want.global.k(p), c.kv_dim()), tol) << p;
    ASSERT_LT(WorstRel(got.global.v(p), want.global.v(p), c.kv_dim()), tol) << p;
  }
}

void RoundTrip(bool ssm_bf16) {
  auto m = Make(MidConfig(), 21, Opts(ssm_bf16));
  ASSERT_NE(m, nullptr);
  const ModelConfig& c = m->cpu->config();
  const std::vector<int32_t> prompt = RandomIds(300, c.vocab_size, 3);
  auto cpu_state = m->cpu->NewState();
  std::vector<float> logits;
  ASSERT_TRUE(m->cpu->Prefill(*cpu_state, prompt, 100, &logits).ok());
  auto slot = m->gpu->AllocSlot();
  ASSERT_TRUE(slot.ok());
  absl::Status st = m->gpu->UploadSlot(*cpu_state, *slot);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(*m->gpu->NumTokens(*slot), 300);
  auto back = m->cpu->NewState();
  st = m->gpu->DownloadSlot(*slot, back.get());
  ASSERT_TRUE(st.ok()) << st;
  ExpectStatesClose(c, *back, *cpu_state, ssm_bf16);
  EXPECT_TRUE(m->gpu->FreeSlot(*slot).ok());
}

TEST(CudaStateTransferTest, RoundTripKeepsTensors) {
  SAMBAY_REQUIRE_GPU();
  RoundTrip(false);
}

TEST(CudaStateTransferTest, RoundTripKeepsTensorsBf16Ssm) {
  SAMBAY_REQUIRE_GPU();
  RoundTrip(true);
}

TEST(CudaStateTransferTest, UploadRejectsBadStates) {
  SAMBAY_REQUIRE_GPU();
  auto m = Make(*PresetConfig("tiny"), 22, Opts(false));
  ASSERT_NE(m, nullptr);
  auto slot = m->gpu->AllocSlot();
  ASSERT_TRUE(slot.ok());
  SequenceState other(MidConfig());
  EXPECT_EQ(m->gpu->UploadSlot(other, *slot).code(), absl::StatusCode::kInvalidArgument);
  auto s = m->cpu->NewState();
  s->num_tokens = 1000;  // over max_context, and more than the tensors hold
  EXPECT_EQ(m->gpu->UploadSlot(*s, *slot).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->gpu->UploadSlot(*m->cpu->NewState(), 7).code(), absl::StatusCode::kInvalidArgument);
}

// CPU prefill -> upload -> GPU decode vs CPU decode, both fed the CPU's greedy ids.
TEST(CudaStateTransferTest, CpuPrefillDecodesOnGpu) {
  SAMBAY_REQUIRE_GPU();
  auto m = Make(MidConfig(), 23, Opts(false));
  ASSERT_NE(m, nullptr);
  const int64_t V = m->cpu->config().vocab_size;
  const std::vector<int32_t> prompt = RandomIds(290, V, 4);
  auto state = m->cpu->NewState();
  std::vector<float> cl, gl;
  ASSERT_TRUE(m->cpu->Prefill(*state, prompt, 0, &cl).ok());
  auto slot = m->gpu->AllocSlot();
  ASSERT_TRUE(slot.ok());
  ASSERT_TRUE(m->gpu->UploadSlot(*state, *slot).ok());
  int32_t next = Argmax(cl.data(), V);
  double worst = 0;
  int greedy_equal = 0;
  const int kSteps = 16;
  for (int step = 0; step < kSteps; ++step) {
    SequenceState* p = state.get();
    ASSERT_TRUE(m->cpu->DecodeStep({&p, 1}, {&next, 1}, &cl).ok());
    absl::Status st = m->gpu->DecodeStep({&*slot, 1}, {&next, 1}, &gl);
    ASSERT_TRUE(st.ok()) << st;
    worst = std::max(worst, RelErr(gl.data(), cl.data(), V));
    greedy_equal += Argmax(gl.data(), V) == Argmax(cl.data(), V);
    next = Argmax(cl.data(), V);
  }
  std::printf("CPU prefill -> GPU decode: worst logits rel err %.4g, greedy ids equal %d/%d\n",
              worst, greedy_equal, kSteps);
  RecordProperty("cpu_to_gpu_worst_logits_rel_err", std::to_string(worst));
  EXPECT_LT(worst, kLogitsTol);
}

// GPU prefill -> download -> wire format -> CPU import -> CPU decode vs a CPU prefill's decode.
TEST(CudaStateTransferTest, GpuPrefillDecodesOnCpu) {
  SAMBAY_REQUIRE_GPU();
  auto m = Make(MidConfig(), 24, Opts(false));
  ASSERT_NE(m, nullptr);
  const ModelConfig& c = m->cpu->config();
  const int64_t V = c.vocab_size;
  const std::vector<int32_t> prompt = RandomIds(310, V, 5);
  auto slot = m->gpu->AllocSlot();
  ASSERT_TRUE(slot.ok());
  std::vector<float> gl, cl;
  ASSERT_TRUE(m->gpu->Prefill(*slot, prompt, &gl).ok());
  auto staged = m->cpu->NewState();
  ASSERT_TRUE(m->gpu->DownloadSlot(*slot, staged.get()).ok());
  staged->last_token = Argmax(gl.data(), V);
  auto chunks = ExportState(c, m->cpu->fingerprint(), *staged, 1 << 16);
  ASSERT_TRUE(chunks.ok()) << chunks.status();
  auto imported = ImportState(c, m->cpu->fingerprint(), *chunks);
  ASSERT_TRUE(imported.ok()) << imported.status();
  auto ref = m->cpu->NewState();
  ASSERT_TRUE(m->cpu->Prefill(*ref, prompt, 0, &cl).ok());
  int32_t next = Argmax(cl.data(), V);
  double worst = 0;
  int greedy_equal = 0;
  const int kSteps = 16;
  std::vector<float> rl, il;
  for (int step = 0; step < kSteps; ++step) {
    SequenceState* a = ref.get();
    SequenceState* b = imported->get();
    ASSERT_TRUE(m->cpu->DecodeStep({&a, 1}, {&next, 1}, &rl).ok());
    ASSERT_TRUE(m->cpu->DecodeStep({&b, 1}, {&next, 1}, &il).ok());
    worst = std::max(worst, RelErr(il.data(), rl.data(), V));
    greedy_equal += Argmax(il.data(), V) == Argmax(rl.data(), V);
    next = Argmax(rl.data(), V);
  }
  std::printf("GPU prefill -> CPU decode: worst logits rel err %.4g, greedy ids equal %d/%d\n",
              worst, greedy_equal, kSteps);
  RecordProperty("gpu_to_cpu_worst_logits_rel_err", std::to_string(worst));
  EXPECT_LT(worst, kLogitsTol);
}

}  // namespace
}  // namespace sambay::cuda
