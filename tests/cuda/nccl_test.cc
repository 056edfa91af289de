// NcclCommunicator on real GPUs: TP=1 on one GPU, TP=2 where two exist (one thread per rank).
// Skips without a CUDA device or without a loadable libnccl.so.2 (and is empty without the NCCL
// header); the loader's error path runs everywhere.
#include <thread>
#include <vector>

#include "tests/cuda/cuda_test_util.h"
#if defined(SAMBAY_HAVE_NCCL)
#include "absl/strings/match.h"
#include "engine/tp/nccl_communicator.h"
#include "engine/tp/nccl_loader.h"
#endif

namespace sambay {
namespace {

#if defined(SAMBAY_HAVE_NCCL)
using cuda::testing::Download;
using cuda::testing::Upload;

// Rank r's input: r + i / 8 (exact in fp32 and in sums of a few ranks).
std::vector<float> RankData(int r, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(r) + static_cast<float>(i % 64) / 8;
  return v;
}

// Upload is a pageable cudaMemcpy on the legacy stream, which may return before the data
// lands, and the collectives run on a non-blocking stream: synchronize before each one.
cuda::DeviceBuffer Uploaded(const std::vector<float>& v) {
  cuda::DeviceBuffer b = Upload(v);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return b;
}

void RunRank(NcclCommunicator& comm, size_t n, std::vector<std::string>* errors) {
  auto fail = [&](const std::string& what) { errors->push_back(what); };
  if (cudaSetDevice(comm.device()) != cudaSuccess) return fail("cudaSetDevice");
  const int R = comm.size();
  const int r = comm.rank();
  cuda::DeviceBuffer buf = Uploaded(RankData(r, n));
  if (!comm.AllReduceSum(buf.data(), n, CommDtype::kF32).ok()) return fail("AllReduceSum");
  std::vector<float> got = Download<float>(buf, n);
  for (size_t i = 0; i < n; ++i) {
    float want = 0;
    for (int k = 0; k < R; ++k) want += RankData(k, n)[i];
    if (got[i] != want) return fail("AllReduceSum value");
  }
  cuda::DeviceBuffer in = Uploaded(RankData(r, n));
  auto out = cuda::DeviceBuffer::Alloc(n * R * sizeof(float));
  if (!out.ok()) return fail("alloc");
  if (!comm.AllGather(in.data(), out->data(), n, CommDtype::kF32).ok()) return fail("AllGather");
  got = Download<float>(*out, n * R);
  for (int k = 0; k < R; ++k) {
    const std::vector<float> want = RankData(k, n);
    for (size_t i = 0; i < n; ++i) {
      if (got[k * n + i] != want[i]) return fail("AllGather value");
    }
  }
  cuda::DeviceBuffer bc = Uploaded(RankData(r, n));
  if (!comm.Broadcast(bc.data(), n, CommDtype::kF32, R - 1).ok()) return fail("Broadcast");
  if (Download<float>(bc, n) != RankData(R - 1, n)) return fail("Broadcast value");
  std::vector<uint16_t> ones(n, 0x3f80);  // bf16 1.0
  cuda::DeviceBuffer b16 = Upload(ones);
  if (cudaDeviceSynchronize() != cudaSuccess) return fail("sync");
  if (!comm.AllReduceSum(b16.data(), n, CommDtype::kBF16).ok()) return fail("bf16 AllReduce");
  const std::vector<uint16_t> s16 = Download<uint16_t>(b16, n);
  const uint16_t want16 = F32ToBf16(static_cast<float>(R));
  for (size_t i = 0; i < n; ++i) {
    if (s16[i] != want16) return fail("bf16 AllReduce value");
  }
  if (!comm.Barrier().ok()) return fail("Barrier");
  if (comm.Broadcast(bc.data(), n, CommDtype::kF32, R).code() !=
      absl::StatusCode::kInvalidArgument) {
    return fail("Broadcast root out of range accepted");
  }
}

// NCCL is loaded at run time: skip (saying why) where the machine has none.
#define SAMBAY_REQUIRE_NCCL()                                \
  do {                                                       \
    absl::StatusOr<const NcclApi*> nccl = LoadNccl();        \
    if (!nccl.ok()) GTEST_SKIP() << nccl.status().message(); \
  } while (false)

void RunGroup(int tp) {
  std::vector<int> devices;
  for (int d = 0; d < tp; ++d) devices.push_back(d);
  auto group = NcclCommunicator::CreateGroup(devices);
  ASSERT_TRUE(group.ok()) << group.status();
  ASSERT_EQ(group->size(), static_cast<size_t>(tp));
  std::vector<std::vector<std::string>> errors(tp);
  std::vector<std::thread> threads;
  for (int r = 0; r < tp; ++r) {
    threads.emplace_back([&, r] { RunRank(*(*group)[r], 1000 + 3, &errors[r]); });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < tp; ++r) {
    EXPECT_TRUE(errors[r].empty()) << "rank " << r << ": " << errors[r].front();
  }
}

TEST(NcclCommunicatorTest, Tp1OnOneGpu) {
  SAMBAY_REQUIRE_GPU();
  SAMBAY_REQUIRE_NCCL();
  RunGroup(1);
}

TEST(NcclCommunicatorTest, Tp2OnTwoGpus) {
  SAMBAY_REQUIRE_GPU();
  if (cuda::DeviceCount() < 2) GTEST_SKIP() << "needs two GPUs";
  SAMBAY_REQUIRE_NCCL();
  RunGroup(2);
}

TEST(NcclCommunicatorTest, RejectsBadGroups) {
  SAMBAY_REQUIRE_GPU();
  SAMBAY_REQUIRE_NCCL();
  EXPECT_EQ(NcclCommunicator::CreateGroup({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NcclCommunicator::CreateGroup({0, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}
// No GPU needed: a library that cannot be loaded is a FailedPrecondition naming it, and the
// process goes on (the binaries no longer link NCCL).
TEST(NcclLoaderTest, MissingLibraryIsAClearError) {
  auto api = LoadNcclFrom("/nonexistent/libnccl.so.2");
  ASSERT_FALSE(api.ok());
  EXPECT_EQ(api.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(api.status().message(), "/nonexistent/libnccl.so.2"))
      << api.status();
  EXPECT_TRUE(absl::StrContains(api.status().message(), "SAMBAY_NCCL_LIBRARY")) << api.status();
  // A library without the NCCL symbols is refused the same way, naming the first one missing.
  auto wrong = LoadNcclFrom("libm.so.6");
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(wrong.status().message(), "ncclCommInitAll")) << wrong.status();
}
#endif  // SAMBAY_HAVE_NCCL

}  // namespace
}  // namespace sambay
