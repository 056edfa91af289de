// RequestPreparer: turns an accepted Generate call into a PreparedRequest before admission. It
// picks the request id (the request's request_id, else a valid x-request-id header, else a new
// one; a header gRPC could not send on is replaced, common/request_id.h) and a random seed (used
// when the request has none), then validates and tokenizes (PrepareRequest: INVALID_ARGUMENT
// naming the field, before any worker is touched). A prompt with more than kInlinePromptBytes of
// text is prepared on a small pool (TaskPool), not on the streaming thread that accepted the
// call, so it does not stall the other streams of that thread.
//
// Ownership: borrows the tokenizer and limits (they outlive it); owns the pool (destroying the
// preparer drops the prompts not yet prepared and joins the pool's threads).
// Thread-safety: all methods are thread-safe.
#ifndef SAMBAY_ROUTER_PREPARER_H_
#define SAMBAY_ROUTER_PREPARER_H_

#include <cstddef>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "router/request.h"
#include "router/task_pool.h"
#include "sambay/v1/generate.pb.h"
#include "tokenizer/tokenizer.h"

namespace sambay {

// Prompts with more text than this (bytes of text, or of chat roles and contents) are prepared on
// the pool rather than on the streaming thread.
inline constexpr size_t kInlinePromptBytes = 16 << 10;
// The pool: threads, and prompts waiting for one (beyond: PrepareLater refuses).
inline constexpr int kPrepareThreads = 2;
inline constexpr size_t kMaxPreparing = 64;

// A prepared request, or why it was refused; the request id either way (for the logs).
struct Preparation {
  std::string request_id;
  absl::StatusOr<PreparedRequest> request;  // its request_id is request_id
};

class RequestPreparer {
 public:
  RequestPreparer(const Tokenizer& tokenizer, const RouterLimits& limits)
      : tokenizer_(tokenizer), limits_(limits) {}

  // True when the request's prompt is prepared on the pool (PrepareLater), not inline.
  static bool Deferred(const sambay::v1::GenerateRequest& request) {
    return PromptTextBytes(request) > kInlinePromptBytes;
  }
  // Prepares on the calling thread. `header_id`: the x-request-id header or metadata ("" = none).
  Preparation Prepare(absl::string_view header_id,
                      const sambay::v1::GenerateRequest& request) const;
  // Picks the id and seed now, prepares on the pool and calls `done` there with the result.
  // `request` must stay unchanged and alive until `done` ran (or the preparer is destroyed).
  // Returns false (and never calls `done`) when kMaxPreparing prompts already wait.
  bool PrepareLater(absl::string_view header_id, const sambay::v1::GenerateRequest& request,
                    std::function<void(Preparation)> done);

 private:
  const Tokenizer& tokenizer_;
  const RouterLimits& limits_;
  // Last member: destroyed (joined) first, while what its tasks use still exists.
  TaskPool pool_{kPrepareThreads, kMaxPreparing};
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_PREPARER_H_
