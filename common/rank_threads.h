// RankThreads: runs one job on N ranks at once, for tensor-parallel groups whose ranks must all
// be inside a collective together (engine/tp_group.h on CPU, engine/cuda/cuda_group.h on GPUs).
// Rank 0 runs on the calling thread, ranks 1..N-1 on their own long-lived threads (a rank keeps
// its thread, so per-thread state such as the current CUDA device stays put).
//
// Ownership: owns the rank threads; the destructor stops and joins them.
// Thread-safety: Run is called by one thread at a time; the job runs on N threads at once.
#ifndef SAMBAY_COMMON_RANK_THREADS_H_
#define SAMBAY_COMMON_RANK_THREADS_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"

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
  std::vector<absl::Status> Run(const Job& job);

 private:
  void Loop(int rank);

  const int ranks_;
  std::vector<std::thread> threads_;  // ranks 1..N-1
  // The current job: set before the ranks are woken; statuses written by their ranks.
  const Job* job_ = nullptr;
  std::vector<absl::Status> status_;

  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  // Guarded by mu_.
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

}  // namespace sambay

#endif  // SAMBAY_COMMON_RANK_THREADS_H_
