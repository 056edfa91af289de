// SerialQueue: runs posted functions one at a time, in the order posted, without a thread of its
// own. The thread that posts while no other thread is draining drains the queue (running what
// other threads post meanwhile too); the lock is released while each function runs, so a
// function may post (it runs after the current one, never nested).
//
// Ordering: each drainer takes the lock after the previous one released it, so everything a
// function did happens before the next function runs, whichever thread runs it. State touched
// only by the queue's functions therefore needs no lock of its own.
//
// Ownership: owns the queued functions. Thread-safety: all methods are thread-safe; mu_ guards
// the queue and the draining flag, and is never held while a posted function runs.
#ifndef SAMBAY_COMMON_SERIAL_QUEUE_H_
#define SAMBAY_COMMON_SERIAL_QUEUE_H_

#include <deque>
#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "common/mutex.h"

namespace sambay {

class SerialQueue {
 public:
  // Queues `fn`. Unless another thread is draining, drains the queue on this thread and returns
  // true once it is empty; returns false at once when another thread runs it.
  bool Post(std::function<void()> fn) ABSL_LOCKS_EXCLUDED(mu_);
  // Runs `fn` with the queue's lock held when nothing is queued or running, and returns true;
  // returns false (without running it) otherwise. `fn` must be short and must not post.
  bool RunIfIdle(absl::FunctionRef<void()> fn) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;  // a thread is running the queued functions
};

}  // namespace sambay

#endif  // SAMBAY_COMMON_SERIAL_QUEUE_H_
