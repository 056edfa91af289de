#include "common/rank_threads.h"

namespace sambay {

RankThreads::RankThreads(int ranks) : ranks_(ranks < 1 ? 1 : ranks) {
  status_.resize(static_cast<size_t>(ranks_));
  for (int r = 1; r < ranks_; ++r) threads_.emplace_back([this, r] { Loop(r); });
}

RankThreads::~RankThreads() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void RankThreads::Loop(int rank) {
  uint64_t seen = 0;
  for (;;) {
    const Job* job = nullptr;
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
    }
    absl::Status s = (*job)(rank);
    std::lock_guard<std::mutex> lock(mu_);
    status_[rank] = std::move(s);
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

std::vector<absl::Status> RankThreads::Run(const Job& job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &job;
    status_.assign(static_cast<size_t>(ranks_), absl::OkStatus());
    pending_ = ranks_ - 1;
    ++generation_;
  }
  start_cv_.notify_all();
  absl::Status s0 = job(0);
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return pending_ == 0; });
  status_[0] = std::move(s0);
  job_ = nullptr;
  return status_;
}

}  // namespace sambay
