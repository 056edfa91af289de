// CpuCommunicator: every collective at sizes 1, odd and large, group sizes 1-4, f32 and bf16,
// ranks on concurrent threads; sums in rank order (bit-identical on every rank and across runs);
// mismatched calls fail on every rank instead of hanging; Abort releases waiting ranks.
#include <atomic>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "engine/dtype.h"
#include "engine/tp/cpu_communicator.h"
#include "gtest/gtest.h"

namespace sambay {
namespace {

constexpr size_t kSizes[] = {1, 7, 1001, (size_t{1} << 20) + 3};
constexpr int kGroupSizes[] = {1, 2, 3, 4};

// Runs fn(rank, comm) on one thread per rank of a fresh group.
void RunGroup(int n, const std::function<void(int, CpuCommunicator&)>& fn) {
  auto comms = CreateCpuCommunicators(n);
  ASSERT_TRUE(comms.ok()) << comms.status();
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] { fn(r, *(*comms)[r]); });
  }
  for (std::thread& t : threads) t.join();
}

// Rank r's input for a test of `count` elements: seeded by (r, count), values of mixed magnitude
// so the summation order matters.
std::vector<float> Input(int r, size_t count, uint64_t seed = 0) {
  std::mt19937_64 rng(seed * 1000003 + r * 7919 + count);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (float& x : v) x = u(rng) * (r % 2 == 0 ? 1e4f : 1e-3f);
  return v;
}

std::vector<uint16_t> ToBf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = F32ToBf16(v[i]);
  return out;
}

