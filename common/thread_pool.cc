#include "common/thread_pool.h"

#include <algorithm>

namespace sambay {
namespace {
thread_local bool tls_in_pool_job = false;

void RunPart(const std::function<void(int64_t, int64_t)>& fn, int64_t n, int parts, int index) {
  const int64_t begin = n * index / parts;
  const int64_t end = n * (index + 1) / parts;
  if (begin < end) fn(begin, end);
}
}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  num_threads_ = std::max(1, num_threads);
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  work_cv_.SignalAll();
  for (auto& t : workers_) t.join();
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int parts = static_cast<int>(std::min<int64_t>(num_threads_, (n + grain - 1) / grain));
  if (parts <= 1 || tls_in_pool_job) {
    fn(0, n);
    return;
  }
  {
    MutexLock lock(&mu_);
    job_ = &fn;
    job_n_ = n;
    job_parts_ = parts;
    pending_ = parts - 1;
    ++generation_;
  }
  work_cv_.SignalAll();
  tls_in_pool_job = true;
  RunPart(fn, n, parts, 0);
  tls_in_pool_job = false;
  MutexLock lock(&mu_);
  while (pending_ != 0) done_cv_.Wait(&mu_);
  job_ = nullptr;
}

void ThreadPool::WorkerLoop(int index) {
  tls_in_pool_job = true;
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int64_t, int64_t)>* job;
    int64_t n;
    int parts;
    {
      MutexLock lock(&mu_);
      while (!stop_ && generation_ == seen) work_cv_.Wait(&mu_);
      if (stop_) return;
      seen = generation_;
      job = job_;
      n = job_n_;
      parts = job_parts_;
    }
    if (index < parts) {
      RunPart(*job, n, parts, index);
      MutexLock lock(&mu_);
      if (--pending_ == 0) done_cv_.Signal();
    }
  }
}

}  // namespace sambay
