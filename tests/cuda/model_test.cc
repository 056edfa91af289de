// CudaModel against the CPU Model on random checkpoints (tiny and mid-size, bf16 weights):
// prefill and batched decode logits within the bf16 tolerances against the fp32 CPU engine and
// against the CPU engine rounding at the GPU's bf16 points (cuda_model_util.h; the figures are
// printed and recorded as test properties), scoring all positions, greedy generation equivalence,
// slot management. Every test skips without a CUDA device.
#include "engine/model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "engine/cpu/precision.h"
#include "engine/cuda/cuda_model.h"
#include "tests/cuda/cuda_model_util.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/engine/test_util.h"
#include "tools/model_maker.h"

namespace sambay::cuda {
namespace {

using testing::kEmulatedTol;
using testing::kLogitsTol;
using testing::kTieFactor;
using testing::Make;
using testing::MidConfig;
using testing::Models;

using sambay::testing::RandomIds;
using sambay::testing::TempDir;

ModelConfig TinyConfig() { return *PresetConfig("tiny"); }

double RowErr(const std::vector<float>& a, const std::vector<float>& b, size_t row, size_t vocab) {
  return sambay::testing::RelErr(a.data() + row * vocab, b.data() + row * vocab,
                                 static_cast<int64_t>(vocab));
}

int32_t Argmax(const float* x, int64_t n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

// The worst logits relative error of the GPU against each CPU reference.
struct Errs {
  double f32 = 0;  // the fp32 CPU engine
  double emu = 0;  // the CPU engine rounding at the GPU's bf16 points (ScopedBf16Activations)
};

// One CPU reference: its states and its logits of the last call.
struct CpuRef {
  bool emulate = false;
  std::vector<std::unique_ptr<SequenceState>> states;
  std::vector<float> logits;
};

// Prefills sequences of the given prompt lengths on the GPU and both CPU references, then runs
// `steps` batched decode steps feeding all three the fp32 CPU's greedy tokens; returns the worst
// logits relative errors.
Errs PrefillAndDecode(Models& m, const std::vector<int64_t>& prompt_lens, int steps,
                      int64_t cpu_chunk) {
  const int64_t V = m.cpu->config().vocab_size;
  Errs worst;
  CpuRef refs[2];
  refs[1].emulate = true;
  std::vector<int> slots;
  std::vector<int32_t> next;
  auto compare = [&](const std::vector<float>& gl, size_t rows, const char* what) {
    double e[2] = {0, 0};
    for (size_t r = 0; r < rows; ++r) {
      for (int k = 0; k < 2; ++k) e[k] = std::max(e[k], RowErr(gl, refs[k].logits, r, V));
    }
    std::printf("  %s: logits rel err vs fp32 CPU %.3g, vs bf16-emulating CPU %.3g\n", what, e[0],
                e[1]);
    worst.f32 = std::max(worst.f32, e[0]);
    worst.emu = std::max(worst.emu, e[1]);
  };
  for (size_t i = 0; i < prompt_lens.size(); ++i) {
    const std::vector<int32_t> prompt = RandomIds(prompt_lens[i], V, 100 + i);
    for (CpuRef& ref : refs) {
      cpu::ScopedBf16Activations precision(ref.emulate);
      ref.states.push_back(m.cpu->NewState());
      EXPECT_TRUE(m.cpu->Prefill(*ref.states.back(), prompt, cpu_chunk, &ref.logits).ok());
    }
    std::vector<float> gl;
    auto slot = m.gpu->AllocSlot();
    EXPECT_TRUE(slot.ok()) << slot.status();
    if (!slot.ok()) return {INFINITY, INFINITY};
    slots.push_back(*slot);
    absl::Status st = m.gpu->Prefill(*slot, prompt, &gl);
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return {INFINITY, INFINITY};
    compare(gl, 1, ("prefill " + std::to_string(prompt_lens[i]) + " tokens").c_str());
    next.push_back(Argmax(refs[0].logits.data(), V));
  }
  for (int step = 0; step < steps; ++step) {
    for (CpuRef& ref : refs) {
      cpu::ScopedBf16Activations precision(ref.emulate);
      std::vector<SequenceState*> ptrs;
      for (auto& st : ref.states) ptrs.push_back(st.get());
      EXPECT_TRUE(m.cpu->DecodeStep(ptrs, next, &ref.logits).ok());
    }
    std::vector<float> gl;
    absl::Status st = m.gpu->DecodeStep(slots, next, &gl);
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return {INFINITY, INFINITY};
    compare(
        gl, slots.size(),
        ("decode step " + std::to_string(step) + " (batch " + std::to_string(slots.size()) + ")")
            .c_str());
    for (size_t r = 0; r < slots.size(); ++r) next[r] = Argmax(refs[0].logits.data() + r * V, V);
  }
  for (int s : slots) EXPECT_TRUE(m.gpu->FreeSlot(s).ok());
  return worst;
}

// Prints, records and checks a model test's errors against both tolerances (times `scale`).
void ExpectWithin(const char* what, const Errs& e, double scale = 1) {
  std::printf(
      "%s: worst logits rel err %.4g vs fp32 CPU (tolerance %.3g), %.4g vs "
      "bf16-emulating CPU (tolerance %.3g)\n",
      what, e.f32, scale * kLogitsTol, e.emu, scale * kEmulatedTol);
  ::testing::Test::RecordProperty(std::string(what) + "_worst_logits_rel_err_f32",
                                  std::to_string(e.f32));
  ::testing::Test::RecordProperty(std::string(what) + "_worst_logits_rel_err_emulated",
                                  std::to_string(e.emu));
  EXPECT_LT(e.f32, scale * kLogitsTol) << what;
  EXPECT_LT(e.emu, scale * kEmulatedTol) << what;
}

TEST(CudaModelTest, TinyLogitsMatchCpu) {
  SAMBAY_REQUIRE_GPU();
  CudaModelOptions o;
  o.max_slots = 4;
  o.max_context = 256;
  o.block_tokens = 16;
  o.max_chunk = 24;  // several chunks per prompt, some longer than the window (16)
  auto m = Make(TinyConfig(), 7, o);
  ASSERT_NE(m, nullptr);
  ExpectWithin("tiny", PrefillAndDecode(*m, {61, 17, 5, 1}, 12, 0));
}

TEST(CudaModelTest, MidSizeLogitsMatchCpu) {
  SAMBAY_REQUIRE_GPU();
  CudaModelOptions o;
  o.max_slots = 3;
  o.max_context = 600;
  o.block_tokens = 32;
  o.max_chunk = 128;
  auto m = Make(MidConfig(), 8, o);
  ASSERT_NE(m, nullptr);
  ExpectWithin("mid", PrefillAndDecode(*m, {300, 77, 2}, 8, 100));
}

TEST(CudaModelTest, Bf16SsmStateStaysClose) {
  SAMBAY_REQUIRE_GPU();
  CudaModelOptions o;
  o.max_slots = 2;
  o.max_context = 256;
  o.block_tokens = 16;
  o.max_chunk = 64;
  o.ssm_state_bf16 = true;
  auto m = Make(TinyConfig(), 9, o);
  ASSERT_NE(m, nullptr);
  // The CPU references keep the SSM state in fp32: twice the tolerances.
  ExpectWithin("tiny_bf16_ssm", PrefillAndDecode(*m, {45, 9}, 10, 0), 2);
}

TEST(CudaModelTest, ScoreAllPositionsMatchesCpu) {
  SAMBAY_REQUIRE_GPU();
  CudaModelOptions o;
  o.max_slots = 2;
  o.max_context = 128;
  o.block_tokens = 16;
  o.max_chunk = 64;
  o.max_logits_rows = 64;
  auto m = Make(TinyConfig(), 10, o);
  ASSERT_NE(m, nullptr);
  const int64_t V = m->cpu->config().vocab_size;
  const std::vector<int32_t> ids = RandomIds(40, V, 5);
  std::vector<float> cl[2], gl;
  for (int k = 0; k < 2; ++k) {
    cpu::ScopedBf16Activations precision(k == 1);
    auto state = m->cpu->NewState();
    ASSERT_TRUE(m->cpu->Score(*state, ids, &cl[k]).ok());
  }
  auto slot = m->gpu->AllocSlot();
  ASSERT_TRUE(slot.ok());
  CudaSegment seg{*slot, ids, LogitsMode::kAll};
  absl::Status st = m->gpu->Forward({&seg, 1}, &gl);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(gl.size(), cl[0].size());
  Errs worst;
  for (size_t r = 0; r < ids.size(); ++r) {
    worst.f32 = std::max(worst.f32, RowErr(gl, cl[0], r, V));
    worst.emu = std::max(worst.emu, RowErr(gl, cl[1], r, V));
  }
  ExpectWithin("score_40_positions", worst);
}

// Greedy generation on the GPU and on the bf16-emulating CPU, each fed its own ids: they must
// agree for all steps, or the first divergence must be a near-tie of the CPU's logits (margin
// below kTieFactor x kEmulatedTol x the row's RMS: within the error the logits may carry).
TEST(CudaModelTest, GreedyGenerationMatchesCpu) {
  SAMBAY_REQUIRE_GPU();
  constexpr int kSteps = 64;
  CudaModelOptions o;
  o.max_slots = 2;
  o.max_context = 512;
  o.block_tokens = 16;
  o.max_chunk = 32;
  auto m = Make(TinyConfig(), 11, o);
  ASSERT_NE(m, nullptr);
  const int64_t V = m->cpu->config().vocab_size;
  const std::vector<int32_t> prompt = RandomIds(50, V, 6);
  cpu::ScopedBf16Activations precision(true);
  auto state = m->cpu->NewState();
  std::vector<float> cl, gl;
  ASSERT_TRUE(m->cpu->Prefill(*state, prompt, 0, &cl).ok());
  auto slot = m->gpu->AllocSlot();
  ASSERT_TRUE(slot.ok());
  ASSERT_TRUE(m->gpu->Prefill(*slot, prompt, &gl).ok());
  std::vector<int32_t> cpu_ids = {Argmax(cl.data(), V)}, gpu_ids = {Argmax(gl.data(), V)};
  std::vector<std::vector<float>> cpu_logits = {cl};
  for (int step = 1; step < kSteps; ++step) {
    SequenceState* sp = state.get();
    ASSERT_TRUE(m->cpu->DecodeStep({&sp, 1}, {&cpu_ids.back(), 1}, &cl).ok());
    cpu_logits.push_back(cl);
    cpu_ids.push_back(Argmax(cl.data(), V));
    std::vector<int32_t> next;
    const int s = *slot;
    absl::Status st = m->gpu->DecodeStepGreedy({&s, 1}, {&gpu_ids.back(), 1}, &next);
    ASSERT_TRUE(st.ok()) << st;
    gpu_ids.push_back(next[0]);
  }
  for (int i = 0; i < kSteps; ++i) {
    if (cpu_ids[i] == gpu_ids[i]) continue;
    const float* row = cpu_logits[i].data();
    const double margin = row[cpu_ids[i]] - row[gpu_ids[i]];
    const double tie = kTieFactor * kEmulatedTol * testing::RowRms(row, V);
    std::printf(
        "greedy: first divergence at step %d of %d: cpu %d, gpu %d, cpu logit margin "
        "%.4g (near-tie below %.4g)\n",
        i, kSteps, cpu_ids[i], gpu_ids[i], margin, tie);
    EXPECT_LT(margin, tie) << "divergence at step " << i << " is not a near-tie";
    return;
  }
  std::printf("greedy: %d of %d steps identical\n", kSteps, kSteps);
}

// Chunked prefill (chunks shorter and longer than the window, decode-sized ones) continues the
// state exactly like one pass over the prompt: last logits and the next decode step agree.
TEST(CudaModelTest, ChunkedPrefillMatchesOneShot) {
  SAMBAY_REQUIRE_GPU();
  CudaModelOptions o;
  o.max_slots = 2;
  o.max_context = 256;
  o.block_tokens = 16;
  o.max_chunk = 128;
  auto m = Make(TinyConfig(), 14, o);
  ASSERT_NE(m, nullptr);
  const int64_t V = m->cpu->config().vocab_size;
  const std::vector<int32_t> prompt = RandomIds(90, V, 40);
  auto a = m->gpu->AllocSlot();
  auto b = m->gpu->AllocSlot();
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<float> la, lb;
  ASSERT_TRUE(m->gpu->Prefill(*a, prompt, &la).ok());
  const absl::Span<const int32_t> all(prompt);
  int64_t pos = 0;
  for (int64_t len : {1, 7, 20, 1, 33, 28}) {  // sums to 90
    CudaSegment seg{*b, all.subspan(pos, len), LogitsMode::kLast};
    lb.clear();
    absl::Status st = m->gpu->Forward({&seg, 1}, &lb);
    ASSERT_TRUE(st.ok()) << st;
    pos += len;
  }
  ASSERT_EQ(pos, 90);
  EXPECT_LT(sambay::testing::RelErr(lb.data(), la.data(), V), 1e-2);
  const std::vector<int> both = {*a, *b};
  const std::vector<int32_t> toks = {9, 9};
  std::vector<float> out;
  ASSERT_TRUE(m->gpu->DecodeStep(both, toks, &out).ok());
  const double e = sambay::testing::RelErr(out.data() + V, out.data(), V);
  std::printf("chunked vs one-shot prefill, next step: logits rel err %.3g\n", e);
  EXPECT_LT(e, 1e-2);
}

// Decode steps replayed from CUDA graphs give the logits of directly enqueued steps (split-K is
// sized differently, so only summation order differs).
TEST(CudaModelTest, CudaGraphDecodeMatchesDirect) {
  SAMBAY_REQUIRE_GPU();
  CudaModelOptions o;
  o.max_slots = 3;
  o.max_context = 256;
  o.block_tokens = 16;
  o.max_chunk = 64;
  auto m = Make(TinyConfig(), 13, o);
  ASSERT_NE(m, nullptr);
  o.cuda_graphs = true;
  auto g = CudaModel::Create(*m->cpu, o);
  ASSERT_TRUE(g.ok()) << g.status();
  const int64_t V = m->cpu->config().vocab_size;
  std::vector<int> slots;
  for (int i = 0; i < 3; ++i) {
    auto a = m->gpu->AllocSlot();
    auto b = (*g)->AllocSlot();
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(*a, *b);
    slots.push_back(*a);
    const std::vector<int32_t> prompt = RandomIds(20 + 7 * i, V, 30 + i);
    std::vector<float> la, lb;
    ASSERT_TRUE(m->gpu->Prefill(*a, prompt, &la).ok());
    ASSERT_TRUE((*g)->Prefill(*b, prompt, &lb).ok());
  }
  std::vector<int32_t> toks = {1, 2, 3};
  for (int step = 0; step < 6; ++step) {
    for (size_t batch : {size_t{3}, size_t{2}}) {  // two graphs, interleaved
      const std::vector<int> bs(slots.begin(), slots.begin() + batch);
      const std::vector<int32_t> ts(toks.begin(), toks.begin() + batch);
      std::vector<float> la, lb;
      ASSERT_TRUE(m->gpu->DecodeStep(bs, ts, &la).ok());
      absl::Status st = (*g)->DecodeStep(bs, ts, &lb);
      ASSERT_TRUE(st.ok()) << st;
      ASSERT_EQ(la.size(), lb.size());
      // The graph fixes split-K for max_context, so attention partials are summed in another
      // order; that moves bf16 roundings of later GEMM inputs: a bf16-aware bound.
      EXPECT_LT(sambay::testing::RelErr(lb.data(), la.data(), static_cast<int64_t>(la.size())),
                1e-2)
          << "step " << step << " batch " << batch;
      for (size_t r = 0; r < batch; ++r) toks[r] = Argmax(la.data() + r * V, V);
    }
  }
}

TEST(CudaModelTest, SlotsBlocksAndCloning) {
  SAMBAY_REQUIRE_GPU();
  CudaModelOptions o;
  o.max_slots = 2;
  o.max_context = 64;
  o.block_tokens = 16;
  o.max_chunk = 64;
  auto m = Make(TinyConfig(), 12, o);
  ASSERT_NE(m, nullptr);
  const int64_t V = m->cpu->config().vocab_size;
  const int64_t blocks0 = m->gpu->free_blocks();
  auto a = m->gpu->AllocSlot();
  auto b = m->gpu->AllocSlot();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(m->gpu->AllocSlot().status().code(), absl::StatusCode::kResourceExhausted);
  const std::vector<int32_t> prompt = RandomIds(37, V, 7);
  std::vector<float> la;
  ASSERT_TRUE(m->gpu->Prefill(*a, prompt, &la).ok());
  EXPECT_EQ(m->gpu->free_blocks(), blocks0 - 3);
  ASSERT_TRUE(m->gpu->CloneSlot(*a, *b).ok());
  EXPECT_EQ(*m->gpu->NumTokens(*b), 37);
  std::vector<float> out;
  const std::vector<int> both = {*a, *b};
  const std::vector<int32_t> toks = {5, 5};
  ASSERT_TRUE(m->gpu->DecodeStep(both, toks, &out).ok());
  EXPECT_LT(sambay::testing::RelErr(out.data() + V, out.data(), V), 1e-6);
  // On-device sampling of the last logits: greedy and top-k = 1 give the argmax.
  SampleParamsHost sp;
  sp.temperature = {0.0f, 0.8f};
  sp.top_k = {0, 1};
  sp.top_p = {1.0f, 0.9f};
  sp.uniform = {0.5f, 0.99f};
  std::vector<int32_t> sampled;
  ASSERT_TRUE(m->gpu->SampleLast(sp, &sampled).ok());
  ASSERT_EQ(sampled.size(), 2u);
  EXPECT_EQ(sampled[0], Argmax(out.data(), V));
  EXPECT_EQ(sampled[1], Argmax(out.data() + V, V));
  // Past max_context: rejected before anything changes.
  std::vector<int32_t> long_prompt = RandomIds(40, V, 8);
  EXPECT_EQ(m->gpu->Prefill(*a, long_prompt, &out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*m->gpu->NumTokens(*a), 38);
  const std::vector<int32_t> bad = {static_cast<int32_t>(V)};
  const int sa = *a;
  EXPECT_EQ(m->gpu->DecodeStep({&sa, 1}, bad, &out).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(m->gpu->FreeSlot(*a).ok());
  ASSERT_TRUE(m->gpu->FreeSlot(*b).ok());
  EXPECT_EQ(m->gpu->free_blocks(), blocks0);
  EXPECT_EQ(m->gpu->FreeSlot(*a).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sambay::cuda