TEST(CpuCommunicatorTest, CreateRejectsBadSizes) {
  EXPECT_EQ(CreateCpuCommunicators(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateCpuCommunicators(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateCpuCommunicators(kMaxCpuCommRanks + 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto comms = CreateCpuCommunicators(3);
  ASSERT_TRUE(comms.ok());
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ((*comms)[r]->rank(), r);
    EXPECT_EQ((*comms)[r]->size(), 3);
  }
}

TEST(CpuCommunicatorTest, AllReduceSumF32IsTheRankOrderSumOnEveryRank) {
  for (int n : kGroupSizes) {
    for (size_t count : kSizes) {
      std::vector<float> expect(count);
      // Reference: the sum in rank order.
      std::vector<std::vector<float>> in(n);
      for (int r = 0; r < n; ++r) in[r] = Input(r, count);
      for (size_t i = 0; i < count; ++i) {
        float acc = in[0][i];
        for (int r = 1; r < n; ++r) acc += in[r][i];
        expect[i] = acc;
      }
      std::vector<std::vector<float>> bufs = in;
      RunGroup(n, [&](int r, CpuCommunicator& c) {
        EXPECT_TRUE(c.AllReduceSum(bufs[r].data(), count, CommDtype::kF32).ok());
      });
      for (int r = 0; r < n; ++r) {
        ASSERT_EQ(0, std::memcmp(bufs[r].data(), expect.data(), count * 4))
            << "group " << n << " count " << count << " rank " << r;
      }
    }
  }
}

TEST(CpuCommunicatorTest, AllReduceSumOrderIsRankOrder) {
  // ((1e8 + 1) + -1e8) is 0 in f32; any other order of the three gives 1.
  const float vals[3] = {1e8f, 1.0f, -1e8f};
  std::vector<std::vector<float>> bufs(3);
  for (int r = 0; r < 3; ++r) bufs[r].assign(37, vals[r]);
  RunGroup(3, [&](int r, CpuCommunicator& c) {
    EXPECT_TRUE(c.AllReduceSum(bufs[r].data(), 37, CommDtype::kF32).ok());
  });
  for (int r = 0; r < 3; ++r) {
    for (float v : bufs[r]) ASSERT_EQ(v, 0.0f);
  }
}

TEST(CpuCommunicatorTest, AllReduceSumBf16SumsInF32AndRoundsOnce) {
  for (int n : kGroupSizes) {
    for (size_t count : kSizes) {
      std::vector<std::vector<uint16_t>> bufs(n);
      for (int r = 0; r < n; ++r) bufs[r] = ToBf16(Input(r, count, 5));
      std::vector<uint16_t> expect(count);
      for (size_t i = 0; i < count; ++i) {
        float acc = Bf16ToF32(bufs[0][i]);
        for (int r = 1; r < n; ++r) acc += Bf16ToF32(bufs[r][i]);
        expect[i] = F32ToBf16(acc);
      }
      RunGroup(n, [&](int r, CpuCommunicator& c) {
        EXPECT_TRUE(c.AllReduceSum(bufs[r].data(), count, CommDtype::kBF16).ok());
      });
      for (int r = 0; r < n; ++r) {
        ASSERT_EQ(0, std::memcmp(bufs[r].data(), expect.data(), count * 2))
            << "group " << n << " count " << count << " rank " << r;
      }
    }
  }
}

TEST(CpuCommunicatorTest, AllReduceSumIsDeterministicAcrossRuns) {
  const size_t count = 100003;
  std::vector<float> first;
  for (int run = 0; run < 5; ++run) {
    std::vector<std::vector<float>> bufs(4);
    for (int r = 0; r < 4; ++r) bufs[r] = Input(r, count, 9);
    RunGroup(4, [&](int r, CpuCommunicator& c) {
      // Stagger the ranks differently each run.
      if ((r + run) % 3 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
      EXPECT_TRUE(c.AllReduceSum(bufs[r].data(), count, CommDtype::kF32).ok());
    });
    if (run == 0) first = bufs[0];
    for (int r = 0; r < 4; ++r) {
      ASSERT_EQ(0, std::memcmp(bufs[r].data(), first.data(), count * 4)) << "run " << run;
    }
  }
}

TEST(CpuCommunicatorTest, AllGatherConcatenatesInRankOrder) {
  for (int n : kGroupSizes) {
    for (size_t count : kSizes) {
      for (CommDtype dt : {CommDtype::kF32, CommDtype::kBF16}) {
        const size_t es = dt == CommDtype::kF32 ? 4 : 2;
        std::vector<std::vector<unsigned char>> in(n), out(n);
        std::vector<unsigned char> expect;
        for (int r = 0; r < n; ++r) {
          const std::vector<float> v = Input(r, count, 3);
          in[r].resize(count * es);
          if (dt == CommDtype::kF32) {
            std::memcpy(in[r].data(), v.data(), count * 4);
          } else {
            const std::vector<uint16_t> b = ToBf16(v);
            std::memcpy(in[r].data(), b.data(), count * 2);
          }
          expect.insert(expect.end(), in[r].begin(), in[r].end());
          out[r].assign(n * count * es, 0xab);
        }
        RunGroup(n, [&](int r, CpuCommunicator& c) {
          EXPECT_TRUE(c.AllGather(in[r].data(), out[r].data(), count, dt).ok());
        });
        for (int r = 0; r < n; ++r) {
          ASSERT_EQ(out[r], expect) << "group " << n << " count " << count << " rank " << r;
        }
      }
    }
  }
}

TEST(CpuCommunicatorTest, AllGatherInPlace) {
  const int n = 3;
  const size_t count = 5;
  std::vector<std::vector<float>> buf(n, std::vector<float>(n * count, -1.0f));
  for (int r = 0; r < n; ++r) {
    for (size_t i = 0; i < count; ++i) buf[r][r * count + i] = static_cast<float>(r * 100 + i);
  }
  RunGroup(n, [&](int r, CpuCommunicator& c) {
    EXPECT_TRUE(c.AllGather(buf[r].data() + r * count, buf[r].data(), count, CommDtype::kF32).ok());
  });
  for (int r = 0; r < n; ++r) {
    for (int j = 0; j < n; ++j) {
      for (size_t i = 0; i < count; ++i) ASSERT_EQ(buf[r][j * count + i], j * 100 + i);
    }
  }
}

TEST(CpuCommunicatorTest, BroadcastFromEveryRoot) {
  for (int n : kGroupSizes) {
    for (size_t count : kSizes) {
      for (int root = 0; root < n; ++root) {
        std::vector<std::vector<float>> bufs(n);
        for (int r = 0; r < n; ++r) bufs[r] = Input(r, count, 4);
        const std::vector<float> expect = bufs[root];
        RunGroup(n, [&](int r, CpuCommunicator& c) {
          EXPECT_TRUE(c.Broadcast(bufs[r].data(), count, CommDtype::kF32, root).ok());
        });
        for (int r = 0; r < n; ++r) {
          ASSERT_EQ(0, std::memcmp(bufs[r].data(), expect.data(), count * 4))
              << "group " << n << " count " << count << " root " << root << " rank " << r;
        }
      }
    }
  }
  // bf16 too.
  std::vector<std::vector<uint16_t>> b(2);
  b[0] = {1, 2, 3};
  b[1] = {7, 8, 9};
  RunGroup(2, [&](int r, CpuCommunicator& c) {
    EXPECT_TRUE(c.Broadcast(b[r].data(), 3, CommDtype::kBF16, 1).ok());
  });
  EXPECT_EQ(b[0], b[1]);
  EXPECT_EQ(b[0], (std::vector<uint16_t>{7, 8, 9}));
}

TEST(CpuCommunicatorTest, BarrierOrdersWritesAcrossRanks) {
  for (int n : kGroupSizes) {
    std::vector<int> seen(n * n, -1);
    std::vector<int> written(n, 0);
    RunGroup(n, [&](int r, CpuCommunicator& c) {
      written[r] = r + 1;
      EXPECT_TRUE(c.Barrier().ok());
      for (int j = 0; j < n; ++j) seen[r * n + j] = written[j];
      EXPECT_TRUE(c.Barrier().ok());
    });
    for (int r = 0; r < n; ++r) {
      for (int j = 0; j < n; ++j) EXPECT_EQ(seen[r * n + j], j + 1);
    }
  }
}

// Many back-to-back collectives of mixed kinds and sizes: slots are reused while other ranks are
// still leaving the previous call.
TEST(CpuCommunicatorTest, ManyMixedCollectivesOnConcurrentThreads) {
  for (int n : {2, 3, 4}) {
    std::atomic<int> failures{0};
    RunGroup(n, [&](int r, CpuCommunicator& c) {
      std::vector<float> buf, gathered;
      for (int it = 0; it < 300; ++it) {
        const size_t count = 1 + (it * 37) % 129;
        buf.assign(count, static_cast<float>(r + it));
        switch (it % 3) {
          case 0: {
            if (!c.AllReduceSum(buf.data(), count, CommDtype::kF32).ok()) ++failures;
            float expect = static_cast<float>(it);
            for (int j = 1; j < n; ++j) expect += static_cast<float>(j + it);
            for (float v : buf) failures += v != expect;
            break;
          }
          case 1:
            gathered.assign(n * count, 0);
            if (!c.AllGather(buf.data(), gathered.data(), count, CommDtype::kF32).ok()) ++failures;
            for (int j = 0; j < n; ++j)
              failures += gathered[j * count] != static_cast<float>(j + it);
            break;
          default:
            if (!c.Broadcast(buf.data(), count, CommDtype::kF32, it % n).ok()) ++failures;
            failures += buf[count - 1] != static_cast<float>(it % n + it);
            break;
        }
      }
    });
    EXPECT_EQ(failures.load(), 0) << "group " << n;
  }
}

TEST(CpuCommunicatorTest, MismatchedCallsFailOnEveryRankWithoutHanging) {
  std::vector<absl::Status> st(3);
  std::vector<std::vector<float>> bufs(3, std::vector<float>(10, 1.0f));
  RunGroup(3, [&](int r, CpuCommunicator& c) {
    st[r] = c.AllReduceSum(bufs[r].data(), r == 2 ? 9 : 10, CommDtype::kF32);
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(st[r].code(), absl::StatusCode::kInternal) << st[r];
    EXPECT_NE(st[r].message().find("count 9"), absl::string_view::npos) << st[r];
  }
  // Different collectives; the group stays usable afterwards.
  RunGroup(2, [&](int r, CpuCommunicator& c) {
    absl::Status s = r == 0 ? c.Barrier() : c.AllReduceSum(bufs[r].data(), 10, CommDtype::kF32);
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
    EXPECT_NE(s.message().find("called AllReduceSum"), absl::string_view::npos) << s;
    EXPECT_TRUE(c.Barrier().ok());
    s = c.Broadcast(bufs[r].data(), 10, CommDtype::kF32, 5);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    s = c.AllReduceSum(r == 1 ? nullptr : bufs[r].data(), 10, CommDtype::kF32);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("rank 1"), absl::string_view::npos) << s;
    s = c.AllReduceSum(bufs[r].data(), 10, r == 0 ? CommDtype::kF32 : CommDtype::kBF16);
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
    EXPECT_TRUE(c.AllReduceSum(nullptr, 0, CommDtype::kF32).ok());
  });
}

TEST(CpuCommunicatorTest, AbortReleasesWaitingRanksAndPoisonsTheGroup) {
  auto comms = CreateCpuCommunicators(3);
  ASSERT_TRUE(comms.ok());
  std::vector<absl::Status> st(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] { st[r] = (*comms)[r]->Barrier(); });  // rank 2 never comes
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  (*comms)[2]->Abort(absl::CancelledError("rank 2 failed"));
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(st[r].code(), absl::StatusCode::kCancelled) << st[r];
    EXPECT_EQ(st[r].message(), "rank 2 failed");
  }
  float x = 1;
  EXPECT_EQ((*comms)[2]->AllReduceSum(&x, 1, CommDtype::kF32).code(), absl::StatusCode::kCancelled);
  (*comms)[0]->Abort(absl::InternalError("second"));  // the first status wins
  EXPECT_EQ((*comms)[1]->Barrier().message(), "rank 2 failed");
}

}  // namespace
}  // namespace sambay
