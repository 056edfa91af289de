// Size limits shared by the router (public requests) and the workers (internal requests), so
// that a request the router admits is never refused by a worker for its size, and a stranger
// calling a worker directly cannot exceed what the router would pass on.
//
// Constants only; thread-safe.
#ifndef SAMBAY_COMMON_LIMITS_H_
#define SAMBAY_COMMON_LIMITS_H_

#include <cstddef>

namespace sambay {

// stop_token_ids: at most this many ids per request (OpenAI allows 4 stop strings; vLLM does
// not cap, but every id is checked once per generated token on the engine thread).
inline constexpr size_t kMaxStopTokenIds = 1024;

// Detokenize: at most this many token ids per call.
inline constexpr size_t kMaxDetokenizeIds = 1 << 20;

// Handles naming a reserved decode slot: the router's random 128-bit handle is 32 hex digits;
// a worker accepts up to this many bytes.
inline constexpr size_t kMaxHandleBytes = 128;

}  // namespace sambay

#endif  // SAMBAY_COMMON_LIMITS_H_
