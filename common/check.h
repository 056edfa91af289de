// SAMBAY_CHECK: aborts on a broken *internal invariant* (a bug), with file:line and message.
//
// Never use it on request input or file contents: those get an absl::Status.
// Always on (also in release builds). Thread-safe.
#ifndef SAMBAY_COMMON_CHECK_H_
#define SAMBAY_COMMON_CHECK_H_

#include <cstdio>
#include <cstdlib>

#define SAMBAY_CHECK(cond)                                                                       \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      std::fprintf(stderr, "%s:%d: internal invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                              \
    }                                                                                            \
  } while (0)

#endif  // SAMBAY_COMMON_CHECK_H_
