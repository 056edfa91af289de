// RankThreads (common/rank_threads.h): every rank runs each job, at the same time, rank 0 on
// the caller's thread and every other rank always on its own thread; statuses come back by rank.
#include "common/rank_threads.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sambay {
namespace {

TEST(RankThreadsTest, EveryRankRunsTogetherOnItsOwnThread) {
  constexpr int kRanks = 4;
  RankThreads threads(kRanks);
  EXPECT_EQ(threads.size(), kRanks);
  std::vector<std::thread::id> first(kRanks);
  for (int round = 0; round < 20; ++round) {
    // A barrier inside the job: it only passes if all ranks run at once.
    std::mutex mu;
    std::condition_variable cv;
    int arrived = 0;
    std::vector<std::thread::id> ids(kRanks);
    const std::vector<absl::Status> status = threads.Run([&](int rank) {
      ids[rank] = std::this_thread::get_id();
      std::unique_lock<std::mutex> lock(mu);
      if (++arrived == kRanks) cv.notify_all();
      if (!cv.wait_for(lock, std::chrono::seconds(20), [&] { return arrived == kRanks; })) {
        return absl::DeadlineExceededError("ranks did not meet");
      }
      return rank == 2 ? absl::InternalError(absl::StrCat("rank ", rank, " round ", round))
                       : absl::OkStatus();
    });
    ASSERT_EQ(status.size(), static_cast<size_t>(kRanks));
    for (int r = 0; r < kRanks; ++r) {
      if (r == 2) {
        EXPECT_EQ(status[r].message(), absl::StrCat("rank 2 round ", round));
      } else {
        EXPECT_TRUE(status[r].ok()) << r << ": " << status[r];
      }
    }
    EXPECT_EQ(ids[0], std::this_thread::get_id());
    EXPECT_EQ(std::set<std::thread::id>(ids.begin(), ids.end()).size(), size_t{kRanks});
    if (round == 0) first = ids;
    EXPECT_EQ(ids, first) << "a rank changed threads";
  }
}

TEST(RankThreadsTest, OneRankRunsOnTheCaller) {
  RankThreads threads(1);
  std::thread::id seen;
  const auto status = threads.Run([&](int rank) {
    seen = std::this_thread::get_id();
    return rank == 0 ? absl::OkStatus() : absl::InternalError("bad rank");
  });
  ASSERT_EQ(status.size(), 1u);
  EXPECT_TRUE(status[0].ok());
  EXPECT_EQ(seen, std::this_thread::get_id());
}

}  // namespace
}  // namespace sambay
