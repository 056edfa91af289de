// RequestFlow: one Generate request through the workers (docs/design.md "Request path"), with
// failover, on gRPC's asynchronous API: the server call and its worker calls (WorkerCall) all
// report to one completion queue, whose thread handles each event in place, so the router
// spends no thread per stream and no thread switch per token.
//
//   1. Place: decode worker D (most free capacity) and prefill worker P (least queued prefill).
//   2. Split (P != D): open Decode(handle) on D and wait for `reserved`; call Prefill on P with
//      destination {D, handle}; stream P's first token to the client at once; when Prefill
//      ends (state pushed), stream D's tokens. In place (P == D, role both): Decode(local_prompt)
//      on that worker.
//   3. Stop: the workers stop at stop ids and max_new_tokens; the router stops at stop strings
//      (then releases the decode worker by cancelling its call).
// Failures: a prefill that fails before its first token is retried on another prefill worker.
// If the decode worker dies or its stream breaks mid-way, the sequence migrates: the prompt plus
// every token generated so far is re-prefilled (with rng_draws = tokens generated, so the
// sampler's random stream continues where it stopped) and handed to another decode worker; the
// client sees only a pause, never a duplicated or different token. At most migration_limit
// migrations; with no worker left the stream ends UNAVAILABLE at once.
// Worker calls carry the client's deadline; the client's cancel (the server call's done event)
// cancels them; Abort() cancels them and ends the stream with finish_reason ABORT.
// Writes to the client: one in flight at a time; tokens that arrive meanwhile are merged into
// the next message (so a slow client gets fewer, larger messages, never a reordering). A client
// that leaves a write pending past write_timeout, or lets more than max_pending_output_bytes
// pile up, is cut off (RESOURCE_EXHAUSTED, failure reason slow_client).
//
// Hangs and capacity (a timer on the flow's queue, every `tick`; flow_deadlines.cc): a decode
// stream that sends no token for stall_timeout is treated as a failed worker (the sequence
// migrates, token-identical, and the registry takes the worker out until a probe succeeds); an
// attempt whose worker the registry took out (failed probes) is abandoned the same way; while
// the prefill runs, the decode reservation's lease is renewed every lease_renew_interval. When
// every worker that could take the request is full (no free slot, or RESOURCE_EXHAUSTED), the
// flow waits (parked, holding its router slot) and is placed again at each tick, until the
// client's deadline or cancel.
//
// Lifetime: Listen() creates a flow waiting for the next Generate call on a completion queue; it
// holds a reference to itself until every operation it started (server and worker side) has
// returned. The host may hold weak references (Abort) and strong ones (its waiting queue).
// Thread-safety: every event (tags from the queue, Start, Abort) is posted to the flow's own
// SerialQueue (common/serial_queue.h) and handled one at a time, by whichever thread posted while
// no other was draining. The handlers' state is confined to that queue: one handler runs at a
// time, and the queue orders them, so it needs no lock of its own.
//
// The pieces: RequestPreparer (preparer.h) prepares the request before the flow starts; the
// worker requests are built by worker_requests.h; each worker call is a WorkerCall
// (worker_call.h) started by StartCall; the client's side is a ClientWriter (client_writer.h)
// over a ClientStream (client_stream.h): the gRPC Generate call (Listen), or an HTTP request
// (Submit, http_api.h), driven the same way.
#ifndef SAMBAY_ROUTER_FLOW_H_
#define SAMBAY_ROUTER_FLOW_H_

#include <grpcpp/alarm.h>
#include <grpcpp/client_context.h>
#include <grpcpp/completion_queue.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/serial_queue.h"
#include "router/client_stream.h"
#include "router/client_writer.h"
#include "router/metrics.h"
#include "router/placement.h"
#include "router/registry.h"
#include "router/request.h"
#include "router/worker_call.h"
#include "sambay/v1/generate.grpc.pb.h"
#include "sambay/v1/worker.pb.h"
#include "tokenizer/stream_decoder.h"

