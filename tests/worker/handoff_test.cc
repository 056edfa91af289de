// docs/design.md "Same tokens on every path", for the worker: the same tokens come out of
// sambay-run (one process), of a prefill worker handing off to a decode worker, and of one
// role-both worker, for greedy and seeded sampling, with prompts shorter and longer than the
// sliding window (16); also under concurrency (8 sequences of different lengths batched on one
// decode worker). Plus the transfer accounting: bytes on the wire = the analytic state size + 16
// bytes per chunk, and the transfer/token counters agree.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/state_io.h"
#include "gtest/gtest.h"
#include "tests/worker/http_get.h"
#include "tests/worker/worker_harness.h"

namespace sambay::testing {
namespace {

namespace v1 = sambay::v1;

class HandoffTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir();
    auto p = Worker::Start("prefill", {"--max-running", "16"}, dir_->path(), "prefill");
    auto d = Worker::Start("decode", {"--max-running", "16"}, dir_->path(), "decode");
    auto b = Worker::Start("both", {"--max-running", "16"}, dir_->path(), "both");
    if (!p.ok() || !d.ok() || !b.ok()) {
      start_error_ = new std::string(absl::StrCat(
          p.status().ToString(), "\n", d.status().ToString(), "\n", b.status().ToString()));
      return;
    }
    prefill_ = p->release();
    decode_ = d->release();
    both_ = b->release();
  }
  static void TearDownTestSuite() {
    delete prefill_;
    delete decode_;
    delete both_;
    delete dir_;
    delete start_error_;
    prefill_ = decode_ = both_ = nullptr;
    dir_ = nullptr;
    start_error_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(start_error_, nullptr) << *start_error_; }
  void TearDown() override {
    if (HasFailure()) {
      for (Worker* w : {prefill_, decode_, both_}) {
        if (w != nullptr) std::cerr << "---- " << w->name() << " log:\n" << w->Logs() << "\n";
      }
    }
  }
  std::vector<uint32_t> Reference(const GenerateSpec& spec) {
    auto ref = ReferenceGenerate(spec.prompt, spec.sampling, spec.max_new_tokens, spec.stop_ids,
                                 dir_->path());
    EXPECT_TRUE(ref.ok()) << ref.status();
    return ref.ok() ? *ref : std::vector<uint32_t>{};
  }

  static ScratchDir* dir_;
  static std::string* start_error_;
  static Worker* prefill_;
  static Worker* decode_;
  static Worker* both_;
};
ScratchDir* HandoffTest::dir_ = nullptr;
std::string* HandoffTest::start_error_ = nullptr;
Worker* HandoffTest::prefill_ = nullptr;
Worker* HandoffTest::decode_ = nullptr;
Worker* HandoffTest::both_ = nullptr;

struct EquivalenceCase {
  const char* name;
  size_t prompt_len;
  bool seeded;
};
void PrintTo(const EquivalenceCase& c, std::ostream* os) { *os << c.name; }

class HandoffEquivalenceTest : public HandoffTest,
                               public ::testing::WithParamInterface<EquivalenceCase> {};

