#include "worker/call_watchdog.h"

#include <grpc/grpc.h>

#include <utility>

#include "absl/time/clock.h"

namespace sambay {

CallWatchdog::CallWatchdog(absl::Duration resolution)
    : resolution_(resolution), thread_([this] { Loop(); }) {}

CallWatchdog::~CallWatchdog() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
    wake_.SignalAll();
  }
  thread_.join();
}

void CallWatchdog::Loop() {
  MutexLock lock(&mu_);
  while (!stop_) {
    wake_.WaitWithTimeout(&mu_, resolution_);
    const absl::Time now = absl::Now();
    for (auto& [id, e] : entries_) {
      if (!e.expired && e.deadline <= now) {
        e.expired = true;
        // The Timer (and its context) cannot die while mu_ is held. Like TryCancel, with the
        // status the client should see.
        grpc_call_cancel_with_status(e.ctx->c_call(), GRPC_STATUS_DEADLINE_EXCEEDED,
                                     e.message.empty() ? "deadline exceeded" : e.message.c_str(),
                                     nullptr);
      }
    }
  }
}

size_t CallWatchdog::size() const {
  MutexLock lock(&mu_);
  return entries_.size();
}

CallWatchdog::Timer::Timer(CallWatchdog& watchdog, grpc::ServerContextBase* ctx)
    : watchdog_(watchdog) {
  MutexLock lock(&watchdog_.mu_);
  id_ = watchdog_.next_id_++;
  watchdog_.entries_[id_].ctx = ctx;
}

CallWatchdog::Timer::~Timer() {
  MutexLock lock(&watchdog_.mu_);
  watchdog_.entries_.erase(id_);
}

void CallWatchdog::Timer::Arm(absl::Time deadline, std::string message) {
  MutexLock lock(&watchdog_.mu_);
  Entry& e = watchdog_.entries_[id_];
  e.deadline = deadline;
  e.message = std::move(message);
}

bool CallWatchdog::Timer::expired() const {
  MutexLock lock(&watchdog_.mu_);
  return watchdog_.entries_[id_].expired;
}

}  // namespace sambay
