// Faults against a decode worker, with states made in the test process (engine ExportState)
// and pushed by hand: a corrupted chunk, a damaged frame, a state from another model, a
// truncated stream, a sender that vanishes mid-transfer, a lease that expires, a push for an
// unknown handle. After each: PushState and the waiting Decode stream end with the same
// status, nothing is left admitted (GetLoad and the gauges back to 0), the failure is counted
// under its reason, and a valid handoff still gives sambay-run's tokens.
// Also resource exhaustion: no free slot / not enough state memory -> RESOURCE_EXHAUSTED fast.
#include <grpcpp/client_context.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/state_io.h"
#include "gtest/gtest.h"
#include "tests/worker/worker_harness.h"

namespace sambay::testing {
namespace {

namespace v1 = sambay::v1;

constexpr size_t kPromptLen = 100;
// Small chunks so a state is many chunks (frame included).
constexpr size_t kChunkBytes = 8 << 10;
constexpr uint32_t kDecodeTokens = 8;

class FaultsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir();
    auto local = LocalModel::Load();
    auto p = Worker::Start("prefill", {"--max-running", "4"}, dir_->path(), "prefill");
    auto d = Worker::Start("decode", {"--max-running", "4"}, dir_->path(), "decode");
    if (!local.ok() || !p.ok() || !d.ok()) {
      start_error_ = new std::string(absl::StrCat(
          local.status().ToString(), "\n", p.status().ToString(), "\n", d.status().ToString()));
      return;
    }
    local_ = local->release();
    prefill_ = p->release();
    decode_ = d->release();
    prompt_ = new std::vector<uint32_t>(PromptIds(kPromptLen, 4242));
    auto ref = ReferenceGenerate(*prompt_, Greedy(), kDecodeTokens + 1, {}, dir_->path());
    if (!ref.ok()) {
      start_error_ = new std::string(ref.status().ToString());
      return;
    }
    reference_ = new std::vector<uint32_t>(*ref);
  }
  static void TearDownTestSuite() {
    delete prefill_;
    delete decode_;
    delete local_;
    delete prompt_;
    delete reference_;
    delete dir_;
    delete start_error_;
    prefill_ = decode_ = nullptr;
    local_ = nullptr;
    prompt_ = reference_ = nullptr;
    dir_ = nullptr;
    start_error_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(start_error_, nullptr) << *start_error_; }
  void TearDown() override {
    if (HasFailure()) {
      for (Worker* w : {prefill_, decode_, extra_.get()}) {
        if (w != nullptr) std::cerr << "---- " << w->name() << " log:\n" << w->Logs() << "\n";
      }
    }
  }

  // A valid exported state of prompt_ (greedy); its pending token is reference_[0].
  std::vector<std::string> ValidChunks(const std::string& fingerprint = "") {
    uint32_t pending = 0;
    auto chunks = local_->ExportPrefilled(*prompt_, Greedy(), kChunkBytes, fingerprint, &pending);
    EXPECT_TRUE(chunks.ok()) << chunks.status();
    if (!chunks.ok()) return {};
    EXPECT_EQ(pending, (*reference_)[0]);
    EXPECT_GE(chunks->size(), 4u);
    return *chunks;
  }

  double Failures(Worker& w, const std::string& reason) {
    auto v = w.Metric("sambay_worker_failures_total", {{"reason", reason}});
    EXPECT_TRUE(v.ok()) << v.status();
    return v.value_or(0);
  }

  // Opens a reservation on `w`, pushes `chunks`, and checks: the push ends with `code`, the
  // Decode stream ends with `code` without tokens, the worker is idle, failures_total{reason}
  // went up by one.
  void ExpectPushFailure(Worker& w, const std::vector<std::string>& chunks, grpc::StatusCode code,
                         const std::string& reason) {
    const double before = Failures(w, reason);
    const std::string handle = NewHandle("fault");
    DecodeStream stream(w.stub(), MakeHandleDecode(handle, kPromptLen, Greedy(), kDecodeTokens),
                        absl::Seconds(20));
    grpc::Status st = stream.ExpectReserved();
    ASSERT_TRUE(st.ok()) << StatusString(st);
    st = PushChunks(w, handle, chunks, absl::Seconds(10));
    EXPECT_EQ(st.error_code(), code) << "PushState: " << StatusString(st);
    std::vector<uint32_t> tokens;
    v1::DecodeDone done;
    bool got_done = false;
    grpc::Status ds = stream.ReadToEnd(&tokens, &done, &got_done);
    EXPECT_EQ(ds.error_code(), code) << "Decode stream: " << StatusString(ds);
    EXPECT_TRUE(tokens.empty()) << JoinIds(tokens);
    EXPECT_FALSE(got_done);
    ExpectIdle(w);
    auto after = WaitMetric(w, "sambay_worker_failures_total", {{"reason", reason}},
                            [&](double v) { return v >= before + 1; });
    EXPECT_TRUE(after.ok()) << after.status();
    if (after.ok()) {
      EXPECT_EQ(*after, before + 1) << reason;
    }
  }

