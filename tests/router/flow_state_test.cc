// The router's request path in process: a real GenerationService (router/service.h) and
// WorkerRegistry (router/registry.h) in front of FakeWorkers (tests/router/fake_worker.h) whose
// every call is scripted, so each branch of the attempt state machine (router/flow.h: in place,
// split, migration, prefill retry, a worker's own error, parking while full, cancel, abort) is
// checked on both sides: what the client receives, and what each worker was asked.
//
// Prompts are token ids and the fakes' tokens are bytes of the tiny model's byte tokenizer
// ("H" = 72, "e" = 101, "l" = 108, "o" = 111), so the streamed text is checked too. Every stream
// carries a deadline and every wait a timeout, so a broken flow fails a test instead of hanging.
#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "router/flow.h"
#include "router/metrics.h"
#include "router/placement.h"
#include "router/registry.h"
#include "router/request.h"
#include "router/service.h"
#include "tests/router/fake_worker.h"
#include "tests/router/router_harness.h"
#include "tokenizer/tokenizer.h"

namespace sambay {
namespace {

namespace v1 = sambay::v1;
using testing::FakeScript;
using testing::FakeWorker;
using testing::FakeWorkerOptions;
using testing::StreamResult;

constexpr absl::Duration kTimeout = absl::Seconds(10);
// What the router does at once (cancelling a worker's call) must show within this: far less than
// the stream's deadline, and the stall timeout is longer still (FastFlow), so neither can do it
// in the router's place.
constexpr absl::Duration kPromptly = absl::Seconds(3);

// A fake worker's options: its roles, free slots and queued prefill tokens (what placement reads).
FakeWorkerOptions Roles(bool prefill, bool decode, uint32_t free_slots = 4,
                        uint64_t queued_prefill_tokens = 0) {
  FakeWorkerOptions o;
  o.prefill = prefill;
  o.decode = decode;
  o.free_slots = free_slots;
  o.queued_prefill_tokens = queued_prefill_tokens;
  return o;
}

// A request with a token-id prompt (the EOS ids ignored unless ignore_eos is false).
v1::GenerateRequest PromptRequest(const std::vector<uint32_t>& prompt, uint32_t max_new_tokens,
                                  bool ignore_eos = true) {
  v1::GenerateRequest r;
  for (uint32_t id : prompt) r.mutable_token_ids()->add_ids(id);
  r.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  r.mutable_stopping()->set_ignore_eos(ignore_eos);
  return r;
}

std::vector<uint32_t> Ids(const google::protobuf::RepeatedField<uint32_t>& ids) {
  return {ids.begin(), ids.end()};
}

// The router's flow options: a short tick, so that a parked flow is placed again quickly; a long
// stall timeout, so that no test passes by a stalled stream being abandoned.
FlowOptions FastFlow() {
  FlowOptions f;
  f.tick = absl::Milliseconds(20);
  f.stall_timeout = absl::Seconds(60);
  return f;
}

class FlowStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_ = testing::TinyTokenizer();
    ASSERT_NE(tokenizer_, nullptr);
    auto policy = MakePlacementPolicy("least-loaded");
    ASSERT_TRUE(policy.ok()) << policy.status();
    policy_ = *std::move(policy);
  }