// Prefill on P + decode on D, Prefill and Decode on one role-both worker (handoff to itself),
// and local_prompt on the role-both worker, all == sambay-run.
TEST_P(HandoffEquivalenceTest, SameTokensAsSambayRun) {
  const EquivalenceCase& c = GetParam();
  GenerateSpec spec;
  spec.prompt = PromptIds(c.prompt_len, 1000 + c.prompt_len);
  spec.sampling = c.seeded ? Seeded(0.8f, 0.9f, 7) : Greedy();
  spec.max_new_tokens = 24;
  const std::vector<uint32_t> ref = Reference(spec);
  ASSERT_EQ(ref.size(), spec.max_new_tokens);

  GenerateResult disagg = DisaggregatedGenerate(*prefill_, *decode_, spec);
  ASSERT_TRUE(disagg.status.ok()) << disagg.Describe();
  EXPECT_EQ(disagg.tokens, ref) << "prefill worker -> decode worker";
  ASSERT_TRUE(disagg.got_done);
  EXPECT_EQ(disagg.done.reason(), v1::DECODE_FINISH_LENGTH);
  EXPECT_EQ(disagg.done.tokens(), spec.max_new_tokens - 1) << "tokens after the first";
  EXPECT_GT(disagg.transfer.bytes(), 0u);
  EXPECT_GT(disagg.transfer.chunks(), 0u);
  EXPECT_EQ(disagg.done.transfer_bytes(), disagg.transfer.bytes());

  GenerateResult self = DisaggregatedGenerate(*both_, *both_, spec);
  ASSERT_TRUE(self.status.ok()) << self.Describe();
  EXPECT_EQ(self.tokens, ref) << "role-both worker handing off to itself";

  GenerateResult local = LocalGenerate(*both_, spec);
  ASSERT_TRUE(local.status.ok()) << local.Describe();
  EXPECT_EQ(local.tokens, ref) << "role-both worker, local_prompt";
  ASSERT_TRUE(local.got_done);
  EXPECT_EQ(local.done.reason(), v1::DECODE_FINISH_LENGTH);
  EXPECT_EQ(local.done.tokens(), spec.max_new_tokens);

  for (Worker* w : {prefill_, decode_, both_}) ExpectIdle(*w);
}

INSTANTIATE_TEST_SUITE_P(
    Prompts, HandoffEquivalenceTest,
    ::testing::Values(EquivalenceCase{"Greedy5", 5, false}, EquivalenceCase{"Greedy40", 40, false},
                      EquivalenceCase{"Greedy100", 100, false}, EquivalenceCase{"Seeded5", 5, true},
                      EquivalenceCase{"Seeded40", 40, true},
                      EquivalenceCase{"Seeded100", 100, true}),
    [](const ::testing::TestParamInfo<EquivalenceCase>& i) { return std::string(i.param.name); });

// Stop ids end the stream right after the stop token (reason STOP), as in sambay-run
// --stop-ids. The stop id is picked from the unstopped output so the stop really happens.
TEST_F(HandoffTest, StopTokenEndsTheStream) {
  GenerateSpec spec;
  spec.prompt = PromptIds(30, 77);
  spec.sampling = Seeded(0.9f, 0.95f, 3);
  spec.max_new_tokens = 40;
  const std::vector<uint32_t> full = Reference(spec);
  ASSERT_EQ(full.size(), 40u);
  // The first token (from index 3 on) whose first occurrence is there.
  size_t stop_at = 0;
  for (size_t i = 3; i < full.size() && stop_at == 0; ++i) {
    if (std::find(full.begin(), full.begin() + i, full[i]) == full.begin() + i) stop_at = i;
  }
  ASSERT_GT(stop_at, 0u) << "no usable stop token in " << JoinIds(full);
  spec.stop_ids = {full[stop_at]};
  const std::vector<uint32_t> ref = Reference(spec);
  ASSERT_EQ(ref, std::vector<uint32_t>(full.begin(), full.begin() + stop_at + 1));

  GenerateResult disagg = DisaggregatedGenerate(*prefill_, *decode_, spec);
  ASSERT_TRUE(disagg.status.ok()) << disagg.Describe();
  EXPECT_EQ(disagg.tokens, ref);
  EXPECT_EQ(disagg.done.reason(), v1::DECODE_FINISH_STOP) << disagg.Describe();
  EXPECT_EQ(disagg.done.tokens(), ref.size() - 1);

  GenerateResult local = LocalGenerate(*both_, spec);
  ASSERT_TRUE(local.status.ok()) << local.Describe();
  EXPECT_EQ(local.tokens, ref);
  EXPECT_EQ(local.done.reason(), v1::DECODE_FINISH_STOP) << local.Describe();
  EXPECT_EQ(local.done.tokens(), ref.size());
  for (Worker* w : {prefill_, decode_, both_}) ExpectIdle(*w);
}