  // A handoff through the prefill worker still gives sambay-run's tokens.
  void ExpectValidHandoff(Worker& decode) {
    GenerateSpec spec;
    spec.prompt = *prompt_;
    spec.max_new_tokens = kDecodeTokens + 1;
    GenerateResult r = DisaggregatedGenerate(*prefill_, decode, spec);
    ASSERT_TRUE(r.status.ok()) << r.Describe();
    EXPECT_EQ(r.tokens, *reference_);
    ExpectIdle(decode);
    ExpectIdle(*prefill_);
  }

  static ScratchDir* dir_;
  static std::string* start_error_;
  static LocalModel* local_;
  static Worker* prefill_;
  static Worker* decode_;
  static std::vector<uint32_t>* prompt_;
  static std::vector<uint32_t>* reference_;
  std::unique_ptr<Worker> extra_;  // a test's own worker (other flags)
};
ScratchDir* FaultsTest::dir_ = nullptr;
std::string* FaultsTest::start_error_ = nullptr;
LocalModel* FaultsTest::local_ = nullptr;
Worker* FaultsTest::prefill_ = nullptr;
Worker* FaultsTest::decode_ = nullptr;
std::vector<uint32_t>* FaultsTest::prompt_ = nullptr;
std::vector<uint32_t>* FaultsTest::reference_ = nullptr;

// The in-process state pushed by hand continues exactly like sambay-run (the baseline for the
// fault cases below).
TEST_F(FaultsTest, HandPushedStateDecodesLikeSambayRun) {
  for (const bool seeded : {false, true}) {
    SCOPED_TRACE(seeded ? "seeded" : "greedy");
    const Sampling s = seeded ? Seeded(0.8f, 0.9f, 7) : Greedy();
    auto ref = ReferenceGenerate(*prompt_, s, kDecodeTokens + 1, {}, dir_->path());
    ASSERT_TRUE(ref.ok()) << ref.status();
    uint32_t pending = 0;
    auto chunks = local_->ExportPrefilled(*prompt_, s, kChunkBytes, "", &pending);
    ASSERT_TRUE(chunks.ok()) << chunks.status();
    ASSERT_EQ(pending, (*ref)[0]);
    const std::string handle = NewHandle("hand");
    DecodeStream stream(decode_->stub(), MakeHandleDecode(handle, kPromptLen, s, kDecodeTokens),
                        absl::Seconds(20));
    v1::Reserved reserved;
    grpc::Status st = stream.ExpectReserved(&reserved);
    ASSERT_TRUE(st.ok()) << StatusString(st);
    EXPECT_EQ(reserved.handle(), handle);
    EXPECT_GT(reserved.lease_seconds(), 0);
    v1::PushStateResponse resp;
    st = PushChunks(*decode_, handle, *chunks, absl::Seconds(10), &resp);
    ASSERT_TRUE(st.ok()) << StatusString(st);
    uint64_t bytes = 0;
    for (const std::string& c : *chunks) bytes += c.size();
    EXPECT_EQ(resp.bytes(), bytes);
    EXPECT_EQ(resp.chunks(), chunks->size());
    std::vector<uint32_t> tokens = {pending};
    v1::DecodeDone done;
    bool got_done = false;
    st = stream.ReadToEnd(&tokens, &done, &got_done);
    ASSERT_TRUE(st.ok()) << StatusString(st);
    EXPECT_EQ(tokens, *ref);
    EXPECT_TRUE(got_done);
    EXPECT_EQ(done.transfer_bytes(), bytes);
  }
  ExpectIdle(*decode_);
}

TEST_F(FaultsTest, CorruptedChunkPayloadIsDataLoss) {
  std::vector<std::string> chunks = ValidChunks();
  ASSERT_GE(chunks.size(), 4u);
  chunks[2][kStateChunkHeaderBytes + 100] ^= 0x5a;  // CRC32C no longer matches
  ExpectPushFailure(*decode_, chunks, grpc::StatusCode::DATA_LOSS, "data_loss");
  ExpectValidHandoff(*decode_);
}

