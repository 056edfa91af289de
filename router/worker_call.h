// WorkerCall: one server-streaming call from the router to a worker (Decode or Prefill) on
// gRPC's asynchronous API, its events delivered through the flow's completion queue.
//
// Protocol: Start() starts the call and its first read. The owner calls Read() for each next
// message after handling the previous one, Cancel() to end it early; OnRead(ok) and OnFinish()
// are called by the owner when the matching tag comes back. Finish is requested exactly once,
// when no read is outstanding and the stream ended or was cancelled; the call is over when its
// finish tag returns (then `status` holds the result).
//
// Ownership: owned by its flow; owns the call's ClientContext, reader, request and buffer.
// Thread-safety: used only from the owning flow's serial queue.
#ifndef SAMBAY_ROUTER_WORKER_CALL_H_
#define SAMBAY_ROUTER_WORKER_CALL_H_

#include <grpcpp/client_context.h>
#include <grpcpp/completion_queue.h>
#include <grpcpp/support/async_stream.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "common/tsan.h"

namespace sambay {

class RequestFlow;

// A completion-queue tag: which flow, which of its calls (0 = the server call), which event.
struct FlowTag {
  enum Kind { kAccept, kDone, kWrite, kFinish, kTick, kCallStart, kCallRead, kCallFinish };
  RequestFlow* flow = nullptr;
  uint64_t call = 0;
  Kind kind = kAccept;
};

class WorkerCallBase {
 public:
  WorkerCallBase(RequestFlow* flow, uint64_t id, std::string worker,
                 std::unique_ptr<grpc::ClientContext> ctx)
      : worker_(std::move(worker)),
        ctx_(std::move(ctx)),
        start_tag_{flow, id, FlowTag::kCallStart},
        read_tag_{flow, id, FlowTag::kCallRead},
        finish_tag_{flow, id, FlowTag::kCallFinish} {}
  virtual ~WorkerCallBase() = default;

  const std::string& worker() const { return worker_; }
  const grpc::Status& status() const { return status_; }
  // Ends the call early (its outstanding read returns false, then it finishes).
  void Cancel() {
    cancelled_ = true;
    ctx_->TryCancel();
    MaybeFinish();
  }
  // The read tag came back.
  void OnRead(bool ok) {
    reading_ = false;
    if (!ok) ended_ = true;
    if (!ok || cancelled_) MaybeFinish();
  }
  // Ops started and not yet returned (start, read, finish).
  int pending() const { return pending_; }
  void Returned() { --pending_; }
  // The finish tag came back (status() is final).
  void OnFinished() { finished_ = true; }
  // Over: gRPC holds no tag of it any more.
  bool over() const { return finished_ && pending_ == 0; }

 protected:
  virtual void StartRead() = 0;
  virtual void StartFinish() = 0;
  void Read() {
    if (reading_ || ended_ || cancelled_) return;
    reading_ = true;
    ++pending_;
    StartRead();
  }
  void MaybeFinish() {
    if (finishing_ || reading_ || !(ended_ || cancelled_)) return;
    finishing_ = true;
    ++pending_;
    StartFinish();
  }

  const std::string worker_;
  std::unique_ptr<grpc::ClientContext> ctx_;
  FlowTag start_tag_, read_tag_, finish_tag_;
  grpc::Status status_;
  int pending_ = 0;
  bool reading_ = false, ended_ = false, cancelled_ = false, finishing_ = false, finished_ = false;
};

template <class Request, class Response>
class WorkerCall final : public WorkerCallBase {
 public:
  using RequestType = Request;
  using WorkerCallBase::WorkerCallBase;

  // `prepare(ctx, request, cq)` is the stub's PrepareAsync method (e.g. PrepareAsyncDecode).
  template <class Prepare>
  void Start(Prepare prepare, Request request, grpc::CompletionQueue* cq) {
    request_ = std::move(request);
    reader_ = prepare(ctx_.get(), request_, cq);
    ++pending_;
    reader_->StartCall(HandOff(&start_tag_));
    Read();
  }
  // Asks for the next message (after the previous one was handled).
  void Next() { Read(); }
  Response& msg() { return msg_; }

 private:
  void StartRead() override { reader_->Read(&msg_, HandOff(&read_tag_)); }
  void StartFinish() override { reader_->Finish(&status_, HandOff(&finish_tag_)); }

  Request request_;
  Response msg_;
  std::unique_ptr<grpc::ClientAsyncReader<Response>> reader_;
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_WORKER_CALL_H_
