#include "worker/scheduler.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/check.h"
#include "common/limits.h"
#include "common/log.h"

namespace sambay {

// ---- Sequence event queue --------------------------------------------------------------

void Sequence::Push(SeqEvent event) {
  {
    MutexLock lock(&mu_);
    if (event.kind == SeqEvent::kDone) end_ = absl::OkStatus();
    if (event.kind == SeqEvent::kError) end_ = event.status;
    events_.push_back(std::move(event));
  }
  cv_.SignalAll();
}

std::optional<SeqEvent> Sequence::Next(absl::Duration timeout) {
  MutexLock lock(&mu_);
  const absl::Time deadline = absl::Now() + timeout;
  while (events_.empty()) {
    if (cv_.WaitWithDeadline(&mu_, deadline)) break;
  }
  if (events_.empty()) return std::nullopt;
  // Move-assigned, not move-constructed: GCC's -O3 -Wmaybe-uninitialized reports a false
  // positive on the move construction of the event's optional logprobs here.
  SeqEvent e;
  e = std::move(events_.front());
  events_.pop_front();
  return e;
}

std::vector<SeqEvent> Sequence::Drain() {
  MutexLock lock(&mu_);
  std::vector<SeqEvent> out(std::make_move_iterator(events_.begin()),
                            std::make_move_iterator(events_.end()));
  events_.clear();
  return out;
}

// ---- Scheduler ----------------------------------------------------------------------------

namespace {

bool HasPenalties(const SamplingParams& p) {
  return p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f;
}

// Whether a token of this request needs its logits row on the host: anything but plain greedy
// (sampling, penalties, logprobs).
bool NeedsLogits(const SequenceRequest& r) {
  return r.sampling.temperature != 0.0f || HasPenalties(r.sampling) || r.logprobs;
}

absl::Status CheckIds(absl::Span<const int32_t> ids, int64_t vocab, const char* field) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, "[", i, "]: token id ", ids[i], " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

// Validate's checks of what to generate: max_new_tokens, sampling, stop ids, top_logprobs and
// rng_draws (against the context length `ctx`).
absl::Status CheckGeneration(const SequenceRequest& r, int64_t vocab, int64_t ctx) {
  if (r.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens: must be >= 1, got ", r.max_new_tokens));
  }
  if (absl::Status s = ValidateSamplingParams(r.sampling); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.", s.message()));
  }
  if (r.stop_ids.size() > kMaxStopTokenIds) {
    return absl::InvalidArgumentError(
        absl::StrCat("stop_token_ids: ", r.stop_ids.size(), " ids, at most ", kMaxStopTokenIds));
  }
  if (absl::Status s = CheckIds(r.stop_ids, vocab, "stop_token_ids"); !s.ok()) return s;
  if (r.top_logprobs < 0 || r.top_logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_logprobs: must be in [0, ", kMaxTopLogprobs, "], got ", r.top_logprobs));
  }
  // A sequence draws at most one number per token it made, so more draws than the context are
  // impossible; skipping them (Sampler::Advance, one step each on the engine thread) would hang
  // the engine for 2^64 steps.
  if (r.rng_draws > static_cast<uint64_t>(ctx)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rng_draws: ", r.rng_draws, " exceeds the context limit ", ctx));
  }
  return absl::OkStatus();
}

// Validate's checks of the prompt for r.mode (a pushed state's handle, prompt_tokens and
// history, or the prompt's ids). On success *tokens is the sequence's length before its first
// new token is made (a pushed state's pending token included).
absl::Status CheckPrompt(const SequenceRequest& r, int64_t vocab, int64_t* tokens) {
  if (r.mode == SeqMode::kImported) {
    if (r.handle.empty() || r.handle.size() > kMaxHandleBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("handle: must be 1 to ", kMaxHandleBytes, " bytes, got ", r.handle.size()));
    }
    if (r.prompt_tokens < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt_tokens: must be >= 1, got ", r.prompt_tokens));
    }
    if (!r.history.empty() && static_cast<int64_t>(r.history.size()) != r.prompt_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("history: must have prompt_tokens = ", r.prompt_tokens, " entries, got ",
                       r.history.size()));
    }
    if (r.history.empty() && HasPenalties(r.sampling)) {
      return absl::InvalidArgumentError(
          "history: required when repetition_penalty, presence_penalty or frequency_penalty is "
          "set");
    }
    if (absl::Status s = CheckIds(r.history, vocab, "history"); !s.ok()) return s;
    // The pushed state holds prompt_tokens consumed plus one pending token.
    *tokens = r.prompt_tokens + 1;
    return absl::OkStatus();
  }
  if (r.prompt.empty()) {
    return absl::InvalidArgumentError(r.mode == SeqMode::kLocal ? "local_prompt: must not be empty"
                                                                : "token_ids: must not be empty");
  }
  const char* field = r.mode == SeqMode::kLocal ? "local_prompt" : "token_ids";
  if (absl::Status s = CheckIds(r.prompt, vocab, field); !s.ok()) return s;
  *tokens = static_cast<int64_t>(r.prompt.size());
  return absl::OkStatus();
}

}  // namespace

