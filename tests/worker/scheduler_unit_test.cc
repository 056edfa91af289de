// In-process tests of the worker's Scheduler (no gRPC): continuous batching gives the tokens of
// engine Generate for every sequence whatever else runs, admission limits, leases, cancel,
// handoff through export/import, and RNG resumption for migrated sequences.
#include <atomic>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/backend.h"
#include "engine/generate.h"
#include "engine/state_io.h"
#include "gtest/gtest.h"
#include "tests/engine/test_util.h"
#include "worker/scheduler.h"

namespace sambay {
namespace {

using sambay::testing::MakeTiny;
using sambay::testing::RandomIds;

// Collects a sequence's tokens until it ends; returns its end status.
absl::Status Collect(Sequence& seq, std::vector<int32_t>* tokens, SeqFinish* finish = nullptr) {
  for (;;) {
    auto ev = seq.Next(absl::Seconds(30));
    if (!ev) return absl::DeadlineExceededError("test: no event within 30 s");
    switch (ev->kind) {
      case SeqEvent::kToken:
        tokens->push_back(ev->token);
        break;
      case SeqEvent::kStateReady:
        return absl::OkStatus();
      case SeqEvent::kDone:
        if (finish) *finish = ev->finish;
        return absl::OkStatus();
      case SeqEvent::kError:
        return ev->status;
    }
  }
}

SamplingParams Seeded(uint64_t seed) {
  SamplingParams p;
  p.temperature = 0.9f;
  p.top_p = 0.95f;
  p.top_k = 50;
  p.seed = seed;
  return p;
}

class SchedulerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { tiny_ = MakeTiny(5).release(); }
  static void TearDownTestSuite() { delete tiny_; }
  Model& model() { return *tiny_->model; }
  int64_t vocab() { return model().config().vocab_size; }

  SchedulerOptions Options() {
    SchedulerOptions o;
    o.max_running = 64;
    o.max_context = 4096;
    o.state_budget_bytes = int64_t{1} << 30;
    o.prefill_chunk = 16;
    o.lease = absl::Seconds(30);
    return o;
  }

  std::vector<int32_t> Reference(const std::vector<int32_t>& prompt, const SamplingParams& s,
                                 int64_t max_new, const std::vector<int32_t>& stop = {}) {
    auto state = model().NewState();
    GenerateOptions g;
    g.max_new_tokens = max_new;
    g.sampling = s;
    g.stop_token_ids = stop;
    auto out = Generate(model(), *state, prompt, g);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : std::vector<int32_t>{};
  }