// Penalties through local_prompt (the worker has the whole history there).
TEST_F(HandoffTest, PenaltiesLocalPromptMatchSambayRun) {
  GenerateSpec spec;
  spec.prompt = PromptIds(20, 5);
  spec.sampling = Seeded(0.7f, 0.95f, 11, 40);
  spec.sampling.repetition_penalty = 1.3f;
  spec.sampling.presence_penalty = 0.5f;
  spec.sampling.min_p = 0.02f;
  spec.max_new_tokens = 32;
  const std::vector<uint32_t> ref = Reference(spec);
  GenerateResult local = LocalGenerate(*both_, spec);
  ASSERT_TRUE(local.status.ok()) << local.Describe();
  EXPECT_EQ(local.tokens, ref);

  // The frequency penalty, with the others and alone (greedy, a prompt of repeated tokens: the
  // counts over prompt and generated tokens decide).
  spec.sampling.frequency_penalty = 1.5f;
  GenerateSpec alone;
  for (int i = 0; i < 3; ++i) {
    const std::vector<uint32_t> part = PromptIds(8, 6);
    alone.prompt.insert(alone.prompt.end(), part.begin(), part.end());
  }
  alone.max_new_tokens = 32;
  const std::vector<uint32_t> plain = Reference(alone);
  alone.sampling.frequency_penalty = 1.5f;
  for (const auto& [s, without] : {std::pair{&spec, &ref}, std::pair{&alone, &plain}}) {
    const std::vector<uint32_t> want = Reference(*s);
    EXPECT_NE(want, *without) << "the frequency penalty changes nothing";
    GenerateResult got = LocalGenerate(*both_, *s);
    ASSERT_TRUE(got.status.ok()) << got.Describe();
    EXPECT_EQ(got.tokens, want);
  }
}

// 8 concurrent sequences with different prompts, lengths and sampling on one decode worker
// (prefilled concurrently on one prefill worker) == each run alone; the same 8 concurrently
// on the role-both worker with local_prompt.
TEST_F(HandoffTest, ConcurrentSequencesMatchSequentialRuns) {
  constexpr int kN = 8;
  const size_t prompt_lens[kN] = {3, 7, 12, 17, 25, 40, 64, 90};
  const uint32_t new_tokens[kN] = {8, 40, 12, 33, 16, 27, 21, 36};
  std::vector<GenerateSpec> specs(kN);
  std::vector<std::vector<uint32_t>> refs(kN);
  for (int i = 0; i < kN; ++i) {
    specs[i].prompt = PromptIds(prompt_lens[i], 500 + i);
    specs[i].sampling = i % 2 == 0 ? Greedy() : Seeded(0.8f, 0.9f, 100 + i);
    specs[i].max_new_tokens = new_tokens[i];
    specs[i].request_id = absl::StrCat("conc", i);
    refs[i] = Reference(specs[i]);
    ASSERT_EQ(refs[i].size(), new_tokens[i]);
  }
  const double decode_tokens_before =
      decode_->Metric("sambay_worker_tokens_total", {{"phase", "decode"}}).value_or(-1);

  for (const bool local : {false, true}) {
    std::vector<GenerateResult> results(kN);
    std::barrier sync(kN);
    std::vector<std::thread> threads;
    for (int i = 0; i < kN; ++i) {
      threads.emplace_back([&, i] {
        sync.arrive_and_wait();
        results[i] = local ? LocalGenerate(*both_, specs[i])
                           : DisaggregatedGenerate(*prefill_, *decode_, specs[i]);
      });
    }
    for (std::thread& t : threads) t.join();
    for (int i = 0; i < kN; ++i) {
      SCOPED_TRACE(absl::StrCat(local ? "local_prompt" : "prefill->decode", " sequence ", i,
                                " prompt ", prompt_lens[i], " new ", new_tokens[i]));
      ASSERT_TRUE(results[i].status.ok()) << results[i].Describe();
      EXPECT_EQ(results[i].tokens, refs[i]);
      EXPECT_TRUE(results[i].got_done);
    }
  }
  for (Worker* w : {prefill_, decode_, both_}) ExpectIdle(*w);
  // The decode worker consumed (new_tokens - 1) tokens per sequence: the pending first token
  // and every sampled token but the last.
  double want = 0;
  for (uint32_t n : new_tokens) want += n - 1;
  auto after = WaitMetric(*decode_, "sambay_worker_tokens_total", {{"phase", "decode"}},
                          [&](double v) { return v >= decode_tokens_before + want; });
  EXPECT_TRUE(after.ok()) << after.status();
  if (after.ok()) {
    EXPECT_EQ(*after - decode_tokens_before, want);
  }
}