Scheduler::Scheduler(Model& model, const SchedulerOptions& options, WorkerMetrics* metrics)
    : owned_engine_(std::make_unique<CpuBackend>(model)),
      model_(*owned_engine_),
      options_(options),
      metrics_(metrics) {
  Start();
}

Scheduler::Scheduler(EngineBackend& engine, const SchedulerOptions& options, WorkerMetrics* metrics)
    : model_(engine), options_(options), metrics_(metrics) {
  Start();
}

void Scheduler::Start() {
  SAMBAY_CHECK(options_.max_running > 0 && options_.max_context > 0 &&
               options_.state_budget_bytes > 0 && options_.prefill_chunk > 0);
  fixed_bytes_ = model_.NewState()->memory_bytes();
  block_bytes_ = kKvBlockTokens * model_.config().kv_dim() * 2 * 4;
  if (metrics_ != nullptr) {
    metrics_->slots_total.Set(static_cast<double>(options_.max_running));
    metrics_->state_total_bytes.Set(static_cast<double>(options_.state_budget_bytes));
  }
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  cv_.SignalAll();
  thread_.join();
  MutexLock lock(&mu_);
  const absl::Status st = absl::UnavailableError("worker is shutting down");
  while (!admitted_.empty()) {
    SeqPtr seq = admitted_.begin()->second;
    EndLocked(seq, st, FinishKind::kError);
  }
  prefill_queue_.clear();
  running_.clear();
}

int64_t Scheduler::StateBytesFor(int64_t tokens) const {
  const int64_t blocks = (std::max<int64_t>(tokens, 0) + kKvBlockTokens - 1) / kKvBlockTokens;
  return fixed_bytes_ + blocks * block_bytes_;
}

