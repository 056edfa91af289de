// Sequence: one request's life inside a worker, shared between the scheduler's engine thread
// (which runs it) and the RPC handler thread (which streams its events).
//
// Events flow one way, engine -> handler, through a small queue (bounded by the request's
// max_new_tokens, so a slow reader never makes the engine wait). The handler asks for an end
// through Scheduler::Fail (or Retire, after a Prefill's push); only the scheduler changes a
// sequence's phase or frees it.
//
// Ownership: shared_ptr held by the scheduler (while admitted) and the handler.
// Thread-safety: mu_ guards the event queue, the milestone times and the end status. `engine`
// fields are touched only by the engine thread while the sequence is in the scheduler's prefill
// queue or running batch, and by the handler after kStateReady (the scheduler no longer runs it
// then). `sched` is guarded by the owning Scheduler's mu_ (another object's mutex, which the
// annotations cannot name here; Scheduler's methods that touch it hold or require that mutex).
#ifndef SAMBAY_WORKER_SEQUENCE_H_
#define SAMBAY_WORKER_SEQUENCE_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "engine/sampler.h"
#include "engine/state.h"
#include "worker/logprobs.h"

namespace sambay {

enum class SeqMode {
  kPrefillOnly,  // run the prompt, sample one token, hand the state to the handler (Prefill)
  kLocal,        // run the prompt, then decode here (Decode with local_prompt)
  kImported,     // wait for a pushed state, then decode (Decode with handle)
};

// What the handler asks for; validated by Scheduler::Validate before admission.
struct SequenceRequest {
  std::string request_id;
  SeqMode mode = SeqMode::kLocal;
  std::string handle;            // kImported: the reservation handle
  std::vector<int32_t> prompt;   // kPrefillOnly / kLocal: tokens to run
  int64_t prompt_tokens = 0;     // kImported: tokens the pushed state has consumed
  std::vector<int32_t> history;  // kImported: tokens the state consumed (penalties)
  SamplingParams sampling;
  uint64_t rng_draws = 0;         // kPrefillOnly / kLocal: draws already made
  int64_t max_new_tokens = 1;     // tokens this sequence may emit here
  std::vector<int32_t> stop_ids;  // sorted and unique once admitted (Scheduler::Admit)
  bool logprobs = false;
  int top_logprobs = 0;
};

enum class SeqFinish { kStop, kLength };

struct SeqEvent {
  enum Kind { kToken, kStateReady, kDone, kError };
  Kind kind = kToken;
  int32_t token = -1;
  std::optional<TokenLogprobs> logprobs;
  SeqFinish finish = SeqFinish::kLength;  // kDone
  absl::Status status;                    // kError
};

// Times of the milestones (absl::InfinitePast() until reached).
struct SeqTimes {
  absl::Time admitted = absl::InfinitePast();
  absl::Time first_forward = absl::InfinitePast();  // first prefill chunk or state arrival
  absl::Time prefilled = absl::InfinitePast();      // first token sampled (prefill modes)
  absl::Time running = absl::InfinitePast();        // joined the decode batch
  absl::Time finished = absl::InfinitePast();
  double import_seconds = 0;
  int64_t transfer_bytes = 0;
};

class Sequence {
 public:
  Sequence(uint64_t id, SequenceRequest request) : id_(id), request_(std::move(request)) {}

  uint64_t id() const { return id_; }
  const SequenceRequest& request() const { return request_; }

  // Next event, waiting at most `timeout`; nullopt on timeout.
  std::optional<SeqEvent> Next(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_);
  // Every event queued now (possibly none), without waiting.
  std::vector<SeqEvent> Drain() ABSL_LOCKS_EXCLUDED(mu_);

  // After kStateReady: the prefilled state, now owned by the caller.
  std::unique_ptr<SequenceState> TakeState() { return std::move(engine.state); }

  // Milestone times; read after the sequence ended (or for the ones already reached).
  SeqTimes times() const ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return times_;
  }

  // ---- Below: the scheduler's side. ----
  void Push(SeqEvent event) ABSL_LOCKS_EXCLUDED(mu_);
  void SetTime(absl::Time SeqTimes::*field, absl::Time t) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    times_.*field = t;
  }
  void SetTransfer(double import_seconds, int64_t bytes) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    times_.import_seconds = import_seconds;
    times_.transfer_bytes = bytes;
  }

  // The status the sequence ended with (kDone: OK), or nullopt while it is live.
  std::optional<absl::Status> end_status() const ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return end_;
  }

  // Engine-thread state (see the thread-safety note above).
  struct Engine {
    std::unique_ptr<SequenceState> state;
    std::unique_ptr<Sampler> sampler;
    std::vector<int32_t> history;  // penalties' history (prompt + generated)
    int64_t prefill_pos = 0;       // prompt tokens already run; written under the scheduler's
                                   // mutex (Scheduler::Load reads it there)
    int32_t pending = -1;          // sampled token the next decode step consumes
    int64_t emitted = 0;
  } engine;

  // Scheduler bookkeeping, guarded by the scheduler's mutex.
  struct Sched {
    enum class Phase { kReserved, kReceiving, kQueued, kRunning, kHandedOver, kEnded };
    Phase phase = Phase::kQueued;
    int64_t reserved_bytes = 0;
    absl::Time lease_deadline = absl::InfiniteFuture();
    bool end_requested = false;  // the engine ends it at the next step boundary
    absl::Status end_request_status;
  } sched;

 private:
  const uint64_t id_;
  const SequenceRequest request_;
  mutable Mutex mu_;
  CondVar cv_;  // signalled when an event is queued
  std::deque<SeqEvent> events_ ABSL_GUARDED_BY(mu_);
  SeqTimes times_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> end_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sambay

#endif  // SAMBAY_WORKER_SEQUENCE_H_