TEST_F(FaultsTest, CorruptedFirstChunkIsDataLoss) {
  std::vector<std::string> chunks = ValidChunks();
  ASSERT_FALSE(chunks.empty());
  chunks[0][kStateChunkHeaderBytes + 3] ^= 0x01;  // inside the state header
  ExpectPushFailure(*decode_, chunks, grpc::StatusCode::DATA_LOSS, "data_loss");
  ExpectValidHandoff(*decode_);
}

TEST_F(FaultsTest, BadFrameMagicIsDataLoss) {
  std::vector<std::string> chunks = ValidChunks();
  ASSERT_GE(chunks.size(), 2u);
  chunks[1][0] = 'X';  // "SBYC" magic
  ExpectPushFailure(*decode_, chunks, grpc::StatusCode::DATA_LOSS, "data_loss");
  ExpectValidHandoff(*decode_);
}

TEST_F(FaultsTest, FrameLengthMismatchIsDataLoss) {
  std::vector<std::string> chunks = ValidChunks();
  ASSERT_GE(chunks.size(), 2u);
  chunks[1].resize(chunks[1].size() - 7);  // payload shorter than its frame says
  ExpectPushFailure(*decode_, chunks, grpc::StatusCode::DATA_LOSS, "data_loss");
  ExpectValidHandoff(*decode_);
}

TEST_F(FaultsTest, StateOfAnotherModelIsFailedPrecondition) {
  std::vector<std::string> chunks = ValidChunks("0123456789abcdef");
  ExpectPushFailure(*decode_, chunks, grpc::StatusCode::FAILED_PRECONDITION, "wrong_model");
  ExpectValidHandoff(*decode_);
}

TEST_F(FaultsTest, TruncatedStreamIsDataLoss) {
  std::vector<std::string> chunks = ValidChunks();
  ASSERT_GE(chunks.size(), 4u);
  chunks.resize(chunks.size() / 2);
  ExpectPushFailure(*decode_, chunks, grpc::StatusCode::DATA_LOSS, "data_loss");
  ExpectValidHandoff(*decode_);
}

TEST_F(FaultsTest, EmptyPushIsRejected) {
  // A stream with no chunk at all: nothing to import. Whatever the code, both ends agree and
  // nothing leaks.
  const std::string handle = NewHandle("empty");
  DecodeStream stream(decode_->stub(), MakeHandleDecode(handle, kPromptLen, Greedy(), 4),
                      absl::Seconds(20));
  ASSERT_TRUE(stream.ExpectReserved().ok());
  grpc::Status st = PushChunks(*decode_, handle, {}, absl::Seconds(10));
  EXPECT_FALSE(st.ok());
  // The reservation either failed with the push or is still waiting; release it in case.
  decode_->Release(handle);
  grpc::Status ds = stream.Finish();
  EXPECT_FALSE(ds.ok());
  ExpectIdle(*decode_);
  ExpectValidHandoff(*decode_);
}

TEST_F(FaultsTest, TokenCountMismatchIsRejected) {
  // The Decode says 100 prompt tokens; the pushed state consumed 60.
  const std::vector<uint32_t> shorter(prompt_->begin(), prompt_->begin() + 60);
  auto chunks = local_->ExportPrefilled(shorter, Greedy(), kChunkBytes);
  ASSERT_TRUE(chunks.ok()) << chunks.status();
  const std::string handle = NewHandle("count");
  DecodeStream stream(decode_->stub(), MakeHandleDecode(handle, kPromptLen, Greedy(), 4),
                      absl::Seconds(20));
  ASSERT_TRUE(stream.ExpectReserved().ok());
  grpc::Status st = PushChunks(*decode_, handle, *chunks, absl::Seconds(10));
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.error_code(), grpc::StatusCode::OK);
  grpc::Status ds = stream.Finish();
  EXPECT_EQ(ds.error_code(), st.error_code())
      << "push: " << StatusString(st) << " decode: " << StatusString(ds);
  ExpectIdle(*decode_);
  ExpectValidHandoff(*decode_);
}

