// Robustness of one worker against hostile or stalled callers:
//   * streams held open (Health/Watch, reflection, idle PushState) never take the threads that
//     Check, GetLoad and Prefill need;
//   * stop_token_ids is capped and still stops exactly with a long unsorted list;
//   * handles up to kMaxHandleBytes work, longer ones are INVALID_ARGUMENT;
//   * a PushState sender that stalls is cut off, and the reservation freed;
//   * Prefill pushes only to allowed destinations;
//   * the lease stops once the state arrives, so a slow transfer completes.
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>

#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/limits.h"
#include "gtest/gtest.h"
#include "tests/worker/worker_harness.h"

namespace sambay::testing {
namespace {

namespace v1 = sambay::v1;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

constexpr int kFlood = 200;

class RobustnessTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure()) {
      for (auto* w : {a_.get(), b_.get()}) {
        if (w != nullptr) std::cerr << "---- " << w->name() << " log:\n" << w->Logs() << "\n";
      }
    }
  }
  std::unique_ptr<Worker> Start(const std::string& role, const std::vector<std::string>& extra,
                                const std::string& name) {
    auto w = Worker::Start(role, extra, dir_.path(), name);
    EXPECT_TRUE(w.ok()) << w.status();
    return w.ok() ? *std::move(w) : nullptr;
  }
  // GetLoad answers within a second.
  void ExpectResponsive(Worker& w) {
    const absl::Time t0 = absl::Now();
    auto load = w.GetLoad(absl::Seconds(2));
    EXPECT_TRUE(load.ok()) << load.status();
    EXPECT_LT(absl::Now() - t0, absl::Seconds(1));
    auto ready = w.Health("sambay.v1.Worker", absl::Seconds(2));
    ASSERT_TRUE(ready.ok()) << ready.status();
    EXPECT_EQ(*ready, HealthCheckResponse::SERVING);
  }

  ScratchDir dir_;
  std::unique_ptr<Worker> a_, b_;
};

// A bidi stream opened with the generic stub and left silent (no message sent).
struct SilentStream {
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call;
};

