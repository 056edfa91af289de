// FakeWorker: an in-process sambay.v1.Worker (gRPC's synchronous server API on 127.0.0.1:0) for
// testing the router's request flow without worker processes. The test sets its roles,
// fingerprint and load (what GetInfo and GetLoad answer) and scripts each Decode and Prefill call
// in advance: a queue of FakeScripts per method, the next call taking the next script (a call
// with no script left fails UNIMPLEMENTED, which the router does not retry, so a test sees it).
// A script is a list of steps (send reserved, tokens, done, a first token, a transfer result;
// change the reported free slots; wait for the next load probe, for ReleaseGate(gate) or for the
// caller's cancel), then the status that ends the call. Every call is recorded (a copy of its
// request, its x-request-id, the messages sent, whether the caller cancelled it, and the status
// returned) for the test to assert on. RenewLease and Release answer OK; PushState is not served.
//
// Waits poll the call's cancellation every millisecond and give up after 10 s (the script then
// goes on), so a broken flow fails a test instead of hanging it; destroying the worker ends every
// wait and shuts the server down at once.
//
// Ownership: owns its gRPC server; values in and out are copies.
// Thread-safety: all public methods are thread-safe. mu_ guards the scripts, the call records,
// the load, the released gates, the probe count and stopping_; cv_ signals their changes. The
// handlers run on gRPC's threads and hold mu_ only between steps, never while writing.
#ifndef SAMBAY_TESTS_ROUTER_FAKE_WORKER_H_
#define SAMBAY_TESTS_ROUTER_FAKE_WORKER_H_

#include <grpcpp/server.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/sync_stream.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "sambay/v1/worker.grpc.pb.h"

namespace sambay::testing {

// One step of a scripted call.
struct FakeStep {
  enum class Kind {
    kReserved,      // Decode: `reserved` with the request's handle
    kTokens,        // Decode: `tokens` with `ids`
    kDone,          // Decode: `done` with `reason`
    kFirstToken,    // Prefill: `first_token` with ids[0]
    kTransfer,      // Prefill: `transfer` with `value` bytes
    kSetFreeSlots,  // GetLoad answers free_slots = `value` from now on
    kWaitProbe,     // waits until the next GetLoad was answered
    kWaitRelease,   // waits until FakeWorker::ReleaseGate(gate)
    kWaitCancel,    // waits until the caller cancels the call
  };
  explicit FakeStep(Kind k) : kind(k) {}

  Kind kind;
  std::vector<uint32_t> ids;
  sambay::v1::DecodeFinish reason = sambay::v1::DECODE_FINISH_UNSPECIFIED;
  uint64_t value = 0;
  std::string gate;
};

// What one Decode or Prefill call does: its steps in order, then it ends with status().
class FakeScript {
 public:
  FakeScript& Reserved() { return Add(FakeStep(FakeStep::Kind::kReserved)); }
  FakeScript& Tokens(std::vector<uint32_t> ids);
  FakeScript& Done(sambay::v1::DecodeFinish reason);
  FakeScript& FirstToken(uint32_t id);
  FakeScript& Transfer(uint64_t bytes);
  FakeScript& SetFreeSlots(uint32_t n);
  FakeScript& WaitProbe() { return Add(FakeStep(FakeStep::Kind::kWaitProbe)); }
  FakeScript& WaitRelease(std::string gate);
  FakeScript& WaitCancel() { return Add(FakeStep(FakeStep::Kind::kWaitCancel)); }
  // The status the call ends with once its steps ran (default OK).
  FakeScript& Fail(grpc::StatusCode code, std::string message);

  const std::vector<FakeStep>& steps() const { return steps_; }
  const grpc::Status& status() const { return status_; }

 private:
  FakeScript& Add(FakeStep step);
  std::vector<FakeStep> steps_;
  grpc::Status status_;
};

// What the fake saw of one call.
template <class Request>
struct FakeCallRecord {
  Request request;
  std::string request_id_header;   // the call's x-request-id metadata ("" when absent)
  int64_t load_probes_before = 0;  // GetLoad calls answered before this call arrived
  int sent = 0;                    // messages written to the caller
  bool cancelled = false;          // the caller cancelled it (seen by a wait, a write or the end)
  bool ended = false;              // the handler returned...
  grpc::Status status;             // ... with this status
};
using FakeDecodeCall = FakeCallRecord<sambay::v1::DecodeRequest>;
using FakePrefillCall = FakeCallRecord<sambay::v1::PrefillRequest>;

struct FakeWorkerOptions {
  bool prefill = true;  // roles GetInfo reports
  bool decode = true;
  std::string fingerprint = "fake-model";
  uint32_t free_slots = 4;
  uint64_t queued_prefill_tokens = 0;
  uint32_t max_context_tokens = 4096;
  uint32_t vocab_size = 320;
};

class FakeWorker final : public sambay::v1::Worker::Service {
 public:
  // Starts serving on 127.0.0.1 (a free port).
  static absl::StatusOr<std::unique_ptr<FakeWorker>> Start(FakeWorkerOptions options);
  // Ends every wait, then shuts the server down (cancelling the calls still running).
  ~FakeWorker() override;
  FakeWorker(const FakeWorker&) = delete;
  FakeWorker& operator=(const FakeWorker&) = delete;