  void TearDown() override {
    stub_.reset();
    // The workers first: their calls still running end, so that no flow waits on one (a test
    // that failed may leave one) and the router stops cleanly.
    workers_.clear();
    if (server_ != nullptr) {
      server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Milliseconds(200)));
    }
    if (service_ != nullptr) service_->StopServing(absl::Seconds(5));
    if (server_ != nullptr) server_->Wait();
    server_.reset();
    service_.reset();
    registry_.reset();
  }

  // Starts one FakeWorker per entry (workers_[i]), a registry over them (waiting until every one
  // is healthy), and the router's Generation service on loopback with `flow`.
  void Start(const std::vector<FakeWorkerOptions>& workers, FlowOptions flow = FastFlow()) {
    RegistryOptions ro;
    for (const FakeWorkerOptions& o : workers) {
      auto w = FakeWorker::Start(o);
      ASSERT_TRUE(w.ok()) << w.status();
      ro.any.push_back((*w)->address());
      workers_.push_back(*std::move(w));
    }
    ro.health_interval = absl::Milliseconds(50);
    ro.probe_timeout = absl::Seconds(2);
    ro.max_backoff = absl::Milliseconds(200);
    registry_ = std::make_unique<WorkerRegistry>(ro, &metrics_);
    registry_->Start();
    ASSERT_TRUE(
        testing::WaitFor([&] { return registry_->Healthy().size() == workers_.size(); }, kTimeout));
    ASSERT_NO_FATAL_FAILURE(StartService(flow));
  }

  // The Generation service served on its own completion queue, as router/main.cc does.
  void StartService(FlowOptions flow) {
    RouterLimits limits;
    limits.vocab_size = 320;  // the tiny model's
    limits.max_context = 4096;
    limits.eos_ids = {260, 256};
    limits.max_new_tokens_limit = 1000;
    RouterServiceOptions options;
    options.flow = flow;
    service_ = std::make_unique<GenerationService>(*registry_, *policy_, metrics_, *tokenizer_,
                                                   limits, options);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs;
    cqs.push_back(builder.AddCompletionQueue());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    service_->Serve(std::move(cqs));
    ASSERT_NE(port, 0);
    stub_ = v1::Generation::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }

  StreamResult Run(const v1::GenerateRequest& request) {
    return testing::Generate(*stub_, request, kTimeout);
  }

  // Waits (at most `timeout`) until the `i`th Decode call of `w` has ended.
  static bool DecodeEnded(FakeWorker& w, size_t i, absl::Duration timeout = kPromptly) {
    return testing::WaitFor(
        [&] {
          const auto calls = w.decode_calls();
          return calls.size() > i && calls[i].ended;
        },
        timeout);
  }

  RouterMetrics metrics_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<PlacementPolicy> policy_;
  std::vector<std::unique_ptr<FakeWorker>> workers_;
  std::unique_ptr<WorkerRegistry> registry_;
  std::unique_ptr<GenerationService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