namespace sambay {

struct FlowOptions {
  int migration_limit = 3;
  int prefill_retries = 2;
  absl::Duration stall_timeout = absl::Seconds(5);   // decode: longest wait for the next token
  absl::Duration write_timeout = absl::Seconds(30);  // longest pending write to the client
  int64_t max_pending_output_bytes = 1 << 20;        // output waiting for a slow client
  bool usage_workers = false;  // report worker addresses in usage.workers (internal topology)
  absl::Duration lease_renew_interval = absl::Seconds(5);
  absl::Duration tick = absl::Milliseconds(250);  // the timer that checks the above
};

class RequestFlow;

// What a flow needs from the service that admitted it.
class FlowHost {
 public:
  virtual ~FlowHost() = default;
  // A Generate call arrived: validate it and admit it (Start now, queue, or Reject with the
  // reason). Called once per accepted call, from the flow's queue.
  virtual void FlowAccepted(const std::shared_ptr<RequestFlow>& flow) = 0;
  // The request is complete (its serving slot can go to the next one). Called once, only for a
  // flow that was started.
  virtual void FlowEnded(RequestFlow* flow) = 0;
  // Removes a flow still waiting for a slot; false if it was not waiting (already started).
  virtual bool FlowDequeue(RequestFlow* flow) = 0;
  // gRPC and the worker calls are done with the flow: forget it (it is deleted once the last
  // reference taken by the host is dropped).
  virtual void FlowGone(RequestFlow* flow) = 0;
};

// The services the flow needs (all outlive it).
struct FlowDeps {
  FlowHost* host = nullptr;
  WorkerRegistry* registry = nullptr;
  PlacementPolicy* policy = nullptr;
  RouterMetrics* metrics = nullptr;
  const Tokenizer* tokenizer = nullptr;
  GenerationAsyncBase* service = nullptr;
  std::atomic<int64_t>* live = nullptr;  // counts flow objects (optional)
  FlowOptions options;
};

class RequestFlow : public std::enable_shared_from_this<RequestFlow> {
 public:
  // Creates a flow waiting for the next Generate call on `cq` (it runs on `cq` from then on).
  static void Listen(const FlowDeps& deps, grpc::ServerCompletionQueue* cq);
  // Creates a flow for a request that arrived another way (HTTP): `client` is its stream, and the
  // flow's worker calls and timer run on `cq`. The flow is accepted at once (FlowAccepted).
  static void Submit(const FlowDeps& deps, grpc::ServerCompletionQueue* cq,
                     std::unique_ptr<ClientStream> client, sambay::v1::GenerateRequest request);
  // Handles one event of the completion queue (the tag is a FlowTag).
  static void Dispatch(void* tag, bool ok);
  ~RequestFlow();

  const std::string& request_id() const { return req_.request_id; }
  const sambay::v1::GenerateRequest& request() const { return request_; }
  ClientStream& client() { return *client_; }
  absl::Time received() const { return received_; }
  // Set by the host before Start.
  void SetPrepared(PreparedRequest request) {
    req_ = std::move(request);
    matcher_.emplace(req_.stop_strings);
  }
  // Admitted: place it and start streaming (thread-safe).
  void Start();
  // Ends the stream with finish_reason ABORT (thread-safe; no-op once finished).
  void Abort();
  // Ends the call with `status` before it started (thread-safe; a rejected admission).
  void Reject(absl::Status status);
  // Runs `fn` on the flow's serial queue (thread-safe), e.g. the admission after a prompt was
  // tokenized on another thread. `fn` may call Start or Reject.
  void RunOnQueue(std::function<void()> fn) { Post(std::move(fn)); }

 private:
  RequestFlow(const FlowDeps& deps, grpc::ServerCompletionQueue* cq,
              std::unique_ptr<ClientStream> client);

  using DecodeStream = WorkerCall<sambay::v1::DecodeRequest, sambay::v1::DecodeResponse>;
  using PrefillStream = WorkerCall<sambay::v1::PrefillRequest, sambay::v1::PrefillResponse>;

  enum class Outcome {
    kFinished,      // finish_ set
    kRetryPrefill,  // the prefill worker failed (its tokens so far are kept)
    kRetryDecode,   // the decode worker could not take the sequence (no token lost)
    kMigrate,       // the decode worker failed mid-stream
    kWaitCapacity,  // the worker was full (RESOURCE_EXHAUSTED): wait and place again
    kStop,          // end now with status_ (fatal error, client gone, abort)
  };
  // Where the current attempt is.
  enum class Stage { kIdle, kReserving, kPrefilling, kDecoding, kInPlace, kEnded };

  // Queues `fn` on the serial queue (run on this thread unless another is draining it).
  void Post(std::function<void()> fn);
  // Drops the self-reference once gRPC and every worker call are done with the flow.
  void MaybeRelease();