TEST_F(RobustnessTest, HeldStreamsDoNotStarveProbes) {
  a_ = Start("both", {"--max-running", "4"}, "both");
  ASSERT_NE(a_, nullptr);
  // 200 Watch streams, each past its first answer.
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<HealthCheckResponse>>> watches;
  HealthCheckRequest req;
  req.set_service("sambay.v1.Worker");
  for (int i = 0; i < kFlood; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    ctxs.back()->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    watches.push_back(a_->health().Watch(ctxs.back().get(), req));
  }
  int answered = 0;
  for (auto& w : watches) {
    HealthCheckResponse resp;
    if (w->Read(&resp)) ++answered;
  }
  EXPECT_GT(answered, 0);
  // 200 reflection streams that never send a request.
  auto channel = grpc::CreateChannel(a_->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(channel);
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<SilentStream>> silent;
  for (int i = 0; i < kFlood; ++i) {
    auto s = std::make_unique<SilentStream>();
    s->call = generic.PrepareCall(
        &s->ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
    s->call->StartCall(s.get());
    silent.push_back(std::move(s));
  }
  for (int i = 0; i < kFlood; ++i) {
    void* tag;
    bool ok;
    ASSERT_TRUE(cq.Next(&tag, &ok));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the server took them all

  ExpectResponsive(*a_);
  GenerateSpec spec;
  spec.prompt = PromptIds(20, 7);
  spec.max_new_tokens = 4;
  spec.timeout = absl::Seconds(10);
  GenerateResult r = LocalGenerate(*a_, spec);
  EXPECT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.tokens.size(), 4u);

  for (auto& c : ctxs) c->TryCancel();
  for (auto& s : silent) s->ctx.TryCancel();
  for (auto& w : watches) w->Finish();
  cq.Shutdown();
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {
  }
}

TEST_F(RobustnessTest, IdlePushStateStreamsDoNotStarveGetLoad) {
  a_ = Start("decode", {"--max-running", "4", "--push-first-chunk-timeout", "30"}, "decode");
  ASSERT_NE(a_, nullptr);
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<v1::PushStateResponse> resps(kFlood);
  std::vector<std::unique_ptr<grpc::ClientWriter<v1::StateChunk>>> writers;
  for (int i = 0; i < kFlood; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    ctxs.back()->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    writers.push_back(a_->stub().PushState(ctxs.back().get(), &resps[i]));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ExpectResponsive(*a_);
  // Past the cap (--max-running), the streams were refused at once.
  int exhausted = 0;
  for (int i = 4; i < kFlood; ++i) {
    grpc::Status st = writers[i]->Finish();
    if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++exhausted;
  }
  EXPECT_EQ(exhausted, kFlood - 4);
  for (auto& c : ctxs) c->TryCancel();
  for (int i = 0; i < 4; ++i) writers[i]->Finish();
}

TEST_F(RobustnessTest, StopTokenIdsAreCappedAndLookedUpExactly) {
  a_ = Start("both", {"--max-running", "4"}, "both");
  ASSERT_NE(a_, nullptr);
  const std::vector<uint32_t> prompt = PromptIds(30, 99);
  auto ref = ReferenceGenerate(prompt, Greedy(), 12, {}, dir_.path());
  ASSERT_TRUE(ref.ok()) << ref.status();
  // Over the cap: INVALID_ARGUMENT naming the field.
  {
    std::vector<uint32_t> stops(kMaxStopTokenIds + 1, 1);
    DecodeStream s(a_->stub(), MakeLocalDecode(prompt, Greedy(), 8, stops), absl::Seconds(10));
    grpc::Status st = s.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusString(st);
    EXPECT_NE(st.error_message().find("stop_token_ids"), std::string::npos) << st.error_message();
  }
  // At the cap, unsorted, with repeats: every id but the reference's first 3 tokens.
  const std::set<uint32_t> skip((*ref).begin(), (*ref).begin() + 3);
  std::vector<uint32_t> stops;
  for (uint32_t i = 0; stops.size() < kMaxStopTokenIds; ++i) {
    const uint32_t id = (kTinyVocab - 1 - (i * 37) % kTinyVocab);
    if (skip.count(id) == 0) stops.push_back(id);
  }
  size_t expect = 0;
  while (expect < ref->size() && skip.count((*ref)[expect]) != 0) ++expect;
  ASSERT_LT(expect, ref->size());
  GenerateSpec spec;
  spec.prompt = prompt;
  spec.max_new_tokens = 12;
  spec.stop_ids = stops;
  GenerateResult r = LocalGenerate(*a_, spec);
  ASSERT_TRUE(r.status.ok()) << r.Describe();
  EXPECT_EQ(r.tokens, std::vector<uint32_t>(ref->begin(), ref->begin() + expect + 1));
  EXPECT_EQ(r.done.reason(), v1::DECODE_FINISH_STOP);
  ExpectIdle(*a_);
}

TEST_F(RobustnessTest, HandlesUpToTheLimit) {
  a_ = Start("prefill", {"--max-running", "4"}, "prefill");
  b_ = Start("decode", {"--max-running", "4"}, "decode");
  ASSERT_NE(a_, nullptr);
  ASSERT_NE(b_, nullptr);
  const std::vector<uint32_t> prompt = PromptIds(40, 5);
  auto ref = ReferenceGenerate(prompt, Greedy(), 6, {}, dir_.path());
  ASSERT_TRUE(ref.ok()) << ref.status();
  for (const std::string& handle :
       {std::string("0123456789abcdef0123456789abcdef"), std::string(kMaxHandleBytes, 'h')}) {
    DecodeStream d(b_->stub(), MakeHandleDecode(handle, 40, Greedy(), 5), absl::Seconds(20));
    ASSERT_TRUE(d.ExpectReserved().ok());
    grpc::Status st =
        RunPrefill(*a_, MakePrefill(prompt, Greedy(), b_->address(), handle), absl::Seconds(20));
    EXPECT_TRUE(st.ok()) << StatusString(st);
    std::vector<uint32_t> tokens;
    v1::DecodeDone done;
    bool got_done = false;
    st = d.ReadToEnd(&tokens, &done, &got_done);
    EXPECT_TRUE(st.ok()) << StatusString(st);
    EXPECT_EQ(tokens, std::vector<uint32_t>(ref->begin() + 1, ref->end()));
  }
  const std::string too_long(kMaxHandleBytes + 1, 'h');
  DecodeStream d(b_->stub(), MakeHandleDecode(too_long, 40, Greedy(), 5), absl::Seconds(10));
  grpc::Status st = d.ExpectReserved();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusString(st);
  EXPECT_NE(st.error_message().find("handle"), std::string::npos) << st.error_message();
  st = RunPrefill(*a_, MakePrefill(prompt, Greedy(), b_->address(), too_long), absl::Seconds(10));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusString(st);
  EXPECT_NE(st.error_message().find("destination.handle"), std::string::npos) << st.error_message();
  ExpectIdle(*a_);
  ExpectIdle(*b_);
}

// Opens PushState for `handle`, sends `chunks`, then neither sends more nor closes.
grpc::Status StalledPush(Worker& w, const std::string& handle,
                         const std::vector<std::string>& chunks, absl::Duration* took) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::PushStateResponse resp;
  const absl::Time t0 = absl::Now();
  auto writer = w.stub().PushState(&ctx, &resp);
  v1::StateChunk msg;
  msg.set_handle(handle);
  for (const std::string& c : chunks) {
    msg.set_data(c);
    writer->Write(msg);
    msg.clear_handle();
  }
  grpc::Status st = writer->Finish();  // no WritesDone: the server has to end it
  *took = absl::Now() - t0;
  return st;
}

TEST_F(RobustnessTest, StalledPushStateIsCutOffAndFreed) {
  a_ = Start("decode",
             {"--max-running", "4", "--lease-timeout", "60", "--push-first-chunk-timeout", "1",
              "--push-chunk-timeout", "1"},
             "decode");
  ASSERT_NE(a_, nullptr);
  auto local = LocalModel::Load();
  ASSERT_TRUE(local.ok()) << local.status();
  const std::vector<uint32_t> prompt = PromptIds(60, 3);
  auto chunks = (*local)->ExportPrefilled(prompt, Greedy(), 8 << 10);
  ASSERT_TRUE(chunks.ok()) << chunks.status();
  ASSERT_GE(chunks->size(), 2u);
  // Nothing sent at all.
  absl::Duration took;
  grpc::Status st = StalledPush(*a_, "nobody", {}, &took);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << StatusString(st);
  EXPECT_LT(took, absl::Seconds(5));
  // The first chunk, then silence: the reservation ends and its memory is freed.
  const std::string handle = NewHandle("stall");
  DecodeStream d(a_->stub(), MakeHandleDecode(handle, 60, Greedy(), 4), absl::Seconds(30));
  ASSERT_TRUE(d.ExpectReserved().ok());
  st = StalledPush(*a_, handle, {(*chunks)[0]}, &took);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << StatusString(st);
  EXPECT_NE(st.error_message().find("--push-chunk-timeout"), std::string::npos)
      << st.error_message();
  EXPECT_LT(took, absl::Seconds(5));
  std::vector<uint32_t> tokens;
  v1::DecodeDone done;
  bool got_done = false;
  st = d.ReadToEnd(&tokens, &done, &got_done);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << StatusString(st);
  ExpectIdle(*a_);
}

TEST_F(RobustnessTest, LeaseStopsOnceTheStateArrives) {
  a_ = Start("decode", {"--max-running", "4", "--lease-timeout", "1", "--push-chunk-timeout", "10"},
             "decode");
  ASSERT_NE(a_, nullptr);
  auto local = LocalModel::Load();
  ASSERT_TRUE(local.ok()) << local.status();
  const std::vector<uint32_t> prompt = PromptIds(60, 11);
  auto ref = ReferenceGenerate(prompt, Greedy(), 5, {}, dir_.path());
  ASSERT_TRUE(ref.ok()) << ref.status();
  auto chunks = (*local)->ExportPrefilled(prompt, Greedy(), 8 << 10);
  ASSERT_TRUE(chunks.ok()) << chunks.status();
  const std::string handle = NewHandle("slow");
  DecodeStream d(a_->stub(), MakeHandleDecode(handle, 60, Greedy(), 4), absl::Seconds(30));
  ASSERT_TRUE(d.ExpectReserved().ok());
  // The first chunk inside the lease, the rest after it would have expired.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::PushStateResponse resp;
  auto writer = a_->stub().PushState(&ctx, &resp);
  v1::StateChunk msg;
  msg.set_handle(handle);
  for (size_t i = 0; i < chunks->size(); ++i) {
    msg.set_data((*chunks)[i]);
    ASSERT_TRUE(writer->Write(msg));
    msg.clear_handle();
    if (i == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  }
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  EXPECT_TRUE(st.ok()) << StatusString(st);
  std::vector<uint32_t> tokens;
  v1::DecodeDone done;
  bool got_done = false;
  st = d.ReadToEnd(&tokens, &done, &got_done);
  EXPECT_TRUE(st.ok()) << StatusString(st);
  EXPECT_EQ(tokens, std::vector<uint32_t>(ref->begin() + 1, ref->end()));
  ExpectIdle(*a_);
}

grpc::Status Renew(Worker& w, const std::string& handle, double* lease_seconds = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::RenewLeaseRequest req;
  req.set_handle(handle);
  v1::RenewLeaseResponse resp;
  grpc::Status st = w.stub().RenewLease(&ctx, req, &resp);
  if (lease_seconds != nullptr) *lease_seconds = resp.lease_seconds();
  return st;
}

// A prefill slower than the lease completes exactly when the router renews the lease meanwhile.
TEST_F(RobustnessTest, RenewedLeaseOutlastsASlowPrefill) {
  a_ = Start("decode", {"--max-running", "4", "--lease-timeout", "1"}, "decode");
  b_ = Start("prefill", {"--max-running", "4"}, "prefill");
  ASSERT_NE(a_, nullptr);
  ASSERT_NE(b_, nullptr);
  const std::vector<uint32_t> prompt = PromptIds(50, 17);
  auto ref = ReferenceGenerate(prompt, Greedy(), 5, {}, dir_.path());
  ASSERT_TRUE(ref.ok()) << ref.status();
  const std::string handle = NewHandle("renew");
  DecodeStream d(a_->stub(), MakeHandleDecode(handle, 50, Greedy(), 4), absl::Seconds(30));
  ASSERT_TRUE(d.ExpectReserved().ok());
  for (int i = 0; i < 6; ++i) {  // 3 s: three leases long
    double lease = 0;
    grpc::Status st = Renew(*a_, handle, &lease);
    ASSERT_TRUE(st.ok()) << StatusString(st);
    EXPECT_EQ(lease, 1.0);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  grpc::Status st =
      RunPrefill(*b_, MakePrefill(prompt, Greedy(), a_->address(), handle), absl::Seconds(20));
  EXPECT_TRUE(st.ok()) << StatusString(st);
  std::vector<uint32_t> tokens;
  v1::DecodeDone done;
  bool got_done = false;
  st = d.ReadToEnd(&tokens, &done, &got_done);
  EXPECT_TRUE(st.ok()) << StatusString(st);
  EXPECT_EQ(tokens, std::vector<uint32_t>(ref->begin() + 1, ref->end()));
  // Unknown, ended and malformed handles.
  st = Renew(*a_, handle);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << StatusString(st);
  st = Renew(*a_, std::string(kMaxHandleBytes + 1, 'x'));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusString(st);
  EXPECT_NE(st.error_message().find("handle"), std::string::npos);
  st = Renew(*b_, "any");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << StatusString(st);
  ExpectIdle(*a_);
  ExpectIdle(*b_);
}

TEST_F(RobustnessTest, PrefillPushesOnlyToAllowedDestinations) {
  a_ = Start("prefill", {"--max-running", "4"}, "prefill");
  ASSERT_NE(a_, nullptr);
  const std::vector<uint32_t> prompt = PromptIds(20, 1);
  for (const char* addr : {"10.1.2.3:50052", "169.254.169.254:80", "example.com:443"}) {
    grpc::Status st = RunPrefill(*a_, MakePrefill(prompt, Greedy(), addr, "h1"), absl::Seconds(5));
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << addr << StatusString(st);
    EXPECT_NE(st.error_message().find("destination.address"), std::string::npos)
        << st.error_message();
  }
  for (const char* addr : {"dns:///10.1.2.3:50052", "unix:/tmp/x", "127.0.0.1"}) {
    grpc::Status st = RunPrefill(*a_, MakePrefill(prompt, Greedy(), addr, "h1"), absl::Seconds(5));
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << addr << StatusString(st);
    EXPECT_NE(st.error_message().find("destination.address"), std::string::npos)
        << st.error_message();
  }
  ExpectIdle(*a_);
  // A list without loopback refuses the local decode worker; loopback (the default) serves it.
  b_ = Start("decode", {"--max-running", "4"}, "decode");
  ASSERT_NE(b_, nullptr);
  auto strict = Worker::Start("prefill", {"--push-allow", "10.0.0.0/8,decode.internal:50052"},
                              dir_.path(), "strict");
  ASSERT_TRUE(strict.ok()) << strict.status();
  grpc::Status st =
      RunPrefill(**strict, MakePrefill(prompt, Greedy(), b_->address(), "h2"), absl::Seconds(5));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << StatusString(st);
  GenerateSpec spec;
  spec.prompt = prompt;
  spec.max_new_tokens = 4;
  GenerateResult r = DisaggregatedGenerate(*a_, *b_, spec);
  EXPECT_TRUE(r.status.ok()) << r.Describe();
}

TEST_F(RobustnessTest, BadPushAllowFlagIsRefused) {
  int n = 0;
  for (const char* spec : {"300.1.1.1/8", "10.0.0.0/33", "host:99999", "a b"}) {
    auto w =
        Worker::Start("prefill", {"--push-allow", spec}, dir_.path(), absl::StrCat("bad", n++));
    EXPECT_FALSE(w.ok()) << spec;
    if (!w.ok()) {
      EXPECT_NE(std::string(w.status().message()).find("--push-allow"), std::string::npos)
          << w.status();
    }
  }
}

// A string field that is not UTF-8 is INVALID_ARGUMENT naming the field (it was INTERNAL, from
// protobuf's parse), on the streaming Prefill as on the unary Release. The bytes are sent raw by
// tests/router/raw_grpc_call.js, since a gRPC client would not serialize them.
TEST_F(RobustnessTest, InvalidUtf8IsInvalidArgumentNamingTheField) {
  a_ = Start("both", {}, "both");
  ASSERT_NE(a_, nullptr);
  if (std::system("command -v node >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "node is not installed (scripts/install-deps.sh installs it)";
  }
  const std::string port = a_->address().substr(a_->address().rfind(':') + 1);
  // Field 1 (PrefillRequest.request_id, ReleaseRequest.handle) holding the bytes ff 61.
  for (const auto& [method, field] :
       {std::pair<std::string, std::string>{"Prefill", "request_id"}, {"Release", "handle"}}) {
    const std::string cmd =
        absl::StrCat("node ", SAMBAY_SOURCE_DIR, "/tests/router/raw_grpc_call.js ", port,
                     " /sambay.v1.Worker/", method, " x-test 61 0a02ff61 2>&1");
    std::string out;
    if (FILE* p = popen(cmd.c_str(), "r")) {
      char buf[4096];
      size_t n;
      while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
      pclose(p);
    }
    SCOPED_TRACE(absl::StrCat(method, ": ", out));
    EXPECT_NE(out.find("\"grpc_status\":\"3\""), std::string::npos) << a_->Logs();
    EXPECT_NE(out.find(absl::StrCat("\"grpc_message\":\"", field, ": invalid UTF-8\"")),
              std::string::npos);
  }
  ExpectResponsive(*a_);
}

}  // namespace
}  // namespace sambay::testing