absl::Status Scheduler::Validate(const SequenceRequest& r) const {
  const int64_t vocab = model_.config().vocab_size;
  const int64_t ctx = options_.max_context;
  if (absl::Status s = CheckGeneration(r, vocab, ctx); !s.ok()) return s;
  int64_t tokens = 0;
  if (absl::Status s = CheckPrompt(r, vocab, &tokens); !s.ok()) return s;
  // The whole sequence (prompt, then every new token; with a pushed state its pending token
  // counts as new) must fit in the context.
  if (r.mode == SeqMode::kPrefillOnly && tokens + 1 > ctx) {
    return absl::InvalidArgumentError(
        absl::StrCat("token_ids: ", tokens,
                     " tokens leave no room for a new token in the context "
                     "length ",
                     ctx));
  }
  if (tokens + r.max_new_tokens > ctx) {
    const int64_t prompt = r.mode == SeqMode::kImported ? r.prompt_tokens : tokens;
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens: prompt (", prompt, " tokens) + new tokens (",
                     tokens - prompt + r.max_new_tokens, ") exceeds the context length ", ctx));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Sequence>> Scheduler::Admit(SequenceRequest request) {
  if (absl::Status s = Validate(request); !s.ok()) return s;
  // Sorted and unique: Emit looks each new token up by binary search on the engine thread.
  std::sort(request.stop_ids.begin(), request.stop_ids.end());
  request.stop_ids.erase(std::unique(request.stop_ids.begin(), request.stop_ids.end()),
                         request.stop_ids.end());
  const int64_t total = request.mode == SeqMode::kImported
                            ? request.prompt_tokens + 1 + request.max_new_tokens
                            : static_cast<int64_t>(request.prompt.size()) + request.max_new_tokens;
  const int64_t bytes = StateBytesFor(std::min(total, options_.max_context));
  MutexLock lock(&mu_);
  if (draining_.load() || stop_) {
    if (metrics_) metrics_->Reject(RejectReason::kDraining);
    return absl::UnavailableError("worker is draining: no new sequences");
  }
  if (static_cast<int64_t>(admitted_.size()) >= options_.max_running) {
    if (metrics_) metrics_->Reject(RejectReason::kSlots);
    return absl::ResourceExhaustedError(absl::StrCat(
        "no free sequence slot (", options_.max_running, " in use); retry on another worker"));
  }
  if (used_bytes_ + bytes > options_.state_budget_bytes) {
    if (metrics_) metrics_->Reject(RejectReason::kMemory);
    return absl::ResourceExhaustedError(
        absl::StrCat("not enough state memory: need ", bytes, " bytes, ",
                     options_.state_budget_bytes - used_bytes_, " free"));
  }
  if (request.mode == SeqMode::kImported && handles_.count(request.handle) != 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("handle: \"", request.handle, "\" is already reserved"));
  }
  auto seq = std::make_shared<Sequence>(next_id_++, std::move(request));
  const absl::Time now = absl::Now();
  seq->SetTime(&SeqTimes::admitted, now);
  seq->sched.reserved_bytes = bytes;
  used_bytes_ += bytes;
  admitted_[seq->id()] = seq;
  if (seq->request().mode == SeqMode::kImported) {
    seq->sched.phase = Phase::kReserved;
    seq->sched.lease_deadline = now + options_.lease;
    handles_[seq->request().handle] = seq;
  } else {
    seq->sched.phase = Phase::kQueued;
    prefill_queue_.push_back(seq);
  }
  UpdateGaugesLocked();
  cv_.SignalAll();
  return seq;
}

absl::StatusOr<std::shared_ptr<Sequence>> Scheduler::BeginReceive(const std::string& handle) {
  MutexLock lock(&mu_);
  auto it = handles_.find(handle);
  if (it == handles_.end()) {
    return absl::NotFoundError(absl::StrCat("handle: no live reservation \"", handle, "\""));
  }
  SeqPtr seq = it->second;
  if (seq->sched.phase != Phase::kReserved) {
    return absl::FailedPreconditionError(
        absl::StrCat("handle: a state transfer for \"", handle, "\" is already under way"));
  }
  seq->sched.phase = Phase::kReceiving;
  // The state is arriving: the lease no longer runs (PushState's chunk deadline bounds the rest
  // of the transfer), so a long transfer cannot expire mid-way.
  seq->sched.lease_deadline = absl::InfiniteFuture();
  return seq;
}

absl::Status Scheduler::RenewLease(const std::string& handle) {
  MutexLock lock(&mu_);
  auto it = handles_.find(handle);
  if (it == handles_.end()) {
    return absl::NotFoundError(absl::StrCat("handle: no live reservation \"", handle, "\""));
  }
  if (it->second->sched.phase == Phase::kReserved) {
    it->second->sched.lease_deadline = absl::Now() + options_.lease;
  }
  return absl::OkStatus();
}

