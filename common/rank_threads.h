// RankThreads: runs one job on N ranks at once, for tensor-parallel groups whose ranks must all
// be inside a collective together (engine/tp/tp_group.h on CPU, engine/cuda/cuda_group.h on GPUs).
// Rank 0 runs on the calling thread, ranks 1..N-1 on their own long-lived threads (a rank keeps
// its thread, so per-thread state such as the current CUDA device stays put).
//
// Ownership: owns the rank threads; the destructor stops and joins them.
// Thread-safety: Run is called by one thread at a time; the job runs on N threads at once. mu_
// guards the current job, the per-rank statuses and the generation / pending / stop counters;
// jobs run with it released.
#ifndef SAMBAY_COMMON_RANK_THREADS_H_
#define SAMBAY_COMMON_RANK_THREADS_H_

#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "common/mutex.h"

namespace sambay {

class RankThreads {
 public:
  using Job = std::function<absl::Status(int rank)>;

  explicit RankThreads(int ranks);
  ~RankThreads();
  RankThreads(const RankThreads&) = delete;
  RankThreads& operator=(const RankThreads&) = delete;

  int size() const { return ranks_; }
  // Runs job(r) for every rank r concurrently; returns when all are done, with each rank's
  // status (index = rank).
  std::vector<absl::Status> Run(const Job& job) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Loop(int rank) ABSL_LOCKS_EXCLUDED(mu_);

  const int ranks_;
  std::vector<std::thread> threads_;  // ranks 1..N-1
  Mutex mu_;
  CondVar start_cv_;  // signalled when a job starts (generation_ bumped) or stop_ is set
  CondVar done_cv_;   // signalled when pending_ reaches 0
  // The current job: set before the ranks are woken; statuses written by their ranks.
  const Job* job_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::vector<absl::Status> status_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace sambay

#endif  // SAMBAY_COMMON_RANK_THREADS_H_
