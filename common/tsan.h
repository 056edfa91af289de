// HandOff and TakeOver: tell ThreadSanitizer about an ordering that an uninstrumented library
// creates. gRPC guarantees that whatever a thread did before it handed a tag to a completion
// queue (Write, Read, Finish, Alarm::Set...) happens before the thread that gets the same tag
// back from CompletionQueue::Next, but Debian's gRPC is built without TSan, so TSan cannot see
// it and reports the tag's owner as racing. Wrapping the tag in HandOff when it is given to
// gRPC, and calling TakeOver when Next returns it, states that ordering for that one tag only.
// Both compile to nothing without TSan.
//
// Ownership: none. Thread-safety: thread-safe (TSan's own bookkeeping).
#ifndef SAMBAY_COMMON_TSAN_H_
#define SAMBAY_COMMON_TSAN_H_

#if defined(__SANITIZE_THREAD__)
#define SAMBAY_TSAN_ENABLED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SAMBAY_TSAN_ENABLED 1
#endif
#endif

#ifdef SAMBAY_TSAN_ENABLED
#include <sanitizer/tsan_interface.h>
#endif

namespace sambay {

// Returns `tag`, after marking everything this thread did so far as happening before the
// matching TakeOver(tag).
template <typename T>
T* HandOff(T* tag) {
#ifdef SAMBAY_TSAN_ENABLED
  __tsan_release(static_cast<void*>(tag));
#endif
  return tag;
}

// Call with a tag that a completion queue returned, before reading it.
inline void TakeOver(void* tag) {
#ifdef SAMBAY_TSAN_ENABLED
  __tsan_acquire(tag);
#else
  (void)tag;
#endif
}

}  // namespace sambay

#endif  // SAMBAY_COMMON_TSAN_H_
