// GPU-precision emulation of the CPU engine (engine/cpu/precision.h): with
// ScopedBf16Activations the forward rounds to bf16 where the CUDA backend stores bf16. These
// tests pin what the mode does on the CPU alone (the CUDA tests compare the GPU with it):
// it changes the logits by the bf16 error (neither 0 nor a different model), it is
// deterministic, and it ends with its scope.
#include "engine/cpu/precision.h"

#include <cstdio>
#include <vector>

#include "engine/dtype.h"
#include "gtest/gtest.h"
#include "tests/engine/test_util.h"

namespace sambay {
namespace {

using testing::MakeTiny;
using testing::RandomIds;
using testing::RelErr;

std::vector<float> PrefillLogits(Model& m, const std::vector<int32_t>& ids) {
  auto state = m.NewState();
  std::vector<float> logits;
  EXPECT_TRUE(m.Prefill(*state, ids, 0, &logits).ok());
  return logits;
}

TEST(PrecisionTest, RoundsOnlyInsideItsScope) {
  std::vector<float> x = {1.0f + 1.0f / 1024, 3.14159265f, -2.0f};
  cpu::RoundBf16IfEmulating(x.data(), 3);
  EXPECT_EQ(x[0], 1.0f + 1.0f / 1024);  // off: untouched
  {
    cpu::ScopedBf16Activations on(true);
    EXPECT_TRUE(cpu::Bf16Activations());
    cpu::RoundBf16IfEmulating(x.data(), 3);
    {
      cpu::ScopedBf16Activations off(false);
      EXPECT_FALSE(cpu::Bf16Activations());
    }
    EXPECT_TRUE(cpu::Bf16Activations());
  }
  EXPECT_FALSE(cpu::Bf16Activations());
  EXPECT_EQ(x[0], 1.0f);  // 1 + 2^-10 rounds to even: 1
  EXPECT_EQ(x[1], Bf16ToF32(F32ToBf16(3.14159265f)));
  EXPECT_EQ(x[2], -2.0f);
}

// On a bf16 checkpoint the emulated logits differ from the fp32 forward by the bf16 activation
// error: clearly more than fp32 rounding, clearly less than a different model; repeatable.
TEST(PrecisionTest, EmulatedLogitsCarryTheBf16Error) {
  auto t = MakeTiny(21, DType::kBF16);
  ASSERT_NE(t->model, nullptr);
  const int64_t V = t->model->config().vocab_size;
  const std::vector<int32_t> ids = RandomIds(40, V, 3);
  const std::vector<float> f32 = PrefillLogits(*t->model, ids);
  std::vector<float> emu, again;
  {
    cpu::ScopedBf16Activations on(true);
    emu = PrefillLogits(*t->model, ids);
    again = PrefillLogits(*t->model, ids);
  }
  ASSERT_EQ(emu.size(), static_cast<size_t>(V));
  const double err = RelErr(emu.data(), f32.data(), V);
  std::printf("bf16 activations vs fp32: logits rel err %.4g\n", err);
  EXPECT_GT(err, 1e-4);
  EXPECT_LT(err, 0.2);
  EXPECT_EQ(emu, again);
  // Off again: the fp32 forward is back, bit for bit.
  EXPECT_EQ(PrefillLogits(*t->model, ids), f32);
  // Another model's logits are far: the bound above is meaningful.
  auto other = MakeTiny(22, DType::kBF16);
  ASSERT_NE(other->model, nullptr);
  const std::vector<float> far = PrefillLogits(*other->model, ids);
  EXPECT_GT(RelErr(far.data(), f32.data(), V), 0.5);
}

}  // namespace
}  // namespace sambay