absl::Status Scheduler::CompleteReceive(const std::shared_ptr<Sequence>& seq,
                                        std::unique_ptr<SequenceState> state, double import_seconds,
                                        int64_t bytes) {
  const SequenceRequest& r = seq->request();
  absl::Status bad;
  if (state->num_tokens != r.prompt_tokens) {
    bad = absl::InvalidArgumentError(absl::StrCat(
        "state: has ", state->num_tokens, " tokens, the reservation expects ", r.prompt_tokens));
  } else if (state->last_token < 0 || state->last_token >= model_.config().vocab_size) {
    bad = absl::InvalidArgumentError(
        absl::StrCat("state: pending token ", state->last_token, " is outside the vocabulary"));
  }
  MutexLock lock(&mu_);
  if (seq->sched.phase != Phase::kReceiving) {
    auto end = seq->end_status();
    return end.has_value() && !end->ok() ? *end : absl::CancelledError("the reservation was ended");
  }
  if (!bad.ok()) {
    if (metrics_) metrics_->Failure("invalid_state");
    EndLocked(seq, bad, FinishKind::kError);
    return bad;
  }
  seq->SetTransfer(import_seconds, bytes);
  const absl::Time now = absl::Now();
  seq->SetTime(&SeqTimes::first_forward, now);
  seq->SetTime(&SeqTimes::running, now);
  if (metrics_) {
    metrics_->queue_seconds.Observe(absl::ToDoubleSeconds(now - seq->times().admitted));
  }
  auto& eng = seq->engine;
  eng.sampler = std::make_unique<Sampler>(r.sampling);
  eng.sampler->set_rng_state(state->rng_state);
  if (HasPenalties(r.sampling)) {
    eng.history = r.history;
    eng.history.push_back(state->last_token);
  }
  eng.pending = state->last_token;
  eng.state = std::move(state);
  handles_.erase(r.handle);
  seq->sched.phase = Phase::kRunning;
  seq->sched.lease_deadline = absl::InfiniteFuture();
  running_.push_back(seq);
  UpdateGaugesLocked();
  cv_.SignalAll();
  return absl::OkStatus();
}

absl::Status Scheduler::EndStatus(const std::shared_ptr<Sequence>& seq) const {
  auto end = seq->end_status();
  return end.has_value() ? *end : absl::OkStatus();
}

void Scheduler::Fail(const std::shared_ptr<Sequence>& seq, const absl::Status& status,
                     const std::string& failure_reason) {
  MutexLock lock(&mu_);
  Phase p = seq->sched.phase;
  if (p == Phase::kEnded || seq->sched.end_requested) return;
  if (metrics_ && !failure_reason.empty()) metrics_->Failure(failure_reason);
  const FinishKind kind =
      status.code() == absl::StatusCode::kCancelled ? FinishKind::kCancelled : FinishKind::kError;
  if (p == Phase::kQueued || p == Phase::kRunning) {
    seq->sched.end_requested = true;
    seq->sched.end_request_status = status;
    cv_.SignalAll();
    return;
  }
  EndLocked(seq, status, kind);
}

void Scheduler::Retire(const std::shared_ptr<Sequence>& seq, FinishKind kind) {
  MutexLock lock(&mu_);
  if (seq->sched.phase != Phase::kHandedOver) return;
  EndLocked(
      seq,
      kind == FinishKind::kHandedOff ? absl::OkStatus() : absl::CancelledError("state push ended"),
      kind);
}

int Scheduler::Release(const std::string& handle, const std::string& request_id) {
  std::vector<SeqPtr> targets;
  {
    MutexLock lock(&mu_);
    for (const auto& [id, seq] : admitted_) {
      if ((!handle.empty() && seq->request().handle == handle) ||
          (!request_id.empty() && seq->request().request_id == request_id)) {
        targets.push_back(seq);
      }
    }
  }
  for (const SeqPtr& seq : targets) Fail(seq, absl::CancelledError("released"));
  return static_cast<int>(targets.size());
}

LoadSnapshot Scheduler::Load() const {
  MutexLock lock(&mu_);
  LoadSnapshot l;
  l.running = static_cast<int64_t>(running_.size());
  l.waiting = static_cast<int64_t>(admitted_.size()) - l.running;
  for (const SeqPtr& s : prefill_queue_) {
    l.queued_prefill_tokens +=
        static_cast<int64_t>(s->request().prompt.size()) - s->engine.prefill_pos;
  }
  l.free_slots = options_.max_running - static_cast<int64_t>(admitted_.size());
  l.state_bytes_used = used_bytes_;
  l.state_bytes_total = options_.state_budget_bytes;
  l.free_kv_blocks = std::max<int64_t>(0, options_.state_budget_bytes - used_bytes_) /
                     std::max<int64_t>(1, block_bytes_);
  l.draining = draining_.load();
  return l;
}

void Scheduler::StartDrain() {
  draining_.store(true);
  cv_.SignalAll();
}

int64_t Scheduler::active() const {
  MutexLock lock(&mu_);
  return static_cast<int64_t>(admitted_.size());
}