// The bytes on the wire equal the analytic state size plus 16 bytes per chunk, chunks respect
// max_chunk_bytes, and both workers count them; GetInfo agrees with the model.
TEST_F(HandoffTest, TransferBytesMatchStateSizeAndMetrics) {
  auto local = LocalModel::Load();
  ASSERT_TRUE(local.ok()) << local.status();
  const ModelConfig& config = (*local)->model().config();
  auto dinfo = decode_->GetInfo();
  auto pinfo = prefill_->GetInfo();
  ASSERT_TRUE(dinfo.ok() && pinfo.ok()) << dinfo.status() << pinfo.status();
  EXPECT_EQ(dinfo->fingerprint(), (*local)->model().fingerprint());
  EXPECT_EQ(pinfo->fingerprint(), dinfo->fingerprint());
  EXPECT_EQ(dinfo->vocab_size(), kTinyVocab);
  EXPECT_EQ(dinfo->num_layers(), 8u);
  EXPECT_EQ(dinfo->max_context_tokens(), kTinyMaxContext);
  EXPECT_EQ(dinfo->max_running(), 16u);
  EXPECT_EQ(std::vector<std::string>(dinfo->roles().begin(), dinfo->roles().end()),
            std::vector<std::string>{"decode"});
  EXPECT_EQ(std::vector<std::string>(pinfo->roles().begin(), pinfo->roles().end()),
            std::vector<std::string>{"prefill"});

  const double sent0 =
      prefill_->Metric("sambay_worker_state_transfer_bytes_total", {{"direction", "sent"}})
          .value_or(-1);
  const double recv0 =
      decode_->Metric("sambay_worker_state_transfer_bytes_total", {{"direction", "received"}})
          .value_or(-1);
  const double prefill_tokens0 =
      prefill_->Metric("sambay_worker_tokens_total", {{"phase", "prefill"}}).value_or(-1);

  const std::vector<uint32_t> prompt = PromptIds(300, 9);
  const std::string handle = NewHandle("bytes");
  DecodeStream stream(decode_->stub(), MakeHandleDecode(handle, 300, Greedy(), 4),
                      absl::Seconds(30));
  ASSERT_TRUE(stream.ExpectReserved().ok());
  v1::PrefillRequest req = MakePrefill(prompt, Greedy(), decode_->address(), handle);
  req.set_max_chunk_bytes(64 << 10);
  v1::TransferResult transfer;
  grpc::Status st = RunPrefill(*prefill_, req, absl::Seconds(30), nullptr, &transfer);
  ASSERT_TRUE(st.ok()) << StatusString(st);
  std::vector<uint32_t> tokens;
  v1::DecodeDone done;
  bool got_done = false;
  st = stream.ReadToEnd(&tokens, &done, &got_done);
  ASSERT_TRUE(st.ok()) << StatusString(st);
  EXPECT_EQ(tokens.size(), 4u);

  const uint64_t stream_bytes =
      static_cast<uint64_t>(StateStreamBytes(config, dinfo->fingerprint().size(), 300));
  EXPECT_EQ(transfer.bytes(), stream_bytes + kStateChunkHeaderBytes * transfer.chunks());
  const uint64_t min_chunks = (stream_bytes + (64 << 10) - kStateChunkHeaderBytes - 1) /
                              ((64 << 10) - kStateChunkHeaderBytes);
  EXPECT_GE(transfer.chunks(), min_chunks);
  EXPECT_GE(transfer.chunks(), 2u);
  EXPECT_EQ(done.transfer_bytes(), transfer.bytes());

  const double bytes = static_cast<double>(transfer.bytes());
  auto sent = WaitMetric(*prefill_, "sambay_worker_state_transfer_bytes_total",
                         {{"direction", "sent"}}, [&](double v) { return v >= sent0 + bytes; });
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_EQ(*sent - sent0, bytes);
  auto recv = WaitMetric(*decode_, "sambay_worker_state_transfer_bytes_total",
                         {{"direction", "received"}}, [&](double v) { return v >= recv0 + bytes; });
  ASSERT_TRUE(recv.ok()) << recv.status();
  EXPECT_EQ(*recv - recv0, bytes);
  auto ptok = WaitMetric(*prefill_, "sambay_worker_tokens_total", {{"phase", "prefill"}},
                         [&](double v) { return v >= prefill_tokens0 + 300; });
  ASSERT_TRUE(ptok.ok()) << ptok.status();
  EXPECT_EQ(*ptok - prefill_tokens0, 300);
  for (Worker* w : {prefill_, decode_}) ExpectIdle(*w);
}