  static sambay::testing::TinyModel* tiny_;
};
sambay::testing::TinyModel* SchedulerTest::tiny_ = nullptr;

TEST_F(SchedulerTest, TwentyConcurrentSequencesEqualEachAlone) {
  // 20 > the GEMV row threshold, prompts longer than the chunk and the window, greedy and
  // seeded: continuous batching (joins, leaves, chunked prefill riding along) never changes a
  // sequence's tokens.
  WorkerMetrics metrics("fp", "both", "test");
  Scheduler sched(model(), Options(), &metrics);
  struct Case {
    std::vector<int32_t> prompt;
    SamplingParams sampling;
    int64_t max_new;
    std::shared_ptr<Sequence> seq;
  };
  std::vector<Case> cases;
  for (int i = 0; i < 20; ++i) {
    Case c;
    c.prompt = RandomIds(1 + (i * 13) % 70, vocab(), 200 + i);
    c.sampling = i % 2 == 0 ? SamplingParams{} : Seeded(1000 + i);
    c.max_new = 5 + (i * 7) % 30;
    cases.push_back(c);
  }
  for (Case& c : cases) {
    SequenceRequest r;
    r.mode = SeqMode::kLocal;
    r.prompt = c.prompt;
    r.sampling = c.sampling;
    r.max_new_tokens = c.max_new;
    auto seq = sched.Admit(r);
    ASSERT_TRUE(seq.ok()) << seq.status();
    c.seq = *seq;
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<int32_t> got;
    SeqFinish finish;
    ASSERT_TRUE(Collect(*cases[i].seq, &got, &finish).ok());
    EXPECT_EQ(finish, SeqFinish::kLength);
    EXPECT_EQ(got, Reference(cases[i].prompt, cases[i].sampling, cases[i].max_new))
        << "sequence " << i;
  }
  EXPECT_EQ(sched.active(), 0);
  EXPECT_EQ(sched.Load().state_bytes_used, 0);
}

// The CPU model behind a backend that reports its argmax on the device, so the scheduler takes
// ForwardArgmax (EngineBackend's host default here) for plain greedy rows: the path of a GPU
// worker, whose tokens must not change.
class ArgmaxPathBackend final : public EngineBackend {
 public:
  explicit ArgmaxPathBackend(Model& m) : cpu_(m) {}
  const ModelConfig& config() const override { return cpu_.config(); }
  const std::string& fingerprint() const override { return cpu_.fingerprint(); }
  int tp_size() const override { return cpu_.tp_size(); }
  std::string device_name() const override { return "test"; }
  std::unique_ptr<SequenceState> NewState() const override { return cpu_.NewState(); }
  absl::Status Forward(absl::Span<const ForwardSegment> segments,
                       std::vector<float>* logits) override {
    return cpu_.Forward(segments, logits);
  }
  absl::Status ForwardArgmax(absl::Span<const ForwardSegment> segments,
                             const std::vector<bool>& want_logits, std::vector<float>* logits,
                             std::vector<int32_t>* argmax) override {
    ++argmax_calls;
    for (bool w : want_logits) skipped_rows += !w;
    return EngineBackend::ForwardArgmax(segments, want_logits, logits, argmax);
  }
  bool argmax_on_device() const override { return true; }
  absl::StatusOr<std::vector<std::string>> Export(SequenceState& state,
                                                  size_t max_chunk_bytes) override {
    return cpu_.Export(state, max_chunk_bytes);
  }
  std::atomic<int> argmax_calls{0};
  std::atomic<int> skipped_rows{0};