// In place (one role-both worker): one Decode with the prompt as local_prompt; the client gets
// exactly the worker's tokens and its finish reason.
TEST_F(FlowStateTest, InPlaceStreamsTheWorkersTokens) {
  ASSERT_NO_FATAL_FAILURE(Start({Roles(true, true)}));
  FakeWorker& w = *workers_[0];
  w.AddDecode(FakeScript().Tokens({72}).Tokens({101, 108}).Done(v1::DECODE_FINISH_STOP));
  v1::GenerateRequest req = PromptRequest({1, 2, 3, 4, 5}, 8, /*ignore_eos=*/false);
  req.set_request_id("in-place-1");
  req.mutable_stopping()->add_stop_token_ids(33);

  const StreamResult r = Run(req);
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_TRUE(r.protocol_error.empty()) << r.Describe();
  EXPECT_EQ(r.request_id, "in-place-1");
  EXPECT_EQ(r.ids, (std::vector<uint32_t>{72, 101, 108}));
  EXPECT_EQ(r.text, "Hel");
  EXPECT_EQ(r.finish, v1::FINISH_REASON_STOP);
  EXPECT_EQ(r.usage.prompt_tokens(), 5u);
  EXPECT_EQ(r.usage.completion_tokens(), 3u);
  EXPECT_EQ(r.usage.migrations(), 0u);
  EXPECT_EQ(r.usage.transfer_bytes(), 0u);

  const auto calls = w.decode_calls();
  ASSERT_EQ(calls.size(), 1u);
  const v1::DecodeRequest& dr = calls[0].request;
  EXPECT_EQ(dr.source_case(), v1::DecodeRequest::kLocalPrompt);
  EXPECT_EQ(Ids(dr.local_prompt().ids()), (std::vector<uint32_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(dr.rng_draws(), 0u);
  EXPECT_EQ(dr.max_new_tokens(), 8u);
  EXPECT_EQ(Ids(dr.stop_token_ids()), (std::vector<uint32_t>{33, 260, 256}));  // user's + EOS
  EXPECT_TRUE(dr.sampling().has_seed());  // the router picks one
  EXPECT_EQ(dr.request_id(), "in-place-1");
  EXPECT_EQ(calls[0].request_id_header, "in-place-1");
  EXPECT_TRUE(w.prefill_calls().empty());
}

// The router counts the tokens itself: at max_new_tokens it ends with LENGTH (dropping what the
// worker sent beyond) and releases the worker by cancelling its call.
TEST_F(FlowStateTest, InPlaceEndsAtMaxNewTokensAndReleasesTheWorker) {
  ASSERT_NO_FATAL_FAILURE(Start({Roles(true, true)}));
  FakeWorker& w = *workers_[0];
  w.AddDecode(FakeScript().Tokens({72, 101, 108, 111}).WaitCancel());

  const StreamResult r = Run(PromptRequest({1, 2, 3}, 3));
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.ids, (std::vector<uint32_t>{72, 101, 108}));
  EXPECT_EQ(r.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(r.usage.completion_tokens(), 3u);
  ASSERT_TRUE(DecodeEnded(w, 0));
  EXPECT_TRUE(w.decode_calls()[0].cancelled);
}

// A stop string ends the stream (text cut before it, STOP) and releases the worker.
TEST_F(FlowStateTest, StopStringEndsTheStreamAndReleasesTheWorker) {
  ASSERT_NO_FATAL_FAILURE(Start({Roles(true, true)}));
  FakeWorker& w = *workers_[0];
  w.AddDecode(FakeScript().Tokens({72, 101}).Tokens({108, 108, 111}).WaitCancel());
  v1::GenerateRequest req = PromptRequest({1, 2, 3}, 16);
  req.mutable_stopping()->add_stop_strings("ll");

  const StreamResult r = Run(req);
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.text, "He");
  EXPECT_EQ(r.ids, (std::vector<uint32_t>{72, 101, 108, 108}));
  EXPECT_EQ(r.finish, v1::FINISH_REASON_STOP);
  ASSERT_TRUE(DecodeEnded(w, 0));
  EXPECT_TRUE(w.decode_calls()[0].cancelled);
}

// Split: Decode(handle) on D, then Prefill on P to {D, handle}; P's first token reaches the
// client at once (while P still pushes), D's tokens follow once the prefill ended.
TEST_F(FlowStateTest, SplitReservesOnDecodeThenPrefillsToTheReservation) {
  ASSERT_NO_FATAL_FAILURE(Start({Roles(true, false), Roles(false, true)}));
  FakeWorker& p = *workers_[0];
  FakeWorker& d = *workers_[1];
  d.AddDecode(FakeScript()
                  .Reserved()
                  .Tokens({101})
                  .Tokens({108, 108})
                  .Tokens({111})
                  .Done(v1::DECODE_FINISH_STOP));
  p.AddPrefill(FakeScript().FirstToken(72).WaitRelease("push").Transfer(4096));

  testing::Stream s(*stub_, PromptRequest({1, 2, 3, 4}, 16), kTimeout);
  ASSERT_TRUE(testing::WaitFor([&] { return s.tokens() >= 1; }, kTimeout));
  EXPECT_EQ(s.tokens(), 1u) << "D's stream was read before the prefill ended";
  p.ReleaseGate("push");
  const StreamResult& r = s.Wait();
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.ids, (std::vector<uint32_t>{72, 101, 108, 108, 111}));
  EXPECT_EQ(r.text, "Hello");
  EXPECT_EQ(r.finish, v1::FINISH_REASON_STOP);
  EXPECT_EQ(r.usage.prompt_tokens(), 4u);
  EXPECT_EQ(r.usage.completion_tokens(), 5u);
  EXPECT_EQ(r.usage.transfer_bytes(), 4096u);

  const auto dcalls = d.decode_calls();
  const auto pcalls = p.prefill_calls();
  ASSERT_EQ(dcalls.size(), 1u);
  ASSERT_EQ(pcalls.size(), 1u);
  const v1::DecodeRequest& dr = dcalls[0].request;
  ASSERT_EQ(dr.source_case(), v1::DecodeRequest::kHandle);
  EXPECT_FALSE(dr.handle().empty());
  EXPECT_EQ(dr.prompt_tokens(), 4u);
  EXPECT_EQ(dr.max_new_tokens(), 15u);  // the prefill emits the first token
  const v1::PrefillRequest& pr = pcalls[0].request;
  EXPECT_EQ(Ids(pr.token_ids()), (std::vector<uint32_t>{1, 2, 3, 4}));
  EXPECT_EQ(pr.rng_draws(), 0u);
  EXPECT_EQ(pr.destination().address(), d.address());
  EXPECT_EQ(pr.destination().handle(), dr.handle());
  EXPECT_EQ(pr.sampling().seed(), dr.sampling().seed());
  EXPECT_TRUE(p.decode_calls().empty());
  EXPECT_TRUE(d.prefill_calls().empty());
}

