// CallWatchdog: server-side deadlines for synchronous streaming calls whose client may stall
// (a PushState sender that sends nothing). A blocking ServerReader::Read has
// no timeout of its own; the watchdog's thread cancels the call when its deadline passes, with
// status DEADLINE_EXCEEDED and the timer's message (what the client sees), which makes the
// blocked Read return false, so the handler can free everything and return.
//
// Usage: a handler makes a CallWatchdog::Timer for its context, Arm()s it before each Read and
// checks expired() when a Read fails. The Timer unregisters itself when it dies, so the watchdog
// never touches a context after its handler returned.
//
// Ownership: the watchdog owns its thread (joined by the destructor) and borrows the contexts
// of registered timers (each Timer must die before its context). Thread-safety: thread-safe.
#ifndef SAMBAY_WORKER_CALL_WATCHDOG_H_
#define SAMBAY_WORKER_CALL_WATCHDOG_H_

#include <grpcpp/server_context.h>

#include <cstdint>
#include <map>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "common/mutex.h"

namespace sambay {

class CallWatchdog {
 public:
  // Deadlines are checked every `resolution`.
  explicit CallWatchdog(absl::Duration resolution = absl::Milliseconds(50));
  ~CallWatchdog();
  CallWatchdog(const CallWatchdog&) = delete;
  CallWatchdog& operator=(const CallWatchdog&) = delete;

  class Timer {
   public:
    Timer(CallWatchdog& watchdog, grpc::ServerContextBase* ctx);
    ~Timer();
    Timer(const Timer&) = delete;
    Timer& operator=(const Timer&) = delete;
    // Cancels the call at `deadline` with DEADLINE_EXCEEDED `message`, unless re-armed before
    // (InfiniteFuture: never).
    void Arm(absl::Time deadline, std::string message = "");
    // Whether the watchdog cancelled the call.
    bool expired() const;

   private:
    CallWatchdog& watchdog_;
    uint64_t id_;
  };

  // Timers registered now (for tests).
  size_t size() const;

 private:
  struct Entry {
    grpc::ServerContextBase* ctx = nullptr;
    absl::Time deadline = absl::InfiniteFuture();
    std::string message;
    bool expired = false;
  };
  void Loop();

  const absl::Duration resolution_;
  mutable Mutex mu_;
  CondVar wake_;  // signalled when stop_ is set
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace sambay

#endif  // SAMBAY_WORKER_CALL_WATCHDOG_H_