  // Event handlers (on the queue).
  void OnTag(const FlowTag& tag, bool ok);
  void OnAccept(bool ok);
  void OnServerDone();
  void OnWriteDone(bool ok);
  void OnCallTag(const FlowTag& tag, bool ok);
  void Place();
  void StartInPlace(const WorkerSnapshot& w);
  void StartSplit(const WorkerSnapshot& p, const WorkerSnapshot& d);
  // The prefill call of a split attempt: to the reservation `handle_` on decode_worker_, or,
  // with no reservation (the first token is the last one), with no destination.
  void StartPrefill();
  // No worker has room now, but some could take the request: wait for the next tick.
  void Park();
  void OnDecodeRead(uint64_t id);
  void OnDecodeDone(uint64_t id, const grpc::Status& st);
  void OnPrefillRead(uint64_t id);
  void OnPrefillDone(uint64_t id, const grpc::Status& st);
  void HandleOutcome(Outcome o);
  // Streams tokens; returns false if the stream must end (finished or failed).
  bool Emit(const std::vector<int32_t>& ids,
            const std::vector<const sambay::v1::PositionLogprobs*>& logprobs);
  // Decode-stream tokens or done; returns false if the stream must end.
  bool HandleDecodeMessage(const sambay::v1::DecodeResponse& msg);
  Outcome WorkerError(const grpc::Status& st, const std::string& worker, bool decode_side);
  std::unique_ptr<grpc::ClientContext> NewContext();
  // Starts `request` on `worker` as call *id (a new id) with the stub's PrepareAsync method:
  // `prepare(ctx, request, cq)`. Returns the call, owned by calls_.
  template <class Call, class Prepare>
  Call* StartCall(const std::string& worker, typename Call::RequestType request, Prepare prepare,
                  uint64_t* id);
  void CancelCall(uint64_t id);
  void CancelAll();
  // Ends the request: final message (when finished), metrics, slot freed, worker calls
  // cancelled; the server call finishes once the writes are flushed. Idempotent.
  void End();
  // Adds a message for the client (cutting off a client that lets too much pile up) and pumps.
  void Queue(const sambay::v1::GenerateResponse& msg);
  // Starts the client's next write, or the Finish once ended (counted in server_pending_).
  void PumpWrites();
  // The client does not read its stream: end it (RESOURCE_EXHAUSTED) and cancel the call.
  void SlowClient(const std::string& why);

  // The timer (flow_deadlines.cc).
  void ArmTick();
  void OnTick(bool ok);
  // Stalled streams and workers the registry took out; lease renewal.
  void CheckAttempt(absl::Time now);
  // Ends the current attempt as if `worker` had failed with UNAVAILABLE `why`.
  void AbandonAttempt(const std::string& worker, bool decode_side, const std::string& why);
  void RenewLease();

  const FlowDeps deps_;
  FlowHost& host_;
  WorkerRegistry& registry_;
  PlacementPolicy& policy_;
  RouterMetrics& metrics_;
  const FlowOptions options_;
  grpc::ServerCompletionQueue* const cq_;

  // The client's call.
  const std::unique_ptr<ClientStream> client_;
  sambay::v1::GenerateRequest request_;
  bool listening_ = false;  // a gRPC flow: the next call is listened for once this one arrives
  FlowTag accept_tag_, done_tag_, write_tag_, finish_tag_, tick_tag_;
  ClientWriter out_{client_.get(), &write_tag_, &finish_tag_};  // writes to the client
  grpc::Alarm alarm_;
  bool ticking_ = false;    // the alarm is set (counted in server_pending_)
  bool cut_off_ = false;    // SlowClient ran (once: the write in flight may outlive a tick)
  int server_pending_ = 0;  // server-side operations started and not yet returned
  bool accepted_ = false, server_cancelled_ = false;
  PreparedRequest req_;
  absl::Time received_;

  // Until MaybeRelease. Set by Listen before the flow is shared; then read (and dropped) by
  // MaybeRelease only, inside the queue's RunIfIdle.
  std::shared_ptr<RequestFlow> self_;

  SerialQueue queue_;

  // Everything below is touched only by handlers on the queue.
  StreamDecoder decoder_;
  std::optional<StopMatcher> matcher_;  // set with the prepared request
  std::set<int32_t> special_ids_;
  std::vector<int32_t> generated_;
  bool started_ = false, sent_first_ = false, aborted_ = false, ended_ = false;
  absl::Time first_token_at_, last_token_at_;
  sambay::v1::FinishReason finish_ = sambay::v1::FINISH_REASON_UNSPECIFIED;
  absl::Status status_;
  sambay::v1::Usage usage_;
  std::set<std::string> bad_prefill_, bad_decode_;
  int migrations_ = 0, prefill_failures_ = 0;

  // Worker calls not yet done (gRPC still refers to them), by id.
  std::map<uint64_t, std::unique_ptr<WorkerCallBase>> calls_;
  uint64_t next_call_id_ = 1;
  // The current attempt.
  Stage stage_ = Stage::kIdle;
  uint64_t decode_id_ = 0, prefill_id_ = 0;
  std::string handle_;  // the decode reservation's handle
  DecodeStream* decode_ = nullptr;
  PrefillStream* prefill_ = nullptr;
  std::string decode_worker_, prefill_worker_;
  int64_t consumed_ = 0;        // tokens the attempt prefills
  bool got_first_ = false;      // the attempt's prefill produced its first token
  bool decode_failed_ = false;  // the decode call ended while the prefill was running
  grpc::Status decode_status_;  // ... with this status
  bool inplace_first_ = true;   // in place: no token yet (queued prefill tokens counted)
  bool prefill_only_ = false;   // split attempt without a reservation
  bool parked_ = false;         // waiting for a worker with room (Park)
  absl::Time last_progress_;    // last message of the decoding stream
  absl::Time last_renew_;       // last lease renewal (or the reservation)
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_FLOW_H_
