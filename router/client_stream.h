// ClientStream: the client's side of one Generate request, whatever its wire format: the gRPC
// Generate call (GrpcClientStream, below) or an HTTP request (router/http_stream.h). One request
// path, two wire formats: RequestFlow drives either the same way, from its serial queue.
//
// Protocol: every operation that takes a tag returns it to RequestFlow::Dispatch exactly once:
// Write (ok = the message went out), Finish (after the final status went out, or at once when
// the client is gone), and the done tag of NotifyWhenDone (once the call is over: finished, or
// cancelled by the client, cancelled() then true). One Write at a time; Finish after the last.
//
// Ownership: owned by its flow. Thread-safety: the methods are called from the flow's serial
// queue only; implementations complete their operations from their own threads.
#ifndef SAMBAY_ROUTER_CLIENT_STREAM_H_
#define SAMBAY_ROUTER_CLIENT_STREAM_H_

#include <grpcpp/completion_queue.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/async_stream.h>

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "sambay/v1/generate.grpc.pb.h"

namespace sambay {

class ClientStream {
 public:
  virtual ~ClientStream() = default;
  // The client's deadline (absl::InfiniteFuture() when it set none).
  virtual absl::Time deadline() const = 0;
  // The client went away or cancelled (meaningful once the done tag came back).
  virtual bool cancelled() const = 0;
  // Who the caller is (common/peer_identity.h): Abort reaches only the caller's own requests.
  virtual std::string peer() const = 0;
  // The authorization header or metadata value ("" when none): the API key (router/api_keys.h).
  virtual std::string authorization() const { return ""; }
  // The x-request-id header or metadata value ("" when none; not yet validated).
  virtual std::string header_request_id() const = 0;
  // The wire format, for metrics and logs: "grpc" or "http".
  virtual const char* api() const = 0;
  virtual void NotifyWhenDone(void* tag) = 0;
  virtual void Write(const sambay::v1::GenerateResponse& msg, void* tag) = 0;
  virtual void Finish(const absl::Status& status, void* tag) = 0;
  // Cuts the client off: a write in flight fails, and the done tag comes back cancelled.
  virtual void Cancel() = 0;
};

using GenerationAsyncBase =
    sambay::v1::Generation::WithAsyncMethod_Generate<sambay::v1::Generation::Service>;

// The gRPC Generate call, on the service's asynchronous API.
class GrpcClientStream final : public ClientStream {
 public:
  // Asks gRPC for the next Generate call on `cq`: the request lands in *request and `tag`
  // returns (ok = a call arrived, else the server is shutting down).
  void Accept(GenerationAsyncBase* service, sambay::v1::GenerateRequest* request,
              grpc::ServerCompletionQueue* cq, void* tag) {
    service->RequestGenerate(&ctx_, request, &writer_, cq, cq, tag);
  }

  absl::Time deadline() const override;
  bool cancelled() const override { return ctx_.IsCancelled(); }
  std::string peer() const override;
  std::string header_request_id() const override;
  std::string authorization() const override;
  const char* api() const override { return "grpc"; }
  void NotifyWhenDone(void* tag) override { ctx_.AsyncNotifyWhenDone(tag); }
  void Write(const sambay::v1::GenerateResponse& msg, void* tag) override {
    writer_.Write(msg, tag);
  }
  void Finish(const absl::Status& status, void* tag) override;
  void Cancel() override { ctx_.TryCancel(); }

 private:
  grpc::ServerContext ctx_;
  grpc::ServerAsyncWriter<sambay::v1::GenerateResponse> writer_{&ctx_};
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_CLIENT_STREAM_H_