// Split with one token to generate: the prefill's first token is the last, so no reservation is
// made and the prefill has no destination.
TEST_F(FlowStateTest, SplitWithOneTokenSkipsTheReservation) {
  ASSERT_NO_FATAL_FAILURE(Start({Roles(true, false), Roles(false, true)}));
  FakeWorker& p = *workers_[0];
  FakeWorker& d = *workers_[1];
  p.AddPrefill(FakeScript().FirstToken(72));

  const StreamResult r = Run(PromptRequest({1, 2, 3}, 1));
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.ids, (std::vector<uint32_t>{72}));
  EXPECT_EQ(r.finish, v1::FINISH_REASON_LENGTH);
  const auto pcalls = p.prefill_calls();
  ASSERT_EQ(pcalls.size(), 1u);
  EXPECT_FALSE(pcalls[0].request.has_destination());
  EXPECT_TRUE(d.decode_calls().empty());
}

// D fails (UNAVAILABLE) after two tokens: the sequence moves to D2, re-prefilled with the prompt
// plus the three tokens sent (rng_draws 3); the client sees every token once.
TEST_F(FlowStateTest, MigrationRePrefillsTheTokensSentOnAnotherDecodeWorker) {
  FlowOptions flow = FastFlow();
  flow.usage_workers = true;
  // D has the most free slots: the first pick.
  ASSERT_NO_FATAL_FAILURE(
      Start({Roles(true, false), Roles(false, true, 8), Roles(false, true, 4)}, flow));
  FakeWorker& p = *workers_[0];
  FakeWorker& d = *workers_[1];
  FakeWorker& d2 = *workers_[2];
  d.AddDecode(FakeScript().Reserved().Tokens({101}).Tokens({108}).Fail(
      grpc::StatusCode::UNAVAILABLE, "decode worker died"));
  p.AddPrefill(FakeScript().FirstToken(72).Transfer(1000));
  p.AddPrefill(FakeScript().FirstToken(108).Transfer(1000));
  d2.AddDecode(FakeScript().Reserved().Tokens({111}).Done(v1::DECODE_FINISH_STOP));

  const StreamResult r = Run(PromptRequest({1, 2, 3, 4}, 10));
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.ids, (std::vector<uint32_t>{72, 101, 108, 108, 111}));
  EXPECT_EQ(r.text, "Hello");
  EXPECT_EQ(r.finish, v1::FINISH_REASON_STOP);
  EXPECT_EQ(r.usage.migrations(), 1u);
  EXPECT_EQ(r.usage.completion_tokens(), 5u);
  EXPECT_EQ(r.usage.transfer_bytes(), 2000u);
  EXPECT_THAT(r.usage.workers(),
              ::testing::ElementsAre(p.address(), d.address(), p.address(), d2.address()));
  EXPECT_EQ(metrics_.migrations.Value(), 1);

  const auto pcalls = p.prefill_calls();
  const auto d2calls = d2.decode_calls();
  ASSERT_EQ(d.decode_calls().size(), 1u);
  ASSERT_EQ(pcalls.size(), 2u);
  ASSERT_EQ(d2calls.size(), 1u);
  const v1::PrefillRequest& again = pcalls[1].request;
  EXPECT_EQ(Ids(again.token_ids()), (std::vector<uint32_t>{1, 2, 3, 4, 72, 101, 108}));
  EXPECT_EQ(again.rng_draws(), 3u);
  EXPECT_EQ(again.sampling().seed(), pcalls[0].request.sampling().seed());
  EXPECT_EQ(again.destination().address(), d2.address());
  EXPECT_EQ(again.destination().handle(), d2calls[0].request.handle());
  EXPECT_NE(d2calls[0].request.handle(), d.decode_calls()[0].request.handle());
  EXPECT_EQ(d2calls[0].request.prompt_tokens(), 7u);
  EXPECT_EQ(d2calls[0].request.max_new_tokens(), 6u);  // 10 - 3 sent - the prefill's one
}

