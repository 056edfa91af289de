// HttpStreamClient: sambay-bench's client for the router's OpenAI-compatible HTTP API. It POSTs
// a JSON body (a streaming completion) and reads the text/event-stream answer (HTTP/1.1, chunked)
// as it arrives, telling an observer about each server-sent event that carries text and, at the
// end, how the stream ended (the usage chunk's completion_tokens, an error event, the HTTP
// status of an error answer, a transport error or the deadline).
//
// With an API key, every request carries "Authorization: Bearer KEY" (the key is never put into
// an error). Plain HTTP only: there is no HTTPS.
//
// Many streams share a few I/O threads running one Boost.Asio io_context: no thread per stream.
// Each stream runs on its own strand. Keep-alive connections are pooled and reused by later
// streams (as an OpenAI SDK client does); a stream whose reused connection turns out closed
// before any response arrived is retried once on a new connection.
//
// SseReader, the event parser, is exposed for reuse: it splits the byte stream at blank lines
// ("\n\n", as the router writes events) and classifies each "data: " payload without parsing the
// JSON of the common text event; only error events and the usage chunk are parsed.
//
// Ownership: the client owns its threads, its io_context and the idle connections; a stream
// borrows its observer until OnEnd, and the client must outlive every stream it started (the
// destructor stops the threads; streams still running end without OnEnd).
// Thread-safety: Start may be called from any thread. An observer's calls come from the client's
// threads, never two at once for one stream; OnEnd is the last and may delete the observer.
// SseReader is not thread-safe (one per stream).
#ifndef SAMBAY_TOOLS_HTTP_STREAM_CLIENT_H_
#define SAMBAY_TOOLS_HTTP_STREAM_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sambay {

// How one stream ended.
struct SseStreamEnd {
  int http_status = 0;     // the response's status; 0 when none came
  bool timed_out = false;  // the deadline passed before the stream ended
  // "" when the answer was 200 and the stream ended with "data: [DONE]" and no error event;
  // else what went wrong (the error event's or error body's message, a transport error).
  std::string error;
  int64_t text_events = 0;         // events whose choices[0].text was not empty
  int64_t completion_tokens = -1;  // the usage chunk's; -1 when there was none
};

class SseStreamObserver {
 public:
  virtual ~SseStreamObserver() = default;
  // An event whose choices[0].text is not empty arrived; `characters` counts its Unicode code
  // points (JSON escapes decoded).
  virtual void OnTextEvent(int64_t characters) = 0;
  // The stream ended; the last call. The observer may delete itself.
  virtual void OnEnd(const SseStreamEnd& end) = 0;
};

// Parses an OpenAI completion SSE stream fed in pieces of any size.
class SseReader {
 public:
  // Consumes `bytes`; calls observer->OnTextEvent for each complete text event.
  void Feed(std::string_view bytes, SseStreamObserver* observer);
  bool done() const { return done_; }  // "data: [DONE]" arrived
  const std::string& error() const { return error_; }
  int64_t text_events() const { return text_events_; }
  int64_t completion_tokens() const { return completion_tokens_; }

 private:
  // Handles every complete event at the front of `bytes`; returns the bytes it consumed.
  size_t Events(std::string_view bytes, SseStreamObserver* observer);
  void Data(std::string_view data, SseStreamObserver* observer);
  // The code points of the JSON string whose content starts at data[at]; -1 if it is cut short.
  static int64_t Characters(std::string_view data, size_t at);

  std::string pending_;  // the start of an event not complete yet
  bool done_ = false;
  std::string error_;
  int64_t text_events_ = 0;
  int64_t completion_tokens_ = -1;
};

class HttpStreamClient {
 public:
  // Resolves host:port and starts `threads` I/O threads. A non-empty `api_key` is sent as
  // "Authorization: Bearer API_KEY" with every request.
  static absl::StatusOr<std::unique_ptr<HttpStreamClient>> Create(const std::string& host, int port,
                                                                  int threads,
                                                                  const std::string& api_key = "");
  ~HttpStreamClient();
  HttpStreamClient(const HttpStreamClient&) = delete;
  HttpStreamClient& operator=(const HttpStreamClient&) = delete;

  // Returns once a TCP connection to the server succeeds; an error after `timeout`.
  absl::Status WaitConnectable(absl::Duration timeout);
  // POSTs `body` (application/json) to `target` and streams the answer into `observer`.
  // `timeout_seconds` > 0 is the deadline of the whole stream; 0 = none.
  void Start(const std::string& target, std::string body, double timeout_seconds,
             SseStreamObserver* observer);

 private:
  class Impl;
  explicit HttpStreamClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sambay

#endif  // SAMBAY_TOOLS_HTTP_STREAM_CLIENT_H_
