// ClientWriter: the coalescing writer of a Generate stream (flow.h "Writes to the client"). One
// write is in flight at a time; messages added meanwhile are merged into the next one (tokens,
// text and logprobs append; finish_reason and usage come from the last), so a slow client gets
// fewer, larger messages, never a reordering. Once the stream ended and nothing is pending,
// Pump finishes the call with the stream's status.
//
// Ownership: borrows the client's stream (client_stream.h) and the flow's write/finish tags (the
// flow owns them and outlives every operation started here). Thread-safety: none; used only from
// the owning flow's serial queue.
#ifndef SAMBAY_ROUTER_CLIENT_WRITER_H_
#define SAMBAY_ROUTER_CLIENT_WRITER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "router/client_stream.h"
#include "router/worker_call.h"
#include "sambay/v1/generate.pb.h"

namespace sambay {

class ClientWriter {
 public:
  ClientWriter(ClientStream* client, FlowTag* write_tag, FlowTag* finish_tag)
      : client_(client), write_tag_(write_tag), finish_tag_(finish_tag) {}

  // Merges `msg` into the pending message (nothing once the call is finishing). Returns the bytes
  // now pending (approximate: the merged messages' sizes).
  int64_t Add(const sambay::v1::GenerateResponse& msg);
  // Starts the next operation if none is in flight: a write of the pending message (the first
  // one carries `request_id`), else, once `ended`, the call's Finish with `status`. Returns true
  // when it started one (its tag will come back).
  bool Pump(bool ended, const absl::Status& status, const std::string& request_id);
  // The write's tag came back.
  void WriteDone() { writing_ = false; }
  // Drops the pending output (the client is cut off or gone).
  void DropPending();
  // The call never began (the server is shutting down): nothing will be written or finished.
  void Closed() { finish_called_ = true; }

  bool writing() const { return writing_; }
  absl::Time write_started() const { return write_started_; }  // of the write in flight
  bool finish_called() const { return finish_called_; }

 private:
  ClientStream* const client_;
  FlowTag* const write_tag_;
  FlowTag* const finish_tag_;
  sambay::v1::GenerateResponse pending_, inflight_;
  bool has_pending_ = false, writing_ = false, wrote_any_ = false, finish_called_ = false;
  int64_t pending_bytes_ = 0;
  absl::Time write_started_;
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_CLIENT_WRITER_H_