// Migration: a sequence that already generated k tokens is re-prefilled (prompt + k tokens,
// rng_draws = k) and handed to a decode worker; it continues exactly like the uninterrupted
// run (seeded sampling: the RNG resumes where it stopped).
TEST_F(HandoffTest, MigrationWithRngDrawsContinuesTheSequence) {
  GenerateSpec spec;
  spec.prompt = PromptIds(23, 8);
  spec.sampling = Seeded(1.0f, 0.95f, 1234);
  spec.max_new_tokens = 30;
  const std::vector<uint32_t> ref = Reference(spec);
  ASSERT_EQ(ref.size(), 30u);
  for (const uint32_t k : {1u, 7u, 20u}) {
    SCOPED_TRACE(absl::StrCat("k = ", k));
    std::vector<uint32_t> tokens = spec.prompt;
    tokens.insert(tokens.end(), ref.begin(), ref.begin() + k);
    const std::string handle = NewHandle("migrate");
    DecodeStream stream(decode_->stub(),
                        MakeHandleDecode(handle, static_cast<uint32_t>(tokens.size()),
                                         spec.sampling, spec.max_new_tokens - k - 1),
                        absl::Seconds(30));
    ASSERT_TRUE(stream.ExpectReserved().ok());
    v1::PrefillRequest req = MakePrefill(tokens, spec.sampling, decode_->address(), handle);
    req.set_rng_draws(k);
    uint32_t first = 0;
    grpc::Status st = RunPrefill(*prefill_, req, absl::Seconds(30), &first);
    ASSERT_TRUE(st.ok()) << StatusString(st);
    std::vector<uint32_t> out = {first};
    v1::DecodeDone done;
    bool got_done = false;
    st = stream.ReadToEnd(&out, &done, &got_done);
    ASSERT_TRUE(st.ok()) << StatusString(st);
    EXPECT_EQ(out, std::vector<uint32_t>(ref.begin() + k, ref.end()));
  }
  ExpectIdle(*prefill_);
  ExpectIdle(*decode_);
}