TEST_F(FaultsTest, SenderVanishingMidTransferIsUnavailable) {
  std::vector<std::string> chunks = ValidChunks();
  ASSERT_GE(chunks.size(), 4u);
  const double before = Failures(*decode_, "peer_gone");
  const std::string handle = NewHandle("vanish");
  DecodeStream stream(decode_->stub(), MakeHandleDecode(handle, kPromptLen, Greedy(), 4),
                      absl::Seconds(20));
  ASSERT_TRUE(stream.ExpectReserved().ok());
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::PushStateResponse resp;
    auto writer = decode_->stub().PushState(&ctx, &resp);
    v1::StateChunk msg;
    msg.set_handle(handle);
    for (int i = 0; i < 2; ++i) {
      msg.set_data(chunks[i]);
      ASSERT_TRUE(writer->Write(msg));
      msg.clear_handle();
    }
    absl::SleepFor(absl::Milliseconds(200));  // let the chunks arrive
    ctx.TryCancel();                          // the sender goes away without WritesDone
    writer->Finish();
  }
  grpc::Status ds = stream.Finish();
  EXPECT_EQ(ds.error_code(), grpc::StatusCode::UNAVAILABLE) << StatusString(ds);
  ExpectIdle(*decode_);
  auto after = WaitMetric(*decode_, "sambay_worker_failures_total", {{"reason", "peer_gone"}},
                          [&](double v) { return v >= before + 1; });
  EXPECT_TRUE(after.ok()) << after.status();
  ExpectValidHandoff(*decode_);
}

TEST_F(FaultsTest, PushForUnknownHandleIsNotFound) {
  std::vector<std::string> chunks = ValidChunks();
  // A live reservation stays untouched by a push for another handle.
  const std::string handle = NewHandle("live");
  DecodeStream stream(decode_->stub(),
                      MakeHandleDecode(handle, kPromptLen, Greedy(), kDecodeTokens),
                      absl::Seconds(20));
  ASSERT_TRUE(stream.ExpectReserved().ok());
  grpc::Status st = PushChunks(*decode_, "no-such-handle", chunks, absl::Seconds(10));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << StatusString(st);
  auto load = decode_->GetLoad();
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->waiting(), 1u) << load->ShortDebugString();
  // Now the right handle: the reservation completes normally.
  st = PushChunks(*decode_, handle, chunks, absl::Seconds(10));
  ASSERT_TRUE(st.ok()) << StatusString(st);
  std::vector<uint32_t> tokens = {(*reference_)[0]};
  v1::DecodeDone done;
  bool got_done = false;
  st = stream.ReadToEnd(&tokens, &done, &got_done);
  ASSERT_TRUE(st.ok()) << StatusString(st);
  EXPECT_EQ(tokens, *reference_);
  // A second push for the same (now finished) handle is unknown too.
  st = PushChunks(*decode_, handle, chunks, absl::Seconds(10));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << StatusString(st);
  ExpectIdle(*decode_);
}

TEST_F(FaultsTest, DuplicateHandleIsAlreadyExistsAndReleaseFreesIt) {
  const std::string handle = NewHandle("dup");
  DecodeStream first(decode_->stub(), MakeHandleDecode(handle, kPromptLen, Greedy(), 4),
                     absl::Seconds(20));
  ASSERT_TRUE(first.ExpectReserved().ok());
  DecodeStream second(decode_->stub(), MakeHandleDecode(handle, kPromptLen, Greedy(), 4),
                      absl::Seconds(20));
  grpc::Status st = second.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS) << StatusString(st);
  uint32_t released = 0;
  st = decode_->Release(handle, &released);
  EXPECT_TRUE(st.ok()) << StatusString(st);
  EXPECT_EQ(released, 1u);
  st = first.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED) << StatusString(st);
  ExpectIdle(*decode_);
  st = decode_->Release(handle, &released);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << StatusString(st);
}