// P1 fails before its first token: the attempt starts again with P2 (and a new reservation on
// D, the first one cancelled); the client sees one clean stream.
TEST_F(FlowStateTest, PrefillFailureBeforeTheFirstTokenIsRetriedOnAnotherPrefillWorker) {
  // P1 has the shorter prefill queue: the first pick.
  ASSERT_NO_FATAL_FAILURE(
      Start({Roles(true, false, 4, 0), Roles(true, false, 4, 500), Roles(false, true)}));
  FakeWorker& p1 = *workers_[0];
  FakeWorker& p2 = *workers_[1];
  FakeWorker& d = *workers_[2];
  p1.AddPrefill(FakeScript().Fail(grpc::StatusCode::UNAVAILABLE, "prefill worker died"));
  d.AddDecode(FakeScript().Reserved().WaitCancel());
  p2.AddPrefill(FakeScript().FirstToken(72).Transfer(100));
  d.AddDecode(FakeScript().Reserved().Tokens({105}).Done(v1::DECODE_FINISH_STOP));

  const StreamResult r = Run(PromptRequest({1, 2, 3}, 8));
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.ids, (std::vector<uint32_t>{72, 105}));
  EXPECT_EQ(r.text, "Hi");
  EXPECT_EQ(r.finish, v1::FINISH_REASON_STOP);
  EXPECT_EQ(r.usage.migrations(), 0u);

  EXPECT_EQ(p1.prefill_calls().size(), 1u);
  const auto pcalls = p2.prefill_calls();
  ASSERT_EQ(pcalls.size(), 1u);
  ASSERT_TRUE(DecodeEnded(d, 0));
  const auto dcalls = d.decode_calls();
  ASSERT_EQ(dcalls.size(), 2u);
  EXPECT_TRUE(dcalls[0].cancelled) << "the first reservation was not released";
  EXPECT_NE(dcalls[0].request.handle(), dcalls[1].request.handle());
  EXPECT_EQ(Ids(pcalls[0].request.token_ids()), (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_EQ(pcalls[0].request.rng_draws(), 0u);
  EXPECT_EQ(pcalls[0].request.destination().address(), d.address());
  EXPECT_EQ(pcalls[0].request.destination().handle(), dcalls[1].request.handle());
}

// A worker that judges the request itself wrong (INVALID_ARGUMENT) is not second-guessed: no
// other worker is tried, and the client gets the worker's status.
TEST_F(FlowStateTest, WorkersInvalidArgumentIsNotRetried) {
  // W1 is the pick for both roles (more free slots, no prefill queue): in place on W1.
  ASSERT_NO_FATAL_FAILURE(Start({Roles(true, true, 8, 0), Roles(true, true, 4, 500)}));
  FakeWorker& w1 = *workers_[0];
  FakeWorker& w2 = *workers_[1];
  w1.AddDecode(FakeScript().Fail(grpc::StatusCode::INVALID_ARGUMENT,
                                 "max_new_tokens: refused by the fake worker"));

  const StreamResult r = Run(PromptRequest({1, 2, 3}, 8));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << r.Describe();
  EXPECT_EQ(r.status.error_message(), "max_new_tokens: refused by the fake worker");
  EXPECT_TRUE(r.ids.empty());
  EXPECT_EQ(w1.decode_calls().size(), 1u);
  EXPECT_TRUE(w2.decode_calls().empty());
  EXPECT_TRUE(w2.prefill_calls().empty());
}

// The only decode worker is full (RESOURCE_EXHAUSTED, and its load says no free slot): the flow
// waits, holding the request, and places it again once a probe shows room.
TEST_F(FlowStateTest, FullWorkerParksTheRequestUntilItHasRoom) {
  ASSERT_NO_FATAL_FAILURE(Start({Roles(true, true, 4)}));
  FakeWorker& w = *workers_[0];
  // The probe after the worker became full is answered before it refuses the sequence, so the
  // router sees no free slot from then on.
  w.AddDecode(FakeScript().SetFreeSlots(0).WaitProbe().Fail(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                                            "no free slot"));
  w.AddDecode(FakeScript().Tokens({79, 75}).Done(v1::DECODE_FINISH_LENGTH));

  testing::Stream s(*stub_, PromptRequest({1, 2, 3}, 8), kTimeout);
  ASSERT_TRUE(DecodeEnded(w, 0, kTimeout));
  const int64_t probes = w.load_probes();
  ASSERT_TRUE(testing::WaitFor([&] { return w.load_probes() >= probes + 2; }, kTimeout));
  EXPECT_EQ(w.decode_calls().size(), 1u) << "placed on a worker with no free slot";
  EXPECT_FALSE(s.done()) << "the request did not wait for room";
  w.SetFreeSlots(4);

  const StreamResult& r = s.Wait();
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.ids, (std::vector<uint32_t>{79, 75}));
  EXPECT_EQ(r.text, "OK");
  EXPECT_EQ(r.finish, v1::FINISH_REASON_LENGTH);
  const auto calls = w.decode_calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(Ids(calls[1].request.local_prompt().ids()), (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_EQ(calls[1].request.rng_draws(), 0u);
}

// The in-place worker fails after a token and no other decode worker is left: the stream ends
// UNAVAILABLE at once, after the token already sent.
TEST_F(FlowStateTest, DecodeFailureWithNoWorkerLeftEndsUnavailable) {
  ASSERT_NO_FATAL_FAILURE(Start({Roles(true, true)}));
  FakeWorker& w = *workers_[0];
  w.AddDecode(FakeScript().Tokens({72}).Fail(grpc::StatusCode::UNAVAILABLE, "worker died"));

  const StreamResult r = Run(PromptRequest({1, 2, 3}, 8));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.Describe();
  EXPECT_THAT(r.status.error_message(),
              ::testing::HasSubstr("no healthy decode worker can take the request (after 1"));
  EXPECT_EQ(r.ids, (std::vector<uint32_t>{72}));
  EXPECT_EQ(w.decode_calls().size(), 1u);
}

// The client cancels mid-stream: the worker's call is cancelled.
TEST_F(FlowStateTest, ClientCancelCancelsTheWorkersCall) {
  ASSERT_NO_FATAL_FAILURE(Start({Roles(true, true)}));
  FakeWorker& w = *workers_[0];
  w.AddDecode(FakeScript().Tokens({72}).WaitCancel());

  testing::Stream s(*stub_, PromptRequest({1, 2, 3}, 8), kTimeout);
  ASSERT_TRUE(testing::WaitFor([&] { return s.tokens() >= 1; }, kTimeout));
  s.Cancel();
  EXPECT_EQ(s.Wait().status.error_code(), grpc::StatusCode::CANCELLED) << s.Wait().Describe();
  ASSERT_TRUE(DecodeEnded(w, 0));
  EXPECT_TRUE(w.decode_calls()[0].cancelled);
}

// Abort(request_id) ends the stream OK with finish_reason ABORT and cancels the worker's call.
TEST_F(FlowStateTest, AbortEndsTheStreamAndCancelsTheWorkersCall) {
  ASSERT_NO_FATAL_FAILURE(Start({Roles(true, true)}));
  FakeWorker& w = *workers_[0];
  w.AddDecode(FakeScript().Tokens({72}).WaitCancel());
  v1::GenerateRequest req = PromptRequest({1, 2, 3}, 8);
  req.set_request_id("abort-me");

  testing::Stream s(*stub_, req, kTimeout);
  ASSERT_TRUE(testing::WaitFor([&] { return s.tokens() >= 1; }, kTimeout));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + kTimeout));
  v1::AbortRequest ar;
  ar.set_request_id("abort-me");
  v1::AbortResponse resp;
  const grpc::Status st = stub_->Abort(&ctx, ar, &resp);
  ASSERT_TRUE(st.ok()) << testing::Str(st);
  EXPECT_TRUE(resp.aborted());

  const StreamResult& r = s.Wait();
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.finish, v1::FINISH_REASON_ABORT);
  EXPECT_EQ(r.ids, (std::vector<uint32_t>{72}));
  ASSERT_TRUE(DecodeEnded(w, 0));
  EXPECT_TRUE(w.decode_calls()[0].cancelled);
}

}  // namespace
}  // namespace sambay