  // host:port, as the router's registry lists it.
  const std::string& address() const { return address_; }

  // Scripts for the next calls, in order.
  void AddDecode(FakeScript script) ABSL_LOCKS_EXCLUDED(mu_);
  void AddPrefill(FakeScript script) ABSL_LOCKS_EXCLUDED(mu_);
  // What GetLoad reports from now on.
  void SetFreeSlots(uint32_t n) ABSL_LOCKS_EXCLUDED(mu_);
  // Lets the calls waiting in WaitRelease(gate) (now or later) go on.
  void ReleaseGate(const std::string& gate) ABSL_LOCKS_EXCLUDED(mu_);

  // Copies of the records, in arrival order.
  std::vector<FakeDecodeCall> decode_calls() const ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<FakePrefillCall> prefill_calls() const ABSL_LOCKS_EXCLUDED(mu_);
  // GetLoad calls answered so far.
  int64_t load_probes() const ABSL_LOCKS_EXCLUDED(mu_);

  grpc::Status Decode(grpc::ServerContext* ctx, const sambay::v1::DecodeRequest* req,
                      grpc::ServerWriter<sambay::v1::DecodeResponse>* writer) override
      ABSL_LOCKS_EXCLUDED(mu_);
  grpc::Status Prefill(grpc::ServerContext* ctx, const sambay::v1::PrefillRequest* req,
                       grpc::ServerWriter<sambay::v1::PrefillResponse>* writer) override
      ABSL_LOCKS_EXCLUDED(mu_);
  grpc::Status GetLoad(grpc::ServerContext* ctx, const sambay::v1::GetLoadRequest* req,
                       sambay::v1::WorkerLoad* resp) override ABSL_LOCKS_EXCLUDED(mu_);
  grpc::Status GetInfo(grpc::ServerContext* ctx, const sambay::v1::GetInfoRequest* req,
                       sambay::v1::WorkerInfo* resp) override;
  grpc::Status RenewLease(grpc::ServerContext* ctx, const sambay::v1::RenewLeaseRequest* req,
                          sambay::v1::RenewLeaseResponse* resp) override;
  grpc::Status Release(grpc::ServerContext* ctx, const sambay::v1::ReleaseRequest* req,
                       sambay::v1::ReleaseResponse* resp) override;

 private:
  template <class Request>
  struct Method {
    std::deque<FakeScript> scripts;
    std::vector<FakeCallRecord<Request>> calls;
  };

  explicit FakeWorker(FakeWorkerOptions options);

  // The method state for a request type (decode_ or prefill_).
  Method<sambay::v1::DecodeRequest>& MethodLocked(const sambay::v1::DecodeRequest&)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return decode_;
  }
  Method<sambay::v1::PrefillRequest>& MethodLocked(const sambay::v1::PrefillRequest&)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return prefill_;
  }
  // Records the call, runs its script (the next one queued) and records how it ended.
  template <class Request, class Response>
  grpc::Status Serve(grpc::ServerContext* ctx, const Request& req,
                     grpc::ServerWriter<Response>* writer) ABSL_LOCKS_EXCLUDED(mu_);
  // Runs the steps of `script`; *sent counts the messages written, *cancelled is set when the
  // caller cancelled the call.
  template <class Request, class Response>
  grpc::Status RunScript(grpc::ServerContext* ctx, const Request& req, const FakeScript& script,
                         grpc::ServerWriter<Response>* writer, int* sent, bool* cancelled)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Runs a step that sends nothing (kSetFreeSlots, the waits). Returns false when the caller
  // cancelled the call meanwhile.
  bool RunControlStep(grpc::ServerContext* ctx, const FakeStep& step) ABSL_LOCKS_EXCLUDED(mu_);
  // Whether a waiting step may go on; `probes` is the probe count when the wait began.
  bool WaitOverLocked(const FakeStep& step, int64_t probes) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const FakeWorkerOptions options_;
  std::string address_;

  mutable Mutex mu_;
  CondVar cv_;
  Method<sambay::v1::DecodeRequest> decode_ ABSL_GUARDED_BY(mu_);
  Method<sambay::v1::PrefillRequest> prefill_ ABSL_GUARDED_BY(mu_);
  uint32_t free_slots_ ABSL_GUARDED_BY(mu_);
  int64_t load_probes_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<std::string> released_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // Last member: destroyed (its handlers done) before what they use.
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace sambay::testing

#endif  // SAMBAY_TESTS_ROUTER_FAKE_WORKER_H_