// Log-probabilities: one entry per token, for the token that was emitted, the top list sorted
// and of the asked size, and the first token's value equal to the log softmax of the model's
// logits computed here.
TEST_F(HandoffTest, LogprobsAreConsistent) {
  auto local = LocalModel::Load();
  ASSERT_TRUE(local.ok()) << local.status();
  const std::vector<uint32_t> prompt = PromptIds(33, 12);
  const Sampling s = Seeded(0.8f, 0.9f, 5);
  // The reference log softmax of the last prompt position.
  auto state = (*local)->model().NewState();
  std::vector<int32_t> ids(prompt.begin(), prompt.end());
  std::vector<float> logits;
  ASSERT_TRUE((*local)->model().Prefill(*state, ids, 0, &logits).ok());
  double mx = logits[0];
  for (float v : logits) mx = std::max<double>(mx, v);
  double z = 0;
  for (float v : logits) z += std::exp(v - mx);
  const double log_z = mx + std::log(z);

  auto check = [](const v1::PositionLogprobs& p, uint32_t token, const std::string& where) {
    EXPECT_EQ(p.token().token_id(), token) << where;
    EXPECT_LE(p.token().logprob(), 0.0f) << where;
    ASSERT_EQ(p.top_size(), 5) << where;
    for (int i = 1; i < p.top_size(); ++i) {
      EXPECT_GE(p.top(i - 1).logprob(), p.top(i).logprob()) << where;
    }
    EXPECT_GE(p.top(0).logprob(), p.token().logprob()) << where;
  };

  const std::string handle = NewHandle("logprobs");
  v1::DecodeRequest dreq = MakeHandleDecode(handle, 33, s, 10);
  dreq.set_return_logprobs(true);
  dreq.set_top_logprobs(5);
  DecodeStream stream(decode_->stub(), dreq, absl::Seconds(30));
  ASSERT_TRUE(stream.ExpectReserved().ok());
  v1::PrefillRequest preq = MakePrefill(prompt, s, decode_->address(), handle);
  preq.set_return_logprobs(true);
  preq.set_top_logprobs(5);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto reader = prefill_->stub().Prefill(&ctx, preq);
  v1::PrefillResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  ASSERT_TRUE(msg.has_first_token()) << msg.ShortDebugString();
  const v1::FirstToken first = msg.first_token();
  while (reader->Read(&msg)) {
  }
  grpc::Status st = reader->Finish();
  ASSERT_TRUE(st.ok()) << StatusString(st);
  ASSERT_TRUE(first.has_logprobs());
  check(first.logprobs(), first.token_id(), "first token");
  EXPECT_NEAR(first.logprobs().token().logprob(), logits[first.token_id()] - log_z, 1e-4);

  std::vector<uint32_t> tokens;
  std::vector<v1::PositionLogprobs> lps;
  v1::DecodeResponse dmsg;
  while (stream.Read(&dmsg)) {
    if (!dmsg.has_tokens()) continue;
    EXPECT_EQ(dmsg.tokens().logprobs_size(), dmsg.tokens().token_ids_size());
    tokens.insert(tokens.end(), dmsg.tokens().token_ids().begin(), dmsg.tokens().token_ids().end());
    lps.insert(lps.end(), dmsg.tokens().logprobs().begin(), dmsg.tokens().logprobs().end());
  }
  st = stream.Finish();
  ASSERT_TRUE(st.ok()) << StatusString(st);
  ASSERT_EQ(tokens.size(), 10u);
  ASSERT_EQ(lps.size(), tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) check(lps[i], tokens[i], absl::StrCat("token ", i));
  // Logprobs do not change the tokens.
  GenerateSpec spec;
  spec.prompt = prompt;
  spec.sampling = s;
  spec.max_new_tokens = 11;
  std::vector<uint32_t> all = {first.token_id()};
  all.insert(all.end(), tokens.begin(), tokens.end());
  EXPECT_EQ(all, Reference(spec));
  ExpectIdle(*prefill_);
  ExpectIdle(*decode_);
}

