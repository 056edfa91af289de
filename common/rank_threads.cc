#include "common/rank_threads.h"

namespace sambay {

RankThreads::RankThreads(int ranks) : ranks_(ranks < 1 ? 1 : ranks) {
  status_.resize(static_cast<size_t>(ranks_));
  for (int r = 1; r < ranks_; ++r) threads_.emplace_back([this, r] { Loop(r); });
}

RankThreads::~RankThreads() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  start_cv_.SignalAll();
  for (std::thread& t : threads_) t.join();
}

void RankThreads::Loop(int rank) {
  uint64_t seen = 0;
  for (;;) {
    const Job* job = nullptr;
    {
      MutexLock lock(&mu_);
      while (!stop_ && generation_ == seen) start_cv_.Wait(&mu_);
      if (stop_) return;
      seen = generation_;
      job = job_;
    }
    absl::Status s = (*job)(rank);
    MutexLock lock(&mu_);
    status_[rank] = std::move(s);
    if (--pending_ == 0) done_cv_.Signal();
  }
}

std::vector<absl::Status> RankThreads::Run(const Job& job) {
  {
    MutexLock lock(&mu_);
    job_ = &job;
    status_.assign(static_cast<size_t>(ranks_), absl::OkStatus());
    pending_ = ranks_ - 1;
    ++generation_;
  }
  start_cv_.SignalAll();
  absl::Status s0 = job(0);
  MutexLock lock(&mu_);
  while (pending_ != 0) done_cv_.Wait(&mu_);
  status_[0] = std::move(s0);
  job_ = nullptr;
  return status_;
}

}  // namespace sambay