void Scheduler::EndLocked(const SeqPtr& seq, const absl::Status& status, FinishKind kind) {
  if (seq->sched.phase == Phase::kEnded) return;
  const Phase was = seq->sched.phase;
  seq->sched.phase = Phase::kEnded;
  used_bytes_ -= seq->sched.reserved_bytes;
  seq->sched.reserved_bytes = 0;
  admitted_.erase(seq->id());
  if (!seq->request().handle.empty()) {
    auto it = handles_.find(seq->request().handle);
    if (it != handles_.end() && it->second == seq) handles_.erase(it);
  }
  // The state is released here unless a Prefill handler took it (kHandedOver).
  if (was != Phase::kHandedOver) {
    seq->engine.state.reset();
    seq->engine.sampler.reset();
  }
  seq->SetTime(&SeqTimes::finished, absl::Now());
  if (metrics_) metrics_->Finished(kind);
  SeqEvent ev;
  if (status.ok()) {
    ev.kind = SeqEvent::kDone;
    ev.finish = kind == FinishKind::kStop ? SeqFinish::kStop : SeqFinish::kLength;
  } else {
    ev.kind = SeqEvent::kError;
    ev.status = status;
  }
  seq->Push(std::move(ev));
  UpdateGaugesLocked();
}

void Scheduler::ReapLocked() {
  auto reap = [&](const SeqPtr& s) {
    mu_.AssertHeld();  // called by remove_if below, with mu_ held
    if (!s->sched.end_requested) return false;
    const absl::Status st = s->sched.end_request_status;
    EndLocked(
        s, st,
        st.code() == absl::StatusCode::kCancelled ? FinishKind::kCancelled : FinishKind::kError);
    return true;
  };
  running_.erase(std::remove_if(running_.begin(), running_.end(), reap), running_.end());
  prefill_queue_.erase(std::remove_if(prefill_queue_.begin(), prefill_queue_.end(), reap),
                       prefill_queue_.end());
  UpdateGaugesLocked();  // EndLocked ran while the lists still held the reaped sequences
}

void Scheduler::ExpireLeasesLocked(absl::Time now) {
  std::vector<SeqPtr> expired;
  for (const auto& [h, seq] : handles_) {
    if (seq->sched.lease_deadline < now) expired.push_back(seq);
  }
  for (const SeqPtr& seq : expired) {
    Log(LogLevel::kWarning, "scheduler", "lease expired",
        {{"request_id", seq->request().request_id}, {"handle", seq->request().handle}});
    if (metrics_) metrics_->Failure("lease_expired");
    EndLocked(seq,
              absl::DeadlineExceededError(
                  absl::StrCat("lease expired: the state for handle \"", seq->request().handle,
                               "\" did not arrive within ", absl::FormatDuration(options_.lease))),
              FinishKind::kError);
  }
}

void Scheduler::UpdateGaugesLocked() {
  if (metrics_ == nullptr) return;
  const double running = static_cast<double>(running_.size());
  metrics_->running.Set(running);
  metrics_->waiting.Set(static_cast<double>(admitted_.size()) - running);
  metrics_->slots_used.Set(static_cast<double>(admitted_.size()));
  metrics_->state_used_bytes.Set(static_cast<double>(used_bytes_));
}

void Scheduler::Loop() {
  MutexLock lock(&mu_);
  for (;;) {
    ExpireLeasesLocked(absl::Now());
    ReapLocked();
    if (stop_) return;
    if (running_.empty() && prefill_queue_.empty()) {
      // Wake for new work, or in time for the next lease check.
      cv_.WaitWithTimeout(&mu_, absl::Milliseconds(handles_.empty() ? 500 : 20));
      continue;
    }
    std::vector<SeqPtr> decode = running_;
    SeqPtr prefill = prefill_queue_.empty() ? nullptr : prefill_queue_.front();
    mu_.Unlock();
    Step(decode, prefill);
    mu_.Lock();
  }
}

bool Scheduler::SampleAndEmit(Sequence& seq, absl::Span<const float> row, SeqFinish* finish) {
  return Emit(seq, seq.engine.sampler->Sample(row, seq.engine.history), row, finish);
}

