// ThreadPool: a fixed set of worker threads that run ParallelFor loops.
//
// Ownership: the pool owns its threads; destroying it joins them.
// Thread-safety: ParallelFor may be called from one thread at a time (the engine's compute
// thread); it blocks until every chunk has run. The calling thread takes part in the work.
// Nested ParallelFor calls from inside a chunk run serially on the calling thread. mu_ guards
// the current job and the generation / pending / stop counters; chunks run with it released.
#ifndef SAMBAY_COMMON_THREAD_POOL_H_
#define SAMBAY_COMMON_THREAD_POOL_H_

#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"

namespace sambay {

class ThreadPool {
 public:
  // num_threads counts the caller: 1 means no helper threads. 0 picks hardware_concurrency().
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls fn(begin, end) over [0, n) split into contiguous ranges of at least `grain` items,
  // at most one range per thread. Returns when all ranges are done.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void WorkerLoop(int index) ABSL_LOCKS_EXCLUDED(mu_);

  int num_threads_;
  std::vector<std::thread> workers_;
  Mutex mu_;
  CondVar work_cv_;  // signalled when a job starts (generation_ bumped) or stop_ is set
  CondVar done_cv_;  // signalled when pending_ reaches 0
  const std::function<void(int64_t, int64_t)>* job_ ABSL_GUARDED_BY(mu_) = nullptr;
  int64_t job_n_ ABSL_GUARDED_BY(mu_) = 0;
  int job_parts_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace sambay

#endif  // SAMBAY_COMMON_THREAD_POOL_H_
