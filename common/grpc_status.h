// The one place where absl::Status and grpc::Status are converted (both directions), and where a
// grpc::StatusCode is named. The canonical codes are numerically identical; messages are kept as
// they are. Stateless; thread-safe.
#ifndef SAMBAY_COMMON_GRPC_STATUS_H_
#define SAMBAY_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace sambay {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// The canonical name of `code` ("OK", "INVALID_ARGUMENT", ...), as the tools print it; "UNKNOWN"
// for a value outside the canonical codes. The result is a string literal (never null).
const char* GrpcCodeName(grpc::StatusCode code);

}  // namespace sambay

#endif  // SAMBAY_COMMON_GRPC_STATUS_H_
