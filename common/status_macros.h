// Status propagation macros for absl::Status / absl::StatusOr.
//
// Abseil 20220623 (Debian 12) has no status_macros.h, so these are ours.
//   SAMBAY_RETURN_IF_ERROR(expr);          // returns the status of expr if it is not OK
//   SAMBAY_ASSIGN_OR_RETURN(lhs, expr);    // lhs = *expr, or returns expr's status
// Header-only, no state: safe from any thread.
#ifndef SAMBAY_COMMON_STATUS_MACROS_H_
#define SAMBAY_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SAMBAY_STATUS_CONCAT_INNER_(a, b) a##b
#define SAMBAY_STATUS_CONCAT_(a, b) SAMBAY_STATUS_CONCAT_INNER_(a, b)

#define SAMBAY_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::absl::Status sambay_status_ = (expr);          \
    if (!sambay_status_.ok()) return sambay_status_; \
  } while (0)

#define SAMBAY_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return std::move(tmp).status();      \
  lhs = std::move(tmp).value()

#define SAMBAY_ASSIGN_OR_RETURN(lhs, expr) \
  SAMBAY_ASSIGN_OR_RETURN_IMPL_(SAMBAY_STATUS_CONCAT_(sambay_statusor_, __LINE__), lhs, expr)

#endif  // SAMBAY_COMMON_STATUS_MACROS_H_
