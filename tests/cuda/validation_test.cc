// Host-side validation of the CUDA ops, CudaModel and NcclCommunicator: bad arguments are
// rejected with InvalidArgument naming them before anything is launched. These tests need no
// GPU (nothing reaches the device), so they run in CI too; the GPU-only parts skip.
#include <string>
#include <vector>

#include "engine/cuda/cuda_model.h"
#include "engine/cuda/ops.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/engine/test_util.h"
#if defined(SAMBAY_HAVE_NCCL)
#include "engine/tp/nccl_communicator.h"
#endif

namespace sambay::cuda {
namespace {

bool Mentions(const absl::Status& s, const std::string& what) {
  return s.code() == absl::StatusCode::kInvalidArgument &&
         std::string(s.message()).find(what) != std::string::npos;
}

// Non-null stand-ins for device pointers: validation fails before any of them is used.
template <typename T>
T* Fake() {
  alignas(256) static unsigned char storage[256];
  return reinterpret_cast<T*>(storage);
}

TEST(CudaValidationTest, NullsAndSizesAreNamed) {
  absl::Status s =
      LayerNorm(nullptr, nullptr, 2, 8, Fake<float>(), Fake<float>(), 1e-5f, Fake<bf16>());
  EXPECT_TRUE(Mentions(s, "LayerNorm: x/w/b/y")) << s;
  s = LayerNorm(nullptr, Fake<float>(), 2, 8, Fake<float>(), Fake<float>(), 0.0f, Fake<bf16>());
  EXPECT_TRUE(Mentions(s, "eps")) << s;
  s = SwiGlu(nullptr, Fake<bf16>(), 0, 8, Fake<bf16>());
  EXPECT_TRUE(Mentions(s, "rows/n")) << s;
  std::vector<int32_t> ids = {3, 500};
  s = Embedding(nullptr, Fake<bf16>(), 320, 16, ids, Fake<int32_t>(), Fake<float>());
  EXPECT_TRUE(Mentions(s, "ids [1] = 500")) << s;
  s = Argmax(nullptr, Fake<float>(), 1, 0, Fake<int32_t>());
  EXPECT_TRUE(Mentions(s, "vocab")) << s;
}

TEST(CudaValidationTest, SegmentsAreChecked) {
  Segments segs;
  BuildSegments(std::vector<int32_t>{1, 1}, std::vector<int64_t>{0, 4}, std::vector<int32_t>{2, 3},
                &segs);
  segs.dev = Fake<SegDev>();
  segs.dev_row_seg = Fake<int32_t>();
  absl::Status s = ValidateSegments("Op", segs, 4);
  EXPECT_TRUE(Mentions(s, "appears twice")) << s;
  BuildSegments(std::vector<int32_t>{0, 5}, std::vector<int64_t>{0, 4}, std::vector<int32_t>{2, 3},
                &segs);
  s = ValidateSegments("Op", segs, 4);
  EXPECT_TRUE(Mentions(s, "outside [0, 4)")) << s;
  BuildSegments(std::vector<int32_t>{0, 1}, std::vector<int64_t>{0, 4}, std::vector<int32_t>{2, 3},
                &segs);
  EXPECT_TRUE(ValidateSegments("Op", segs, 4).ok());
  segs.host[1].row0 = 3;
  s = ValidateSegments("Op", segs, 4);
  EXPECT_TRUE(Mentions(s, "row0")) << s;
}

TEST(CudaValidationTest, AttentionArgumentsAreChecked) {
  Segments segs;
  BuildSegments(std::vector<int32_t>{0}, std::vector<int64_t>{0}, std::vector<int32_t>{2}, &segs);
  segs.dev = Fake<SegDev>();
  segs.dev_row_seg = Fake<int32_t>();
  AttnArgs a;
  a.q = a.out = Fake<bf16>();
  a.subln = a.partial = Fake<float>();
  a.num_heads = 4;
  a.num_kv_heads = 2;
  a.head_dim = 200;
  a.ldq = a.ldo = 800;
  a.scale = 0.1f;
  absl::Status s = DiffAttention(nullptr, a, segs, 1, {}, 0, 1 << 20);
  EXPECT_TRUE(Mentions(s, "head_dim")) << s;
  a.head_dim = 16;
  a.num_kv_heads = 3;
  s = DiffAttention(nullptr, a, segs, 1, {}, 0, 1 << 20);
  EXPECT_TRUE(Mentions(s, "num_heads/num_kv_heads")) << s;
  a.num_kv_heads = 2;
  a.k_pool = a.v_pool = Fake<bf16>();
  a.block_table = Fake<int32_t>();
  a.max_blocks = 1;
  a.block_tokens = 1;  // positions 0, 1 need blocks 0 and 1: past max_blocks
  std::vector<int32_t> table = {0};
  s = DiffAttention(nullptr, a, segs, 1, table, 1, 1 << 20);
  EXPECT_TRUE(Mentions(s, "max_blocks")) << s;
  a.block_tokens = 4;
  table = {7};
  s = DiffAttention(nullptr, a, segs, 1, table, 2, 1 << 20);
  EXPECT_TRUE(Mentions(s, "block_table [0, 0] = 7")) << s;
  table = {1};
  s = DiffAttention(nullptr, a, segs, 1, table, 2, 16);
  EXPECT_TRUE(Mentions(s, "partial")) << s;
  // A segment at positions 5..6 (block 1 of 4 tokens): every block of the context is checked,
  // or with prefix_blocks_trusted (CudaModel's own table) only the segment's own blocks.
  Segments later;
  BuildSegments(std::vector<int32_t>{0}, std::vector<int64_t>{5}, std::vector<int32_t>{2}, &later);
  later.dev = Fake<SegDev>();
  later.dev_row_seg = Fake<int32_t>();
  a.max_blocks = 2;
  table = {7, 9};
  s = DiffAttention(nullptr, a, later, 1, table, 2, 1 << 20);
  EXPECT_TRUE(Mentions(s, "block_table [0, 0] = 7")) << s;
  a.prefix_blocks_trusted = true;
  s = DiffAttention(nullptr, a, later, 1, table, 2, 1 << 20);
  EXPECT_TRUE(Mentions(s, "block_table [0, 1] = 9")) << s;
}

TEST(CudaValidationTest, SamplingParametersAreChecked) {
  SampleParamsHost p;
  p.temperature = {0.5f};
  p.top_k = {0};
  p.top_p = {1.5f};
  p.uniform = {0.2f};
  SampleArgs a;
  a.logits = Fake<float>();
  a.rows = 1;
  a.vocab = 100;
  a.temperature = Fake<float>();
  a.top_k = Fake<int32_t>();
  a.top_p = Fake<float>();
  a.uniform = Fake<float>();
  a.out = Fake<int32_t>();
  absl::Status s = SampleTopKTopP(nullptr, a, p);
  EXPECT_TRUE(Mentions(s, "top_p [0] = 1.5")) << s;
}

TEST(CudaValidationTest, ModelAndCommunicatorFailCleanlyWithoutADevice) {
  if (DeviceCount() > 0) GTEST_SKIP() << "a device is present: covered by the GPU tests";
  auto tiny = sambay::testing::MakeTiny(3, DType::kBF16);
  ASSERT_NE(tiny->model, nullptr);
  auto m = CudaModel::Create(*tiny->model, CudaModelOptions());
  EXPECT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition) << m.status();
#if defined(SAMBAY_HAVE_NCCL)
  auto g = NcclCommunicator::CreateGroup({0});
  EXPECT_TRUE(Mentions(g.status(), "not present")) << g.status();
#endif
}

}  // namespace
}  // namespace sambay::cuda
