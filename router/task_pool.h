// TaskPool: a few threads that run queued tasks, for work too slow for the router's streaming
// threads (tokenizing a large prompt would stall every stream served by the same completion
// queue).
//
// Ownership: the pool owns its threads and the queued tasks. Destroying it stops taking tasks,
// drops the ones not yet started (their captures are destroyed on the destroying thread) and
// joins the threads once the running tasks return.
// Thread-safety: TrySubmit may be called from any thread; tasks run on the pool's threads, any
// number at once up to the thread count.
#ifndef SAMBAY_ROUTER_TASK_POOL_H_
#define SAMBAY_ROUTER_TASK_POOL_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"

namespace sambay {

class TaskPool {
 public:
  // `threads` >= 1 threads; at most `max_queued` tasks waiting for one.
  TaskPool(int threads, size_t max_queued);
  ~TaskPool();
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  // Queues `task`; false (and `task` is dropped) when max_queued tasks are already waiting or the
  // pool is stopping.
  bool TrySubmit(std::function<void()> task);

 private:
  void Loop();

  const size_t max_queued_;
  mutable Mutex mu_;
  CondVar changed_;  // signalled when a task is queued or stopping_ is set
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;  // set in the constructor, joined in the destructor
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_TASK_POOL_H_