bool Scheduler::Emit(Sequence& seq, int32_t tok, absl::Span<const float> row, SeqFinish* finish) {
  const SequenceRequest& r = seq.request();
  auto& eng = seq.engine;
  SeqEvent ev;
  ev.kind = SeqEvent::kToken;
  ev.token = tok;
  if (r.logprobs) ev.logprobs = ComputeLogprobs(row, tok, r.top_logprobs);
  if (HasPenalties(r.sampling)) eng.history.push_back(tok);
  eng.pending = tok;
  eng.state->last_token = tok;
  eng.state->rng_state = eng.sampler->rng_state();
  ++eng.emitted;
  seq.Push(std::move(ev));
  if (std::binary_search(r.stop_ids.begin(), r.stop_ids.end(), tok)) {
    *finish = SeqFinish::kStop;
    return true;
  }
  if (eng.emitted >= r.max_new_tokens) {
    *finish = SeqFinish::kLength;
    return true;
  }
  return false;
}

void Scheduler::Step(const std::vector<SeqPtr>& decode, const SeqPtr& prefill) {
  StepWork w;
  BuildStep(decode, prefill, &w);
  RunStep(decode, prefill, &w);
  SampleStep(decode, prefill, &w);
  RecordStepMetrics(decode, w);
  MutexLock lock(&mu_);
  CommitStepLocked(decode, prefill, w);
}

void Scheduler::BuildStep(const std::vector<SeqPtr>& decode, const SeqPtr& prefill, StepWork* w) {
  w->start = absl::Now();
  w->segs.reserve(decode.size() + 1);
  for (const SeqPtr& s : decode) {
    w->segs.push_back({s->engine.state.get(), {&s->engine.pending, 1}, LogitsMode::kLast});
  }
  if (prefill == nullptr) return;
  auto& eng = prefill->engine;
  const SequenceRequest& r = prefill->request();
  if (eng.state == nullptr) {  // first chunk
    eng.state = model_.NewState();
    eng.sampler = std::make_unique<Sampler>(r.sampling);
    eng.sampler->Advance(r.rng_draws);
    if (HasPenalties(r.sampling)) eng.history = r.prompt;
    prefill->SetTime(&SeqTimes::first_forward, w->start);
    if (metrics_) {
      metrics_->queue_seconds.Observe(absl::ToDoubleSeconds(w->start - prefill->times().admitted));
    }
  }
  const int64_t n = static_cast<int64_t>(r.prompt.size());
  w->chunk = std::min(options_.prefill_chunk, n - eng.prefill_pos);
  w->last_chunk = eng.prefill_pos + w->chunk == n;
  w->segs.push_back({eng.state.get(),
                     absl::MakeConstSpan(r.prompt.data() + eng.prefill_pos, w->chunk),
                     w->last_chunk ? LogitsMode::kLast : LogitsMode::kNone});
}

void Scheduler::RunStep(const std::vector<SeqPtr>& decode, const SeqPtr& prefill, StepWork* w) {
  // Two forward calls, decode batch then prefill chunk, so that neither changes the other's
  // arithmetic (Model::Forward's batch invariance): tokens never depend on what else runs.
  w->decode_end = w->start;
  // On a device backend, plain greedy rows come back as token ids only (no logits copy).
  w->select = model_.argmax_on_device() && !decode.empty();
  if (w->select) {
    for (const SeqPtr& s : decode) w->want.push_back(NeedsLogits(s->request()));
  }
  if (!decode.empty()) {
    const auto batch = absl::MakeConstSpan(w->segs.data(), decode.size());
    w->status = w->select ? model_.ForwardArgmax(batch, w->want, &w->logits, &w->greedy)
                          : model_.Forward(batch, &w->logits);
    w->decode_end = absl::Now();
  }
  if (w->status.ok() && prefill != nullptr) {
    w->status =
        model_.Forward(absl::MakeConstSpan(w->segs.data() + decode.size(), 1), &w->prefill_logits);
  }
  w->end = absl::Now();
}

