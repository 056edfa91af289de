#include "common/serial_queue.h"

#include <utility>

namespace sambay {

bool SerialQueue::Post(std::function<void()> fn) {
  {
    MutexLock lock(&mu_);
    queue_.push_back(std::move(fn));
    if (draining_) return false;  // the draining thread runs it
    draining_ = true;
  }
  for (;;) {
    std::function<void()> next;
    {
      MutexLock lock(&mu_);
      if (queue_.empty()) {
        draining_ = false;
        return true;
      }
      next = std::move(queue_.front());
      queue_.pop_front();
    }
    next();
  }
}

bool SerialQueue::RunIfIdle(absl::FunctionRef<void()> fn) {
  MutexLock lock(&mu_);
  if (draining_ || !queue_.empty()) return false;
  fn();
  return true;
}

}  // namespace sambay
