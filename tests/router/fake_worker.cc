#include "tests/router/fake_worker.h"

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace sambay::testing {
namespace {

namespace pb = sambay::v1;

// The longest a scripted wait lasts, and how often it looks at the call's cancellation.
constexpr absl::Duration kWaitLimit = absl::Seconds(10);
constexpr absl::Duration kPoll = absl::Milliseconds(1);

grpc::Status WrongStep(const char* method) {
  return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                      absl::StrCat("fake worker: a scripted step does not apply to ", method));
}

// The message a sending step of a Decode call writes; false for a step Decode cannot send.
bool FillMessage(const FakeStep& step, const pb::DecodeRequest& req, pb::DecodeResponse* msg) {
  switch (step.kind) {
    case FakeStep::Kind::kReserved:
      msg->mutable_reserved()->set_handle(req.handle());
      msg->mutable_reserved()->set_lease_seconds(30);
      return true;
    case FakeStep::Kind::kTokens:
      msg->mutable_tokens()->mutable_token_ids()->Add(step.ids.begin(), step.ids.end());
      return true;
    case FakeStep::Kind::kDone:
      msg->mutable_done()->set_reason(step.reason);
      return true;
    default:
      return false;
  }
}

// The message a sending step of a Prefill call writes; false for a step Prefill cannot send.
bool FillMessage(const FakeStep& step, const pb::PrefillRequest& req, pb::PrefillResponse* msg) {
  switch (step.kind) {
    case FakeStep::Kind::kFirstToken:
      msg->mutable_first_token()->set_token_id(step.ids.empty() ? 0 : step.ids[0]);
      msg->mutable_first_token()->set_prefill_seconds(0.001);
      return true;
    case FakeStep::Kind::kTransfer:
      msg->mutable_transfer()->set_bytes(step.value);
      msg->mutable_transfer()->set_chunks(1);
      msg->mutable_transfer()->set_transfer_seconds(0.001);
      return true;
    default:
      return false;
  }
}

bool IsControlStep(FakeStep::Kind kind) {
  return kind == FakeStep::Kind::kSetFreeSlots || kind == FakeStep::Kind::kWaitProbe ||
         kind == FakeStep::Kind::kWaitRelease || kind == FakeStep::Kind::kWaitCancel;
}

const char* MethodName(const pb::DecodeRequest&) { return "Decode"; }
const char* MethodName(const pb::PrefillRequest&) { return "Prefill"; }

std::string RequestIdHeader(const grpc::ServerContext& ctx) {
  auto it = ctx.client_metadata().find("x-request-id");
  if (it == ctx.client_metadata().end()) return "";
  return std::string(it->second.data(), it->second.size());
}

}  // namespace

// ---- FakeScript ----------------------------------------------------------------------------

FakeScript& FakeScript::Add(FakeStep step) {
  steps_.push_back(std::move(step));
  return *this;
}

FakeScript& FakeScript::Tokens(std::vector<uint32_t> ids) {
  FakeStep s(FakeStep::Kind::kTokens);
  s.ids = std::move(ids);
  return Add(std::move(s));
}

FakeScript& FakeScript::Done(pb::DecodeFinish reason) {
  FakeStep s(FakeStep::Kind::kDone);
  s.reason = reason;
  return Add(std::move(s));
}

FakeScript& FakeScript::FirstToken(uint32_t id) {
  FakeStep s(FakeStep::Kind::kFirstToken);
  s.ids = {id};
  return Add(std::move(s));
}

FakeScript& FakeScript::Transfer(uint64_t bytes) {
  FakeStep s(FakeStep::Kind::kTransfer);
  s.value = bytes;
  return Add(std::move(s));
}

FakeScript& FakeScript::SetFreeSlots(uint32_t n) {
  FakeStep s(FakeStep::Kind::kSetFreeSlots);
  s.value = n;
  return Add(std::move(s));
}

FakeScript& FakeScript::WaitRelease(std::string gate) {
  FakeStep s(FakeStep::Kind::kWaitRelease);
  s.gate = std::move(gate);
  return Add(std::move(s));
}

FakeScript& FakeScript::Fail(grpc::StatusCode code, std::string message) {
  status_ = grpc::Status(code, std::move(message));
  return *this;
}

// ---- FakeWorker ----------------------------------------------------------------------------

FakeWorker::FakeWorker(FakeWorkerOptions options)
    : options_(std::move(options)), free_slots_(options_.free_slots) {}

absl::StatusOr<std::unique_ptr<FakeWorker>> FakeWorker::Start(FakeWorkerOptions options) {
  std::unique_ptr<FakeWorker> w(new FakeWorker(std::move(options)));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(w.get());
  w->server_ = builder.BuildAndStart();
  if (w->server_ == nullptr || port == 0) {
    return absl::UnavailableError("fake worker: cannot listen on 127.0.0.1");
  }
  w->address_ = absl::StrCat("127.0.0.1:", port);
  return w;
}

FakeWorker::~FakeWorker() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    cv_.SignalAll();
  }
  if (server_ != nullptr) {
    server_->Shutdown(absl::ToChronoTime(absl::Now()));
    server_->Wait();
  }
}

void FakeWorker::AddDecode(FakeScript script) {
  MutexLock lock(&mu_);
  decode_.scripts.push_back(std::move(script));
}

void FakeWorker::AddPrefill(FakeScript script) {
  MutexLock lock(&mu_);
  prefill_.scripts.push_back(std::move(script));
}

void FakeWorker::SetFreeSlots(uint32_t n) {
  MutexLock lock(&mu_);
  free_slots_ = n;
}

void FakeWorker::ReleaseGate(const std::string& gate) {
  MutexLock lock(&mu_);
  released_.insert(gate);
  cv_.SignalAll();
}

