#include "common/serial_queue.h"

#include <atomic>
#include <thread>
#include <vector>

#include "common/mutex.h"
#include "gtest/gtest.h"

namespace sambay {
namespace {

TEST(SerialQueueTest, RunsInOrderOnThePostingThread) {
  SerialQueue q;
  std::vector<int> seen;
  const std::thread::id me = std::this_thread::get_id();
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(q.Post([&, i] {
      EXPECT_EQ(std::this_thread::get_id(), me);
      seen.push_back(i);
    }));
  }
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2}));
}

TEST(SerialQueueTest, APostFromAFunctionRunsAfterItNotNested) {
  SerialQueue q;
  std::vector<int> seen;
  q.Post([&] {
    EXPECT_FALSE(q.Post([&] { seen.push_back(2); }));  // queued: this thread is draining
    seen.push_back(1);
  });
  EXPECT_EQ(seen, (std::vector<int>{1, 2}));
}

TEST(SerialQueueTest, RunIfIdleRunsOnlyWhenNothingRunsOrWaits) {
  SerialQueue q;
  int ran = 0;
  EXPECT_TRUE(q.RunIfIdle([&] { ++ran; }));
  q.Post([&] { EXPECT_FALSE(q.RunIfIdle([&] { ++ran; })); });
  EXPECT_EQ(ran, 1);
  EXPECT_TRUE(q.RunIfIdle([&] { ++ran; }));
  EXPECT_EQ(ran, 2);
}

// Many threads post at once: the functions never overlap, none is lost, and a plain counter
// touched only inside them needs no lock (the queue orders them).
TEST(SerialQueueTest, ConcurrentPostsNeverOverlapAndNoneIsLost) {
  SerialQueue q;
  std::atomic<int> inside{0};
  std::atomic<bool> overlapped{false};
  int64_t count = 0;  // touched only by queued functions
  constexpr int kThreads = 8, kPosts = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPosts; ++i) {
        q.Post([&] {
          if (inside.fetch_add(1) != 0) overlapped = true;
          ++count;
          inside.fetch_sub(1);
        });
      }
    });
  }
  for (auto& t : threads) t.join();
  int64_t total = 0;
  ASSERT_TRUE(q.RunIfIdle([&] { total = count; }));
  EXPECT_FALSE(overlapped.load());
  EXPECT_EQ(total, int64_t{kThreads} * kPosts);
}

}  // namespace
}  // namespace sambay
