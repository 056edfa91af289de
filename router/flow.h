// RequestFlow: one Generate request through the workers (DESIGN §1), with failover.
//
//   1. Place: decode worker D (most free capacity) and prefill worker P (least queued prefill).
//   2. Split (P != D): open Decode(handle) on D and wait for `reserved`; call Prefill on P with
//      destination {D, handle}; stream P's first token to the client at once; then stream D's
//      tokens. In place (P == D, role both): Decode(local_prompt) on that worker.
//   3. Stop: the workers stop at stop ids and max_new_tokens; the router stops at stop strings
//      (then releases the decode worker by cancelling its call).
// Failures: a prefill that fails before its first token is retried on another prefill worker.
// If the decode worker dies or its stream breaks mid-way, the sequence migrates: the prompt plus
// every token generated so far is re-prefilled (with rng_draws = tokens generated, so the
// sampler's random stream continues where it stopped) and handed to another decode worker; the
// client sees only a pause, never a duplicated or different token. At most migration_limit
// migrations; with no worker left the stream ends UNAVAILABLE at once.
// Worker calls are made with ClientContext::FromServerContext, so the client's cancel and
// deadline propagate to them; Abort() cancels them and ends the stream with finish_reason ABORT.
//
// Ownership: borrows the registry, policy, metrics and tokenizer (all outlive the flow).
// Thread-safety: Run on one thread; Abort from any thread.
#ifndef SAMBAY_ROUTER_FLOW_H_
#define SAMBAY_ROUTER_FLOW_H_

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/tokenizer/stream_decoder.h"
#include "router/metrics.h"
#include "router/placement.h"
#include "router/registry.h"
#include "router/request.h"
#include "sambay/v1/generate.pb.h"

namespace sambay {

struct FlowOptions {
  int migration_limit = 3;
  int prefill_retries = 2;
  absl::Duration reserve_timeout = absl::Seconds(10);  // waiting for D's `reserved`
};

class RequestFlow {
 public:
  using Writer = std::function<bool(const sambay::v1::GenerateResponse&)>;

  RequestFlow(WorkerRegistry& registry, PlacementPolicy& policy, RouterMetrics& metrics,
              const Tokenizer& tokenizer, PreparedRequest request, FlowOptions options,
              grpc::ServerContext* server_ctx, absl::Time received, double queue_seconds);

  // Streams the generation through `write` (false = the client is gone). Returns the status to
  // end the call with; on OK the last message written carried the finish reason and usage.
  absl::Status Run(const Writer& write);
  // Ends the stream with finish_reason ABORT (thread-safe; no-op once finished).
  void Abort();

 private:
  enum class Outcome {
    kFinished,      // finish_ set
    kRetryPrefill,  // the prefill worker failed before the first token
    kRetryDecode,   // the decode worker could not take the sequence (no token lost)
    kMigrate,       // the decode worker failed mid-stream
    kStop,          // end now with status_ (fatal error, client gone, abort)
  };

  Outcome Attempt(const WorkerSnapshot& prefill, const WorkerSnapshot& decode);
  Outcome InPlace(const WorkerSnapshot& w);
  Outcome Split(const WorkerSnapshot& p, const WorkerSnapshot& d);
  // Streams tokens; returns false if the stream must end (finished, client gone).
  bool Emit(const std::vector<int32_t>& ids,
            const std::vector<const sambay::v1::PositionLogprobs*>& logprobs);
  Outcome WorkerError(const grpc::Status& st, const std::string& worker, bool decode_side);
  std::unique_ptr<grpc::ClientContext> NewContext();
  void Forget(grpc::ClientContext* ctx);
  void WriteFinal();

  WorkerRegistry& registry_;
  PlacementPolicy& policy_;
  RouterMetrics& metrics_;
  const PreparedRequest req_;
  const FlowOptions options_;
  grpc::ServerContext* server_ctx_;
  const absl::Time received_;
  const double queue_seconds_;
  const Writer* write_ = nullptr;

  StreamDecoder decoder_;
  StopMatcher matcher_;
  std::set<int32_t> special_ids_;
  std::vector<int32_t> generated_;
  bool sent_first_ = false;
  absl::Time first_token_at_, last_token_at_;
  sambay::v1::FinishReason finish_ = sambay::v1::FINISH_REASON_UNSPECIFIED;
  absl::Status status_;
  sambay::v1::Usage usage_;
  std::set<std::string> bad_prefill_, bad_decode_;
  int migrations_ = 0, prefill_failures_ = 0;

  std::mutex mu_;  // active_, aborted_
  std::vector<grpc::ClientContext*> active_;
  bool aborted_ = false;
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_FLOW_H_
