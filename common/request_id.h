// Request ids: the one rule for an id that travels in gRPC metadata, and new ids.
//
// gRPC accepts metadata values inbound that it refuses to send (TAB, DEL, bytes >= 0x80) and
// aborts the process when asked to send one, so every id a process passes on (x-request-id to a
// worker, to a PushState peer) must pass IsValidRequestId: 1 to 128 bytes of printable ASCII
// without spaces, the rule of GenerateRequest.request_id. New ids come from the kernel's
// cryptographic random source, so they cannot be guessed from earlier ones.
//
// Stateless; thread-safe.
#ifndef SAMBAY_COMMON_REQUEST_ID_H_
#define SAMBAY_COMMON_REQUEST_ID_H_

#include <string>

#include "absl/strings/string_view.h"

namespace sambay {

inline constexpr size_t kMaxRequestIdBytes = 128;

// 1..kMaxRequestIdBytes bytes, each in 0x21..0x7e.
bool IsValidRequestId(absl::string_view id);

// "req-" and 32 hex digits (128 random bits from getrandom).
std::string NewRequestId();

// 32 hex digits (128 random bits from getrandom): a secret that names one object, e.g. a
// decode reservation's handle (whoever knows it can push that sequence's state).
std::string RandomHex128();

}  // namespace sambay

#endif  // SAMBAY_COMMON_REQUEST_ID_H_