TEST_F(FaultsTest, ClientCancelFreesTheReservation) {
  const std::string handle = NewHandle("cancel");
  {
    DecodeStream stream(decode_->stub(), MakeHandleDecode(handle, kPromptLen, Greedy(), 4),
                        absl::Seconds(20));
    ASSERT_TRUE(stream.ExpectReserved().ok());
    stream.Cancel();
    EXPECT_EQ(stream.Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  ExpectIdle(*decode_);
  // The handle is gone: a push for it is NOT_FOUND.
  grpc::Status st = PushChunks(*decode_, handle, ValidChunks(), absl::Seconds(10));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << StatusString(st);
}

TEST_F(FaultsTest, LeaseExpiryIsDeadlineExceeded) {
  auto w = Worker::Start("decode", {"--lease-timeout", "1", "--push-chunk-timeout", "1"},
                         dir_->path(), "lease");
  ASSERT_TRUE(w.ok()) << w.status();
  extra_ = std::move(*w);
  auto info = extra_->GetInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->lease_seconds(), 1.0);
  const double before = Failures(*extra_, "lease_expired");

  // Nothing pushed.
  const std::string handle = NewHandle("lease");
  DecodeStream stream(extra_->stub(), MakeHandleDecode(handle, kPromptLen, Greedy(), 4),
                      absl::Seconds(20));
  v1::Reserved reserved;
  ASSERT_TRUE(stream.ExpectReserved(&reserved).ok());
  const absl::Time reserved_at = absl::Now();
  EXPECT_EQ(reserved.lease_seconds(), 1.0);
  grpc::Status ds = stream.Finish();
  const absl::Duration waited = absl::Now() - reserved_at;
  EXPECT_EQ(ds.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << StatusString(ds);
  EXPECT_GE(waited, absl::Milliseconds(700));
  EXPECT_LE(waited, absl::Seconds(3));
  ExpectIdle(*extra_);
  auto after = WaitMetric(*extra_, "sambay_worker_failures_total", {{"reason", "lease_expired"}},
                          [&](double v) { return v >= before + 1; });
  EXPECT_TRUE(after.ok()) << after.status();
  // The expired handle is gone.
  grpc::Status st = PushChunks(*extra_, handle, ValidChunks(), absl::Seconds(10));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << StatusString(st);

  // Once the state starts arriving the lease stops (a long transfer cannot expire mid-way,
  // RobustnessTest.LeaseStopsOnceTheStateArrives); a transfer that stalls is bounded by
  // --push-chunk-timeout instead.
  std::vector<std::string> chunks = ValidChunks();
  const std::string slow = NewHandle("slow");
  DecodeStream stream2(extra_->stub(), MakeHandleDecode(slow, kPromptLen, Greedy(), 4),
                       absl::Seconds(20));
  ASSERT_TRUE(stream2.ExpectReserved().ok());
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::PushStateResponse resp;
    auto writer = extra_->stub().PushState(&ctx, &resp);
    v1::StateChunk msg;
    msg.set_handle(slow);
    msg.set_data(chunks[0]);
    writer->Write(msg);
    absl::SleepFor(absl::Milliseconds(2500));
    msg.clear_handle();
    for (size_t i = 1; i < chunks.size(); ++i) {
      msg.set_data(chunks[i]);
      if (!writer->Write(msg)) break;
    }
    writer->WritesDone();
    st = writer->Finish();
  }
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << StatusString(st);
  ds = stream2.Finish();
  EXPECT_EQ(ds.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << StatusString(ds);
  ExpectIdle(*extra_);

  // A prompt handoff within the lease still works.
  ExpectValidHandoff(*extra_);
}

// --max-running 2: two reservations held, the third Decode (handle or local_prompt) is refused
// at once with RESOURCE_EXHAUSTED and counted; freeing a slot makes room again.
TEST_F(FaultsTest, NoFreeSlotIsResourceExhausted) {
  auto w = Worker::Start("both", {"--max-running", "2"}, dir_->path(), "slots");
  ASSERT_TRUE(w.ok()) << w.status();
  extra_ = std::move(*w);
  const double rejected0 =
      extra_->Metric("sambay_worker_rejections_total", {{"reason", "slots"}}).value_or(-1);
  const std::string h1 = NewHandle("slot"), h2 = NewHandle("slot");
  DecodeStream s1(extra_->stub(), MakeHandleDecode(h1, 10, Greedy(), 4), absl::Seconds(20));
  ASSERT_TRUE(s1.ExpectReserved().ok());
  DecodeStream s2(extra_->stub(), MakeHandleDecode(h2, 10, Greedy(), 4), absl::Seconds(20));
  ASSERT_TRUE(s2.ExpectReserved().ok());
  auto load = extra_->GetLoad();
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->waiting(), 2u);
  EXPECT_EQ(load->free_slots(), 0u);
  EXPECT_GT(load->state_bytes_used(), 0u);
  auto slots_used = extra_->Metric("sambay_worker_slots_used");
  EXPECT_EQ(slots_used.value_or(-1), 2);

  absl::Time t0 = absl::Now();
  DecodeStream s3(extra_->stub(), MakeHandleDecode(NewHandle("slot"), 10, Greedy(), 4),
                  absl::Seconds(20));
  grpc::Status st = s3.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << StatusString(st);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(1));
  t0 = absl::Now();
  GenerateSpec spec;
  spec.prompt = PromptIds(10, 1);
  spec.max_new_tokens = 4;
  GenerateResult local = LocalGenerate(*extra_, spec);
  EXPECT_EQ(local.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << local.Describe();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(1));
  auto rejected = WaitMetric(*extra_, "sambay_worker_rejections_total", {{"reason", "slots"}},
                             [&](double v) { return v >= rejected0 + 2; });
  EXPECT_TRUE(rejected.ok()) << rejected.status();
  if (rejected.ok()) {
    EXPECT_EQ(*rejected, rejected0 + 2);
  }

  // Free one slot: a request fits again and matches sambay-run.
  ASSERT_TRUE(extra_->Release(h1).ok());
  EXPECT_EQ(s1.Finish().error_code(), grpc::StatusCode::CANCELLED);
  auto ref = ReferenceGenerate(spec.prompt, spec.sampling, spec.max_new_tokens, {}, dir_->path());
  ASSERT_TRUE(ref.ok()) << ref.status();
  local = LocalGenerate(*extra_, spec);
  ASSERT_TRUE(local.status.ok()) << local.Describe();
  EXPECT_EQ(local.tokens, *ref);
  ASSERT_TRUE(extra_->Release(h2).ok());
  EXPECT_EQ(s2.Finish().error_code(), grpc::StatusCode::CANCELLED);
  ExpectIdle(*extra_);
}

