// Scheduler: continuous batching of one model replica (docs/design.md "Request path",
// docs/worker.md).
//
// One engine thread runs steps. A step is two EngineBackend::Forward calls: one batched over
// every running sequence, one decode token each (they all advance together), then one over the
// next chunk (at most prefill_chunk tokens) of the oldest admitted prompt. They are separate so
// that neither changes the other's arithmetic: a token never depends on what else runs.
// Sequences join the running batch and leave it only at step boundaries. A long prompt is cut
// into chunks that ride along with the decode rows, so running streams keep making progress
// (one token per step) while it is prefilled; prompts are prefilled in admission order.
//
// Admission is immediate and bounded: a request is admitted only if a slot is free (at most
// max_running admitted sequences, whatever their phase) and the state memory for
// prompt + max_new_tokens tokens fits in the budget; otherwise RESOURCE_EXHAUSTED at once.
// Nothing waits in an unbounded queue. Draining refuses new work with UNAVAILABLE.
//
// Every admitted sequence is freed exactly once (slot and reserved memory returned, state
// released) when it finishes, fails, is cancelled or released, when its lease expires, or,
// for a Prefill, when the handler Retires it after the push.
//
// Ownership: borrows the engine backend (or the CPU model) and metrics (must outlive the
// scheduler); owns the engine
// thread and the sequences' states while they run.
// Thread-safety: every public method is thread-safe. mu_ guards the admission bookkeeping
// (admitted_, handles_, prefill_queue_, running_, used_bytes_, next_id_, stop_) and every
// admitted Sequence's `sched` fields (and its engine.prefill_pos writes); the engine thread runs
// Forward with mu_ released. Lock order: mu_ before a Sequence's own mutex.
#ifndef SAMBAY_WORKER_SCHEDULER_H_
#define SAMBAY_WORKER_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "engine/backend.h"
#include "engine/model.h"
#include "worker/metrics.h"
#include "worker/sequence.h"

namespace sambay {

struct SchedulerOptions {
  int64_t max_running = 64;
  int64_t max_context = 0;         // tokens (prompt + generated) per sequence; > 0
  int64_t state_budget_bytes = 0;  // > 0
  int64_t prefill_chunk = 512;     // > 0
  absl::Duration lease = absl::Seconds(30);
};

struct LoadSnapshot {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t queued_prefill_tokens = 0;
  int64_t free_slots = 0;
  int64_t state_bytes_used = 0;
  int64_t state_bytes_total = 0;
  int64_t free_kv_blocks = 0;
  bool draining = false;
};

class Scheduler {
 public:
  // The CPU model through a CpuBackend owned by the scheduler.
  Scheduler(Model& model, const SchedulerOptions& options, WorkerMetrics* metrics);
  Scheduler(EngineBackend& engine, const SchedulerOptions& options, WorkerMetrics* metrics);
  ~Scheduler();  // ends every sequence with UNAVAILABLE and joins the engine thread

  const SchedulerOptions& options() const { return options_; }

  // State memory reserved for a sequence of `tokens` tokens: the fixed part (Mamba states,
  // SWA rings) plus the global K/V blocks for that many tokens.
  int64_t StateBytesFor(int64_t tokens) const;
  int64_t state_bytes_fixed() const { return fixed_bytes_; }
  int64_t state_bytes_per_block() const { return block_bytes_; }

  // INVALID_ARGUMENT naming the field (prompt ids, sizes vs the context, sampling, stop ids).
  absl::Status Validate(const SequenceRequest& request) const;

  // Validates and admits. kImported: registers the handle (ALREADY_EXISTS if live) and starts
  // its lease. Others: queued for prefill. RESOURCE_EXHAUSTED when full, UNAVAILABLE when
  // draining.
  absl::StatusOr<std::shared_ptr<Sequence>> Admit(SequenceRequest request) ABSL_LOCKS_EXCLUDED(mu_);