 private:
  CpuBackend cpu_;
};

TEST_F(SchedulerTest, GreedyRowsWithoutLogitsCopiesGiveTheSameTokens) {
  ArgmaxPathBackend backend(model());
  WorkerMetrics metrics("fp", "both", "test");
  Scheduler sched(backend, Options(), &metrics);
  struct Case {
    SamplingParams sampling;
    bool logprobs = false;
    std::vector<int32_t> stop;
    std::shared_ptr<Sequence> seq;
    std::vector<int32_t> prompt;
  };
  std::vector<Case> cases(6);
  cases[1].logprobs = true;                     // greedy, but the row is needed for logprobs
  cases[2].sampling.repetition_penalty = 1.3f;  // greedy with a penalty: needs the row
  cases[3].sampling = Seeded(77);
  cases[4].stop = Reference(RandomIds(9, vocab(), 404), {}, 12);  // stops on its 1st token
  cases[4].stop.resize(1);
  for (size_t i = 0; i < cases.size(); ++i) {
    Case& c = cases[i];
    c.prompt = RandomIds(3 + 11 * i, vocab(), 400 + i);
    if (i == 4) c.prompt = RandomIds(9, vocab(), 404);
    SequenceRequest r;
    r.mode = SeqMode::kLocal;
    r.prompt = c.prompt;
    r.sampling = c.sampling;
    r.max_new_tokens = 12;
    r.stop_ids = c.stop;
    r.logprobs = c.logprobs;
    r.top_logprobs = c.logprobs ? 2 : 0;
    auto seq = sched.Admit(r);
    ASSERT_TRUE(seq.ok()) << seq.status();
    c.seq = *seq;
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<int32_t> got;
    ASSERT_TRUE(Collect(*cases[i].seq, &got).ok());
    EXPECT_EQ(got, Reference(cases[i].prompt, cases[i].sampling, 12, cases[i].stop))
        << "sequence " << i;
  }
  EXPECT_GT(backend.argmax_calls.load(), 0);
  EXPECT_GT(backend.skipped_rows.load(), 0);  // plain greedy rows went without logits
  EXPECT_EQ(sched.active(), 0);
}

TEST_F(SchedulerTest, StopTokenEndsWithStop) {
  Scheduler sched(model(), Options(), nullptr);
  const auto prompt = RandomIds(9, vocab(), 3);
  const auto ref = Reference(prompt, {}, 12);
  ASSERT_GE(ref.size(), 4u);
  SequenceRequest r;
  r.prompt = prompt;
  r.max_new_tokens = 12;
  r.stop_ids = {ref[3]};
  auto seq = sched.Admit(r);
  ASSERT_TRUE(seq.ok());
  std::vector<int32_t> got;
  SeqFinish finish;
  ASSERT_TRUE(Collect(**seq, &got, &finish).ok());
  EXPECT_EQ(finish, SeqFinish::kStop);
  EXPECT_EQ(got, Reference(prompt, {}, 12, {ref[3]}));
}

TEST_F(SchedulerTest, HandoffThroughExportImportContinuesExactly) {
  Scheduler prefill(model(), Options(), nullptr), decode(model(), Options(), nullptr);
  const auto prompt = RandomIds(45, vocab(), 8);
  const SamplingParams s = Seeded(77);
  SamplingParams penalized = s;
  penalized.repetition_penalty = 1.3f;
  penalized.presence_penalty = 0.5f;
  SamplingParams frequency = s;  // the frequency penalty alone: still needs the history
  frequency.frequency_penalty = 1.5f;
  SamplingParams all = penalized;
  all.frequency_penalty = -0.75f;
  // The penalty changes this sequence, so equality below is not vacuous.
  ASSERT_NE(Reference(prompt, frequency, 20), Reference(prompt, s, 20));
  for (const SamplingParams& sp : {s, penalized, frequency, all}) {
    SCOPED_TRACE(::testing::Message()
                 << "repetition " << sp.repetition_penalty << " presence " << sp.presence_penalty
                 << " frequency " << sp.frequency_penalty);
    const auto ref = Reference(prompt, sp, 20);
    SequenceRequest d;
    d.mode = SeqMode::kImported;
    d.handle = "h";
    d.prompt_tokens = static_cast<int64_t>(prompt.size());
    d.sampling = sp;
    d.max_new_tokens = 19;
    d.history = prompt;
    auto dseq = decode.Admit(d);
    ASSERT_TRUE(dseq.ok()) << dseq.status();

    SequenceRequest p;
    p.mode = SeqMode::kPrefillOnly;
    p.prompt = prompt;
    p.sampling = sp;
    auto pseq = prefill.Admit(p);
    ASSERT_TRUE(pseq.ok());
    std::vector<int32_t> first;
    ASSERT_TRUE(Collect(**pseq, &first).ok());
    ASSERT_EQ(first, std::vector<int32_t>{ref[0]});
    auto state = (*pseq)->TakeState();
    ASSERT_NE(state, nullptr);
    auto chunks = ExportState(model().config(), model().fingerprint(), *state, 4096);
    ASSERT_TRUE(chunks.ok());
    state.reset();
    prefill.Retire(*pseq, FinishKind::kHandedOff);
    EXPECT_EQ(prefill.active(), 0);

    auto claimed = decode.BeginReceive("h");
    ASSERT_TRUE(claimed.ok());
    EXPECT_EQ(decode.BeginReceive("h").status().code(), absl::StatusCode::kFailedPrecondition);
    StateImporter importer(model().config(), model().fingerprint(), d.prompt_tokens);
    for (const std::string& c : *chunks) ASSERT_TRUE(importer.AddChunk(c).ok());
    auto imported = importer.Finish();
    ASSERT_TRUE(imported.ok());
    ASSERT_TRUE(decode.CompleteReceive(*claimed, *std::move(imported), 0.0, 1).ok());
    std::vector<int32_t> rest;
    ASSERT_TRUE(Collect(**dseq, &rest).ok());
    rest.insert(rest.begin(), first[0]);
    EXPECT_EQ(rest, ref);
    EXPECT_EQ(decode.active(), 0);
  }
}

TEST_F(SchedulerTest, RngDrawsResumeAMigratedSequence) {
  // Re-prefilling prompt + the first k generated tokens with rng_draws = k samples token k+1
  // exactly as the uninterrupted run did (the router's migration path).
  Scheduler sched(model(), Options(), nullptr);
  const auto prompt = RandomIds(20, vocab(), 4);
  SamplingParams frequency = Seeded(5);
  frequency.frequency_penalty = 1.5f;  // counts over prompt + the generated tokens re-sent
  ASSERT_NE(Reference(prompt, frequency, 12), Reference(prompt, Seeded(5), 12));
  for (const SamplingParams& s : {Seeded(5), frequency}) {
    const auto ref = Reference(prompt, s, 12);
    for (int k : {1, 5, 11}) {
      SequenceRequest r;
      r.prompt = prompt;
      r.prompt.insert(r.prompt.end(), ref.begin(), ref.begin() + k);
      r.sampling = s;
      r.rng_draws = static_cast<uint64_t>(k);
      r.max_new_tokens = 12 - k;
      auto seq = sched.Admit(r);
      ASSERT_TRUE(seq.ok());
      std::vector<int32_t> got;
      ASSERT_TRUE(Collect(**seq, &got).ok());
      EXPECT_EQ(got, std::vector<int32_t>(ref.begin() + k, ref.end()))
          << "k=" << k << " frequency_penalty " << s.frequency_penalty;
    }
  }
}

TEST_F(SchedulerTest, AdmissionLimitsRejectFastAndFreeEverything) {
  SchedulerOptions o = Options();
  o.max_running = 2;
  WorkerMetrics metrics("fp", "both", "test");
  Scheduler sched(model(), o, &metrics);
  SequenceRequest r;
  r.mode = SeqMode::kImported;
  r.prompt_tokens = 10;
  r.max_new_tokens = 5;
  r.handle = "a";
  auto a = sched.Admit(r);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(sched.Admit(r).status().code(), absl::StatusCode::kAlreadyExists);
  r.handle = "b";
  auto b = sched.Admit(r);
  ASSERT_TRUE(b.ok());
  r.handle = "c";
  EXPECT_EQ(sched.Admit(r).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(sched.Load().free_slots, 0);
  EXPECT_EQ(sched.Release("a", ""), 1);
  EXPECT_EQ(sched.Release("", "nobody"), 0);
  sched.Fail(*b, absl::CancelledError("test"));
  EXPECT_EQ(sched.active(), 0);
  EXPECT_EQ(sched.Load().state_bytes_used, 0);
  std::vector<int32_t> t;
  EXPECT_EQ(Collect(**a, &t).code(), absl::StatusCode::kCancelled);

  // Memory: a budget smaller than one sequence's state.
  SchedulerOptions small = Options();
  small.state_budget_bytes = sched.StateBytesFor(100);
  Scheduler tight(model(), small, nullptr);
  SequenceRequest big;
  big.prompt = RandomIds(300, vocab(), 1);
  big.max_new_tokens = 10;
  EXPECT_EQ(tight.Admit(big).status().code(), absl::StatusCode::kResourceExhausted);

  sched.StartDrain();
  r.handle = "d";
  EXPECT_EQ(sched.Admit(r).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(SchedulerTest, LeaseExpiresWithDeadlineExceeded) {
  SchedulerOptions o = Options();
  o.lease = absl::Milliseconds(100);
  Scheduler sched(model(), o, nullptr);
  SequenceRequest r;
  r.mode = SeqMode::kImported;
  r.handle = "late";
  r.prompt_tokens = 3;
  r.max_new_tokens = 2;
  auto seq = sched.Admit(r);
  ASSERT_TRUE(seq.ok());
  std::vector<int32_t> t;
  EXPECT_EQ(Collect(**seq, &t).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(sched.active(), 0);
  EXPECT_EQ(sched.BeginReceive("late").status().code(), absl::StatusCode::kNotFound);
}

// RenewLease restarts a waiting reservation's lease; once the state starts
// arriving (BeginReceive) the lease stops.
TEST_F(SchedulerTest, LeaseRenewsAndStopsWhenTheStateArrives) {
  SchedulerOptions o = Options();
  o.lease = absl::Milliseconds(300);
  Scheduler sched(model(), o, nullptr);
  SequenceRequest r;
  r.mode = SeqMode::kImported;
  r.handle = "slow";
  r.prompt_tokens = 3;
  r.max_new_tokens = 2;
  auto seq = sched.Admit(r);
  ASSERT_TRUE(seq.ok());
  for (int i = 0; i < 6; ++i) {  // 600 ms, two leases long
    ASSERT_TRUE(sched.RenewLease("slow").ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_FALSE((*seq)->end_status().has_value());
  ASSERT_TRUE(sched.BeginReceive("slow").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  EXPECT_FALSE((*seq)->end_status().has_value()) << "the lease expired mid-transfer";
  EXPECT_TRUE(sched.RenewLease("slow").ok());  // no effect now
  sched.Fail(*seq, absl::CancelledError("test"));
  EXPECT_EQ(sched.active(), 0);
  EXPECT_EQ(sched.RenewLease("slow").code(), absl::StatusCode::kNotFound);
}

// Load() reads prefill progress while the engine thread advances it (run
// under ThreadSanitizer, this reported the unlocked write of prefill_pos).
TEST_F(SchedulerTest, LoadDuringChunkedPrefillIsConsistent) {
  Scheduler sched(model(), Options(), nullptr);  // 16-token chunks
  SequenceRequest r;
  r.mode = SeqMode::kLocal;
  r.prompt = RandomIds(400, vocab(), 3);
  r.max_new_tokens = 1;
  auto seq = sched.Admit(r);
  ASSERT_TRUE(seq.ok());
  std::atomic<bool> done{false};
  int64_t last = 400, bad = 0;
  std::thread reader([&] {
    while (!done.load()) {
      const int64_t q = sched.Load().queued_prefill_tokens;
      if (q < 0 || q > last) ++bad;
      last = q;
    }
  });
  std::vector<int32_t> t;
  EXPECT_TRUE(Collect(**seq, &t).ok());
  done.store(true);
  reader.join();
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(sched.Load().queued_prefill_tokens, 0);
}

// at most kMaxStopTokenIds stop ids; any of them stops, in any order.
TEST_F(SchedulerTest, StopIdsAreCappedAndFoundInAnyOrder) {
  Scheduler sched(model(), Options(), nullptr);
  const std::vector<int32_t> prompt = RandomIds(12, vocab(), 9);
  const std::vector<int32_t> ref = Reference(prompt, SamplingParams{}, 6);
  ASSERT_EQ(ref.size(), 6u);
  SequenceRequest r;
  r.mode = SeqMode::kLocal;
  r.prompt = prompt;
  r.max_new_tokens = 6;
  r.stop_ids.assign(1025, 1);
  auto over = sched.Admit(r);
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(over.status().message().rfind("stop_token_ids:", 0), 0u) << over.status();
  // 1024 ids, descending, with repeats, none of the first two tokens: stops at the first other.
  r.stop_ids.clear();
  for (int64_t i = 0; r.stop_ids.size() < 1024; ++i) {
    const int32_t id = static_cast<int32_t>(vocab() - 1 - i % vocab());
    if (id != ref[0] && id != ref[1]) r.stop_ids.push_back(id);
  }
  size_t expect = 2;
  while (expect < ref.size() && (ref[expect] == ref[0] || ref[expect] == ref[1])) ++expect;
  auto seq = sched.Admit(r);
  ASSERT_TRUE(seq.ok()) << seq.status();
  std::vector<int32_t> got;
  SeqFinish finish;
  ASSERT_TRUE(Collect(**seq, &got, &finish).ok());
  EXPECT_EQ(got, std::vector<int32_t>(ref.begin(), ref.begin() + std::min(expect + 1, ref.size())));
  if (expect < ref.size()) {
    EXPECT_EQ(finish, SeqFinish::kStop);
  }
}

TEST_F(SchedulerTest, CancelWhileRunningFreesTheSlot) {
  Scheduler sched(model(), Options(), nullptr);
  SequenceRequest r;
  r.prompt = RandomIds(30, vocab(), 2);
  r.max_new_tokens = 4000;
  auto seq = sched.Admit(r);
  ASSERT_TRUE(seq.ok());
  ASSERT_TRUE((*seq)->Next(absl::Seconds(30)).has_value());
  sched.Fail(*seq, absl::CancelledError("client went away"));
  std::vector<int32_t> t;
  EXPECT_EQ(Collect(**seq, &t).code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(sched.active(), 0);
  EXPECT_EQ(sched.Load().running, 0);
}

TEST_F(SchedulerTest, ValidationNamesTheField) {
  Scheduler sched(model(), Options(), nullptr);
  auto msg = [&](SequenceRequest r) { return std::string(sched.Validate(r).message()); };
  SequenceRequest ok;
  ok.prompt = {1, 2, 3};
  ok.max_new_tokens = 4;
  EXPECT_TRUE(sched.Validate(ok).ok());
  SequenceRequest r = ok;
  r.prompt.clear();
  EXPECT_EQ(msg(r).rfind("local_prompt:", 0), 0u) << msg(r);
  r = ok;
  r.prompt[1] = static_cast<int32_t>(vocab());
  EXPECT_EQ(msg(r).rfind("local_prompt[1]:", 0), 0u) << msg(r);
  r = ok;
  r.max_new_tokens = 0;
  EXPECT_EQ(msg(r).rfind("max_new_tokens:", 0), 0u) << msg(r);
  r = ok;
  r.max_new_tokens = 4094;  // 3 + 4094 > 4096
  EXPECT_EQ(msg(r).rfind("max_new_tokens:", 0), 0u) << msg(r);
  r.max_new_tokens = 4093;  // exactly the context
  EXPECT_TRUE(sched.Validate(r).ok());
  r = ok;
  r.sampling.top_p = 0;
  EXPECT_EQ(msg(r).rfind("sampling.top_p", 0), 0u) << msg(r);
  r = ok;
  r.sampling.temperature = std::nanf("");
  EXPECT_EQ(msg(r).rfind("sampling.temperature", 0), 0u) << msg(r);
  r = ok;
  r.stop_ids = {-1};
  EXPECT_EQ(msg(r).rfind("stop_token_ids[0]:", 0), 0u) << msg(r);
  r = ok;
  r.mode = SeqMode::kImported;
  r.handle = "h";
  r.prompt_tokens = 5;
  r.sampling.repetition_penalty = 1.2f;
  EXPECT_EQ(msg(r).rfind("history:", 0), 0u) << msg(r);
  r.sampling.repetition_penalty = 1.0f;
  r.sampling.frequency_penalty = 0.5f;  // alone, it needs the history too
  EXPECT_EQ(msg(r).rfind("history:", 0), 0u) << msg(r);
  r.sampling.frequency_penalty = std::numeric_limits<float>::infinity();
  EXPECT_EQ(msg(r).rfind("sampling.frequency_penalty", 0), 0u) << msg(r);
}

}  // namespace
}  // namespace sambay