void Scheduler::SampleStep(const std::vector<SeqPtr>& decode, const SeqPtr& prefill, StepWork* w) {
  if (!w->status.ok()) return;
  const int64_t vocab = model_.config().vocab_size;
  size_t row = 0;  // next logits row
  for (size_t i = 0; i < decode.size(); ++i) {
    SeqFinish f;
    bool done;
    if (w->select && !w->want[i]) {
      decode[i]->engine.sampler->Advance(1);  // Sample's one draw per token, kept in step
      done = Emit(*decode[i], w->greedy[i], {}, &f);
    } else {
      done = SampleAndEmit(*decode[i], absl::MakeConstSpan(w->logits.data() + row++ * vocab, vocab),
                           &f);
    }
    if (done) w->finished.emplace_back(decode[i], f);
  }
  if (prefill != nullptr && w->last_chunk) {
    SeqFinish f;
    prefill->SetTime(&SeqTimes::prefilled, w->end);  // before the token event is visible
    const bool done =
        SampleAndEmit(*prefill, absl::MakeConstSpan(w->prefill_logits.data(), vocab), &f);
    if (metrics_) {
      metrics_->prefill_seconds.Observe(
          absl::ToDoubleSeconds(w->end - prefill->times().first_forward));
    }
    if (done && prefill->request().mode == SeqMode::kLocal) w->finished.emplace_back(prefill, f);
  }
}

void Scheduler::RecordStepMetrics(const std::vector<SeqPtr>& decode, const StepWork& w) {
  if (!metrics_) return;
  metrics_->batch_size.Observe(static_cast<double>(w.segs.size()));
  if (!decode.empty()) {
    metrics_->decode_step_seconds.Observe(absl::ToDoubleSeconds(w.decode_end - w.start));
    metrics_->decode_tokens.Increment(static_cast<double>(decode.size()));
  }
  if (w.chunk > 0) metrics_->prefill_tokens.Increment(static_cast<double>(w.chunk));
}

void Scheduler::CommitStepLocked(const std::vector<SeqPtr>& decode, const SeqPtr& prefill,
                                 const StepWork& w) {
  // Written under mu_ (Load reads it there); only this thread writes it, so its unlocked reads
  // here are safe.
  if (w.status.ok() && prefill != nullptr) prefill->engine.prefill_pos += w.chunk;
  if (!w.status.ok()) {
    FailStepLocked(decode, prefill, w.status);
    return;
  }
  if (prefill != nullptr && w.last_chunk) {
    prefill_queue_.pop_front();
    const bool done_here = !w.finished.empty() && w.finished.back().first == prefill;
    if (prefill->sched.end_requested) {
      // Ended while prefilling: ReapLocked would no longer see it.
      EndLocked(prefill, prefill->sched.end_request_status,
                prefill->sched.end_request_status.code() == absl::StatusCode::kCancelled
                    ? FinishKind::kCancelled
                    : FinishKind::kError);
    } else if (prefill->request().mode == SeqMode::kPrefillOnly) {
      prefill->sched.phase = Phase::kHandedOver;
      SeqEvent ev;
      ev.kind = SeqEvent::kStateReady;
      prefill->Push(std::move(ev));
    } else if (!done_here) {
      prefill->sched.phase = Phase::kRunning;
      prefill->SetTime(&SeqTimes::running, w.end);
      running_.push_back(prefill);
    }
  }
  for (const auto& [s, f] : w.finished) {
    running_.erase(std::remove(running_.begin(), running_.end(), s), running_.end());
    EndLocked(s, absl::OkStatus(), f == SeqFinish::kStop ? FinishKind::kStop : FinishKind::kLength);
  }
  UpdateGaugesLocked();
}

void Scheduler::FailStepLocked(const std::vector<SeqPtr>& decode, const SeqPtr& prefill,
                               const absl::Status& st) {
  // Requests are validated at admission, so this is an engine fault: fail the step's
  // sequences, keep serving the others.
  Log(LogLevel::kError, "scheduler", "forward failed", {{"error", st.ToString()}});
  auto fail = [&](const SeqPtr& s) {
    mu_.AssertHeld();  // called only below, with mu_ held
    if (metrics_) metrics_->Failure("internal");
    running_.erase(std::remove(running_.begin(), running_.end(), s), running_.end());
    prefill_queue_.erase(std::remove(prefill_queue_.begin(), prefill_queue_.end(), s),
                         prefill_queue_.end());
    EndLocked(s, absl::InternalError(st.message()), FinishKind::kError);
  };
  for (const SeqPtr& s : decode) fail(s);
  if (prefill) fail(prefill);
}

}  // namespace sambay