  // PushState side. BeginReceive claims a reservation for one transfer (NOT_FOUND for an unknown
  // or ended handle; FAILED_PRECONDITION if a transfer is already under way for it).
  absl::StatusOr<std::shared_ptr<Sequence>> BeginReceive(const std::string& handle)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Hands the imported state over: checks it against the reservation (tokens, pending token,
  // history) and joins the running batch. On error the sequence fails with that error.
  absl::Status CompleteReceive(const std::shared_ptr<Sequence>& seq,
                               std::unique_ptr<SequenceState> state, double import_seconds,
                               int64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);
  // Restarts the lease of reservation `handle` (now + options().lease) while it waits for its
  // state; OK without effect once the state is arriving (the lease has stopped). NOT_FOUND for
  // an unknown or ended handle.
  absl::Status RenewLease(const std::string& handle) ABSL_LOCKS_EXCLUDED(mu_);
  // The status a sequence ended with, or OK while it is live.
  absl::Status EndStatus(const std::shared_ptr<Sequence>& seq) const;

  // Ends a live sequence with `status` (a kError event), freeing it at the next step boundary
  // (or now, if the engine is not running it). `failure_reason` (a WorkerMetrics failure
  // reason) is counted when not empty. No-op if it already ended.
  void Fail(const std::shared_ptr<Sequence>& seq, const absl::Status& status,
            const std::string& failure_reason = "") ABSL_LOCKS_EXCLUDED(mu_);
  // After a Prefill's kStateReady: frees the slot and memory (the handler released the state).
  void Retire(const std::shared_ptr<Sequence>& seq, FinishKind kind) ABSL_LOCKS_EXCLUDED(mu_);
  // Release by handle or by request id; returns the number of sequences ended (CANCELLED).
  int Release(const std::string& handle, const std::string& request_id) ABSL_LOCKS_EXCLUDED(mu_);

  LoadSnapshot Load() const ABSL_LOCKS_EXCLUDED(mu_);
  void StartDrain();
  bool draining() const { return draining_.load(); }
  // Admitted sequences not yet freed.
  int64_t active() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Phase = Sequence::Sched::Phase;
  using SeqPtr = std::shared_ptr<Sequence>;

  void Start();  // constructor body: sizes, gauges, the engine thread
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  // What one engine step carries from phase to phase (engine thread only).
  struct StepWork {
    absl::Time start;                  // the step began
    std::vector<ForwardSegment> segs;  // the decode rows, then the prefill chunk if any
    int64_t chunk = 0;                 // prompt tokens in the prefill chunk
    bool last_chunk = false;           // the chunk ends the prompt
    bool select = false;               // the decode batch ran ForwardArgmax
    std::vector<bool> want;            // with select: which decode rows need their logits
    std::vector<int32_t> greedy;       // with select: each decode row's greedy token
    std::vector<float> logits, prefill_logits;
    absl::Status status;    // the first failed forward's error, else OK
    absl::Time decode_end;  // the decode forward returned (start if none ran)
    absl::Time end;         // the forwards returned
    std::vector<std::pair<SeqPtr, SeqFinish>> finished;  // those that finished (stop id or length)
  };

  // One engine step over `decode` (the running batch) and the next chunk of `prefill` (the
  // oldest queued prompt; may be null). With mu_ released it builds the segments, runs the decode
  // batch and then the prefill chunk, emits a token for each decode row and for a prompt's last
  // chunk, and observes the step's metrics; then, under mu_, it ends the sequences that finished
  // and hands over or starts running a fully prefilled prompt, or, if a forward failed, ends
  // every sequence of the step with INTERNAL.
  void Step(const std::vector<SeqPtr>& decode, const SeqPtr& prefill) ABSL_LOCKS_EXCLUDED(mu_);
  // Step's phases, in order. BuildStep: the forward segments, and a prompt's state and sampler
  // on its first chunk.
  void BuildStep(const std::vector<SeqPtr>& decode, const SeqPtr& prefill, StepWork* w)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Runs the decode batch, then (if that succeeded) the prefill chunk.
  void RunStep(const std::vector<SeqPtr>& decode, const SeqPtr& prefill, StepWork* w)
      ABSL_LOCKS_EXCLUDED(mu_);
  // After a successful forward: emits each decode row's token and, on the last chunk, the
  // prompt's first token; collects the sequences that finished.
  void SampleStep(const std::vector<SeqPtr>& decode, const SeqPtr& prefill, StepWork* w)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Observes the step's batch size, decode time and token counts.
  void RecordStepMetrics(const std::vector<SeqPtr>& decode, const StepWork& w)
      ABSL_LOCKS_EXCLUDED(mu_);
  // With mu_ held: advances the prompt, moves a fully prefilled one on, ends the finished
  // sequences (or, if a forward failed, the step's sequences).
  void CommitStepLocked(const std::vector<SeqPtr>& decode, const SeqPtr& prefill, const StepWork& w)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // With mu_ held: ends every sequence of a step whose forward failed with `st`.
  void FailStepLocked(const std::vector<SeqPtr>& decode, const SeqPtr& prefill,
                      const absl::Status& st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Samples the next token of `seq` from `row`, pushes it; true if the sequence is finished.
  bool SampleAndEmit(Sequence& seq, absl::Span<const float> row, SeqFinish* finish);
  // Emits `tok` (drawn from `row`, or the backend's greedy token with `row` empty); true when
  // the sequence ends (stop id or max_new_tokens), with *finish set.
  bool Emit(Sequence& seq, int32_t tok, absl::Span<const float> row, SeqFinish* finish);
  // With mu_ held: ends `seq` (final event, metrics, slot and memory freed). Sequences in the
  // prefill queue or the running batch are ended only by the engine thread.
  void EndLocked(const SeqPtr& seq, const absl::Status& status, FinishKind kind)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // With mu_ held: ends every sequence in the engine's lists that was asked to end.
  void ReapLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireLeasesLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::unique_ptr<EngineBackend> owned_engine_;  // with the Model& constructor
  EngineBackend& model_;
  const SchedulerOptions options_;
  WorkerMetrics* metrics_;
  int64_t fixed_bytes_ = 0;
  int64_t block_bytes_ = 0;

  mutable Mutex mu_;
  CondVar cv_;  // signalled on new work, a sequence asked to end, draining or stopping
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> draining_{false};
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t used_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, SeqPtr> admitted_ ABSL_GUARDED_BY(mu_);    // admitted, not freed
  std::map<std::string, SeqPtr> handles_ ABSL_GUARDED_BY(mu_);  // live reservations
  std::deque<SeqPtr> prefill_queue_ ABSL_GUARDED_BY(mu_);
  std::vector<SeqPtr> running_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace sambay

#endif  // SAMBAY_WORKER_SCHEDULER_H_