std::vector<FakeDecodeCall> FakeWorker::decode_calls() const {
  MutexLock lock(&mu_);
  return decode_.calls;
}

std::vector<FakePrefillCall> FakeWorker::prefill_calls() const {
  MutexLock lock(&mu_);
  return prefill_.calls;
}

int64_t FakeWorker::load_probes() const {
  MutexLock lock(&mu_);
  return load_probes_;
}

grpc::Status FakeWorker::GetLoad(grpc::ServerContext* ctx, const pb::GetLoadRequest* req,
                                 pb::WorkerLoad* resp) {
  MutexLock lock(&mu_);
  resp->set_free_slots(free_slots_);
  resp->set_queued_prefill_tokens(options_.queued_prefill_tokens);
  ++load_probes_;
  cv_.SignalAll();
  return grpc::Status::OK;
}

grpc::Status FakeWorker::GetInfo(grpc::ServerContext* ctx, const pb::GetInfoRequest* req,
                                 pb::WorkerInfo* resp) {
  resp->set_fingerprint(options_.fingerprint);
  resp->set_model_type("phi4flash");
  resp->set_vocab_size(options_.vocab_size);
  if (options_.prefill) resp->add_roles("prefill");
  if (options_.decode) resp->add_roles("decode");
  resp->set_max_running(options_.free_slots);
  resp->set_max_context_tokens(options_.max_context_tokens);
  resp->set_lease_seconds(30);
  resp->set_version("fake");
  return grpc::Status::OK;
}

grpc::Status FakeWorker::RenewLease(grpc::ServerContext* ctx, const pb::RenewLeaseRequest* req,
                                    pb::RenewLeaseResponse* resp) {
  resp->set_lease_seconds(30);
  return grpc::Status::OK;
}

grpc::Status FakeWorker::Release(grpc::ServerContext* ctx, const pb::ReleaseRequest* req,
                                 pb::ReleaseResponse* resp) {
  return grpc::Status::OK;
}

template <class Request, class Response>
grpc::Status FakeWorker::Serve(grpc::ServerContext* ctx, const Request& req,
                               grpc::ServerWriter<Response>* writer) {
  std::optional<FakeScript> script;
  size_t index = 0;
  {
    MutexLock lock(&mu_);
    Method<Request>& m = MethodLocked(req);
    index = m.calls.size();
    FakeCallRecord<Request> record;
    record.request = req;
    record.request_id_header = RequestIdHeader(*ctx);
    record.load_probes_before = load_probes_;
    m.calls.push_back(std::move(record));
    if (!m.scripts.empty()) {
      script = std::move(m.scripts.front());
      m.scripts.pop_front();
    }
    cv_.SignalAll();
  }
  int sent = 0;
  bool cancelled = false;
  const grpc::Status status =
      script.has_value()
          ? RunScript(ctx, req, *script, writer, &sent, &cancelled)
          : grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                         absl::StrCat("fake worker: no ", MethodName(req), " script left"));
  cancelled = cancelled || ctx->IsCancelled();
  MutexLock lock(&mu_);
  FakeCallRecord<Request>& record = MethodLocked(req).calls[index];
  record.sent = sent;
  record.cancelled = cancelled;
  record.ended = true;
  record.status = status;
  cv_.SignalAll();
  return status;
}

template <class Request, class Response>
grpc::Status FakeWorker::RunScript(grpc::ServerContext* ctx, const Request& req,
                                   const FakeScript& script, grpc::ServerWriter<Response>* writer,
                                   int* sent, bool* cancelled) {
  for (const FakeStep& step : script.steps()) {
    if (IsControlStep(step.kind)) {
      if (!RunControlStep(ctx, step)) {
        *cancelled = true;
        return grpc::Status(grpc::StatusCode::CANCELLED, "fake worker: the caller cancelled");
      }
      continue;
    }
    Response msg;
    if (!FillMessage(step, req, &msg)) return WrongStep(MethodName(req));
    if (!writer->Write(msg)) {
      *cancelled = true;
      return grpc::Status(grpc::StatusCode::CANCELLED, "fake worker: the write failed");
    }
    ++*sent;
  }
  return script.status();
}

grpc::Status FakeWorker::Decode(grpc::ServerContext* ctx, const pb::DecodeRequest* req,
                                grpc::ServerWriter<pb::DecodeResponse>* writer) {
  return Serve(ctx, *req, writer);
}

grpc::Status FakeWorker::Prefill(grpc::ServerContext* ctx, const pb::PrefillRequest* req,
                                 grpc::ServerWriter<pb::PrefillResponse>* writer) {
  return Serve(ctx, *req, writer);
}

bool FakeWorker::RunControlStep(grpc::ServerContext* ctx, const FakeStep& step) {
  const absl::Time deadline = absl::Now() + kWaitLimit;
  MutexLock lock(&mu_);
  if (step.kind == FakeStep::Kind::kSetFreeSlots) {
    free_slots_ = static_cast<uint32_t>(step.value);
    return true;
  }
  const int64_t probes = load_probes_;
  while (!WaitOverLocked(step, probes)) {
    if (ctx->IsCancelled()) return false;
    if (stopping_ || absl::Now() >= deadline) break;
    cv_.WaitWithTimeout(&mu_, kPoll);
  }
  return !ctx->IsCancelled();
}

bool FakeWorker::WaitOverLocked(const FakeStep& step, int64_t probes) const {
  switch (step.kind) {
    case FakeStep::Kind::kWaitProbe:
      return load_probes_ > probes;
    case FakeStep::Kind::kWaitRelease:
      return released_.count(step.gate) > 0;
    default:
      return false;  // kWaitCancel: only the cancel ends it
  }
}

}  // namespace sambay::testing