// A client that cancels (or whose deadline passes) mid-generation frees its sequence.
TEST_F(HandoffTest, CancelAndDeadlineWhileDecodingFreeTheSequence) {
  for (const bool use_deadline : {false, true}) {
    SCOPED_TRACE(use_deadline ? "deadline" : "cancel");
    DecodeStream stream(both_->stub(), MakeLocalDecode(PromptIds(10, 3), Greedy(), 4000),
                        use_deadline ? absl::Milliseconds(300) : absl::Seconds(30));
    v1::DecodeResponse msg;
    ASSERT_TRUE(stream.Read(&msg));
    if (!use_deadline) stream.Cancel();
    grpc::Status st = stream.Finish();
    EXPECT_EQ(st.error_code(),
              use_deadline ? grpc::StatusCode::DEADLINE_EXCEEDED : grpc::StatusCode::CANCELLED)
        << StatusString(st);
    ExpectIdle(*both_);
  }
  // Release by request id of a running sequence ends its stream with CANCELLED.
  {
    v1::DecodeRequest req = MakeLocalDecode(PromptIds(10, 4), Greedy(), 4000);
    req.set_request_id(NewHandle("release"));
    DecodeStream stream(both_->stub(), req, absl::Seconds(30));
    v1::DecodeResponse msg;
    ASSERT_TRUE(stream.Read(&msg));
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::ReleaseRequest rel;
    rel.set_request_id(req.request_id());
    v1::ReleaseResponse resp;
    grpc::Status st = both_->stub().Release(&ctx, rel, &resp);
    EXPECT_TRUE(st.ok()) << StatusString(st);
    EXPECT_EQ(resp.released(), 1u);
    st = stream.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED) << StatusString(st);
    ExpectIdle(*both_);
  }
  // Same for a reservation-based sequence that is running on the decode worker.
  const std::string handle = NewHandle("cancel");
  DecodeStream stream(decode_->stub(), MakeHandleDecode(handle, 10, Greedy(), 4000),
                      absl::Seconds(30));
  ASSERT_TRUE(stream.ExpectReserved().ok());
  ASSERT_TRUE(RunPrefill(*prefill_,
                         MakePrefill(PromptIds(10, 3), Greedy(), decode_->address(), handle),
                         absl::Seconds(30))
                  .ok());
  v1::DecodeResponse msg;
  ASSERT_TRUE(stream.Read(&msg));
  stream.Cancel();
  EXPECT_EQ(stream.Finish().error_code(), grpc::StatusCode::CANCELLED);
  ExpectIdle(*decode_);
  ExpectIdle(*prefill_);
}

// GetInfo's state size model (state_bytes_fixed + n x state_bytes_per_token) gives the state
// payload of a sequence that has consumed n tokens, for n past the sliding window (the SWA
// window is full then, so it belongs to the fixed part).
TEST_F(HandoffTest, GetInfoStateSizeModelMatchesThePayload) {
  auto local = LocalModel::Load();
  ASSERT_TRUE(local.ok()) << local.status();
  const ModelConfig& config = (*local)->model().config();
  auto info = decode_->GetInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  for (const uint64_t n : {uint64_t{kTinyWindow}, uint64_t{100}, uint64_t{1000}}) {
    EXPECT_EQ(info->state_bytes_fixed() + n * info->state_bytes_per_token(),
              static_cast<uint64_t>(StatePayloadBytes(config, static_cast<int64_t>(n))))
        << "n = " << n << ": fixed " << info->state_bytes_fixed() << ", per token "
        << info->state_bytes_per_token();
  }
}

// Health: liveness and readiness both SERVING on a healthy worker; /metrics is served on its
// own port with the worker's series.
TEST_F(HandoffTest, HealthAndMetricsEndpoints) {
  for (Worker* w : {prefill_, decode_, both_}) {
    auto live = w->Health("");
    ASSERT_TRUE(live.ok()) << live.status();
    EXPECT_EQ(*live, grpc::health::v1::HealthCheckResponse::SERVING);
    auto ready = w->Health("sambay.v1.Worker");
    ASSERT_TRUE(ready.ok()) << ready.status();
    EXPECT_EQ(*ready, grpc::health::v1::HealthCheckResponse::SERVING);
    EXPECT_NE(w->metrics_port(), 0);
    auto text = w->Metrics();
    ASSERT_TRUE(text.ok()) << text.status();
    for (const char* name :
         {"sambay_worker_running_sequences", "sambay_worker_waiting_sequences",
          "sambay_worker_slots_used", "sambay_worker_slots_limit",
          "sambay_worker_state_memory_used_bytes", "sambay_worker_state_memory_total_bytes"}) {
      EXPECT_TRUE(MetricValue(*text, name).has_value()) << w->name() << ": no " << name;
    }
    EXPECT_EQ(MetricValue(*text, "sambay_worker_slots_limit"), 16) << w->name();
    EXPECT_EQ(MetricSum(*text, "sambay_worker_info"), 1) << w->name();
  }
}

}  // namespace
}  // namespace sambay::testing