// A small state budget: one long reservation fits, a second does not -> RESOURCE_EXHAUSTED
// (reason "memory"); the budget is back in full after release.
TEST_F(FaultsTest, NotEnoughStateMemoryIsResourceExhausted) {
  auto w = Worker::Start("both", {"--max-running", "8", "--state-memory-mib", "1"}, dir_->path(),
                         "memory");
  ASSERT_TRUE(w.ok()) << w.status();
  extra_ = std::move(*w);
  auto info = extra_->GetInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  const uint64_t total = info->state_bytes_total();
  EXPECT_EQ(total, 1u << 20);
  const uint64_t fixed = info->state_bytes_fixed(), per = info->state_bytes_per_token();
  ASSERT_GT(per, 0u);
  ASSERT_LT(fixed, total / 2);
  // Tokens such that one sequence takes more than half the budget but fits.
  const uint64_t n = (total / 2 - fixed) / per + 64;
  ASSERT_LE(fixed + n * per, total);
  ASSERT_LT(n, kTinyMaxContext);
  const uint32_t prompt_tokens = 10, max_new = static_cast<uint32_t>(n - prompt_tokens);
  const double rejected0 =
      extra_->Metric("sambay_worker_rejections_total", {{"reason", "memory"}}).value_or(-1);

  const std::string h1 = NewHandle("mem");
  DecodeStream s1(extra_->stub(), MakeHandleDecode(h1, prompt_tokens, Greedy(), max_new),
                  absl::Seconds(20));
  ASSERT_TRUE(s1.ExpectReserved().ok());
  auto load = extra_->GetLoad();
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_GE(load->state_bytes_used(), fixed + n * per - per);
  EXPECT_LE(load->state_bytes_used(), total);
  EXPECT_EQ(load->state_bytes_total(), total);

  const absl::Time t0 = absl::Now();
  DecodeStream s2(extra_->stub(),
                  MakeHandleDecode(NewHandle("mem"), prompt_tokens, Greedy(), max_new),
                  absl::Seconds(20));
  grpc::Status st = s2.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << StatusString(st);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(1));
  auto rejected = WaitMetric(*extra_, "sambay_worker_rejections_total", {{"reason", "memory"}},
                             [&](double v) { return v >= rejected0 + 1; });
  EXPECT_TRUE(rejected.ok()) << rejected.status();

  // A small sequence still fits beside the big one.
  GenerateSpec spec;
  spec.prompt = PromptIds(5, 2);
  spec.max_new_tokens = 8;
  GenerateResult small = LocalGenerate(*extra_, spec);
  EXPECT_TRUE(small.status.ok()) << small.Describe();

  ASSERT_TRUE(extra_->Release(h1).ok());
  EXPECT_EQ(s1.Finish().error_code(), grpc::StatusCode::CANCELLED);
  ExpectIdle(*extra_);
  auto after = extra_->GetLoad();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->state_bytes_used(), 0u);
}

}  // namespace
}  // namespace sambay::testing
