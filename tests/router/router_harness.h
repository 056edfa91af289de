// Test support for sambay-router integration tests: a real router process on loopback in front
// of real sambay-worker processes (tests/worker/worker_harness.h starts those), public
// Generation streams run on background threads (so a test can watch them, kill a worker or
// cancel them mid-way), and the single-process references from `sambay-run generate`.
//
// Every gRPC call made here carries a deadline, so a broken router fails a test instead of
// hanging it.
//
// Thread-safety: a Router's stubs may be used from many threads. A Stream is started and waited
// for by one thread; tokens(), Cancel() and done() may be called from any thread. Servers
// (workers, routers) must be started from the test's main thread: children die with the thread
// that forked them (PR_SET_PDEATHSIG).
#ifndef SAMBAY_TESTS_ROUTER_ROUTER_HARNESS_H_
#define SAMBAY_TESTS_ROUTER_ROUTER_HARNESS_H_

#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "sambay/v1/generate.grpc.pb.h"
#include "tests/worker/process.h"
#include "tests/worker/worker_harness.h"
#include "tokenizer/tokenizer.h"

namespace sambay::testing {

// A running sambay-router with stubs for its public and health services.
class Router {
 public:
  // Starts `sambay-router --model TINY --host 127.0.0.1 --port 0 --metrics-port 0
  // --log-level info ARGS...` (ARGS give the workers and limits; a later flag wins) and waits
  // for its port file. With workers_up >= 0, also waits (up to 20 s) until the router's
  // registry has probed its workers: the sum of sambay_router_worker_up equals workers_up.
  // (Readiness is not used for this: the tests check it on its own.)
  static absl::StatusOr<std::unique_ptr<Router>> Start(const std::vector<std::string>& args,
                                                       const std::string& dir,
                                                       const std::string& name = "router",
                                                       int workers_up = -1);

  ServerProcess& server() { return *server_; }
  Process& process() { return server_->process(); }
  std::string address() const { return server_->address(); }
  int metrics_port() const { return server_->metrics_port(); }
  sambay::v1::Generation::Stub& stub() { return *stub_; }
  std::string Logs() const { return Tail(server_->ReadStderr(), 12000); }

  // grpc.health.v1 Check ("" = liveness, "sambay.v1.Generation" = readiness).
  absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> Health(
      const std::string& service, absl::Duration timeout = absl::Seconds(2));
  // Polls readiness until it is `want`; an error saying what it was otherwise.
  absl::Status WaitReadiness(grpc::health::v1::HealthCheckResponse::ServingStatus want,
                             absl::Duration timeout);

  absl::StatusOr<std::string> Metrics();
  // Sum of every sample of `name` whose labels include `labels` (0 when none); -1 when the
  // scrape fails.
  double MetricSum(const std::string& name, const std::map<std::string, std::string>& labels = {});
  // The sample with exactly these labels, or nullopt (also when the scrape fails).
  std::optional<double> Metric(const std::string& name,
                               const std::map<std::string, std::string>& labels = {});
  // Polls until `pred(MetricSum(name, labels))`; returns the last value read.
  double WaitMetricSum(const std::string& name, const std::map<std::string, std::string>& labels,
                       const std::function<bool(double)>& pred,
                       absl::Duration timeout = absl::Seconds(5));

 private:
  Router() = default;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<sambay::v1::Generation::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// ASSERT_STARTED(c.Start(...)): the status must be OK, else the test stops with it and the logs
// of the Cluster `c` (a Cluster of that name must be in scope).
#define ASSERT_STARTED(expr)                                    \
  do {                                                          \
    const absl::Status started_ = (expr);                       \
    ASSERT_TRUE(started_.ok()) << started_ << "\n" << c.Logs(); \
  } while (0)

// Workers plus a router in front of them, in a scratch directory of their own.
class Cluster {
 public:
  Cluster() = default;
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Starts `prefill` prefill, `decode` decode and `both` role-both workers (each with
  // worker_args), then a router listing them (--prefill-workers, --decode-workers, and
  // --workers for the role-both ones) with router_args, and waits for its readiness.
  absl::Status Start(int prefill, int decode, int both,
                     const std::vector<std::string>& router_args = {},
                     const std::vector<std::string>& worker_args = {});

  const std::string& dir() const { return scratch_.path(); }
  Router& router() { return *router_; }
  sambay::v1::Generation::Stub& stub() { return router_->stub(); }
  std::vector<std::unique_ptr<Worker>>& prefill() { return prefill_; }
  std::vector<std::unique_ptr<Worker>>& decode() { return decode_; }
  std::vector<std::unique_ptr<Worker>>& both() { return both_; }
  // Every worker whose process still runs.
  std::vector<Worker*> LiveWorkers();
  // Logs of the router and every worker (tails), for failure messages.
  std::string Logs();
  // WaitIdle on every live worker; the first error.
  absl::Status WaitWorkersIdle(absl::Duration timeout = absl::Seconds(5));

  // Starts a router of this cluster's (replacing the current one, which is killed first) and
  // waits until `workers_up` workers are up in it (-1: every worker of the cluster).
  absl::Status StartRouter(const std::vector<std::string>& args, int workers_up = -1);

 private:
  ScratchDir scratch_;
  std::vector<std::unique_ptr<Worker>> prefill_, decode_, both_;
  std::unique_ptr<Router> router_;
};

// The worker of `workers` that runs the most sequences now (GetLoad), or an error; *running
// gets its count.
absl::StatusOr<Worker*> BusiestWorker(std::vector<std::unique_ptr<Worker>>& workers,
                                      uint32_t* running);

// Runs `node tests/router/SCRIPT ARGS... 2>&1` (the hostile raw-HTTP/2 clients) and returns its
// output; "" when node is not installed.
std::string RunNodeScript(const std::string& script, const std::vector<std::string>& args);

// What one Generate stream delivered.
struct StreamResult {
  grpc::Status status;
  std::vector<uint32_t> ids;  // every token id of every message
  std::string text;           // every message's text, concatenated
  std::string request_id;     // of the first message
  int messages = 0;
  bool got_final = false;  // a message with finish_reason set arrived
  sambay::v1::FinishReason finish = sambay::v1::FINISH_REASON_UNSPECIFIED;
  sambay::v1::Usage usage;
  std::string protocol_error;  // what the test found wrong with the message sequence
  absl::Time started, first_token_at = absl::InfinitePast(), ended;
  std::string Describe() const;
};

// One Generate call read on a background thread.
class Stream {
 public:
  Stream(sambay::v1::Generation::Stub& stub, sambay::v1::GenerateRequest request,
         absl::Duration timeout = absl::Seconds(60),
         std::vector<std::pair<std::string, std::string>> metadata = {});
  ~Stream();  // cancels and joins a stream still running
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  const sambay::v1::GenerateRequest& request() const { return request_; }
  // Tokens received so far.
  size_t tokens() const { return tokens_.load(); }
  bool done() const { return done_.load(); }
  // ClientContext::TryCancel (from any thread).
  void Cancel() { ctx_.TryCancel(); }
  // Joins the reader thread and returns what the stream delivered.
  const StreamResult& Wait();

 private:
  void Run();
  sambay::v1::Generation::Stub& stub_;
  const sambay::v1::GenerateRequest request_;
  grpc::ClientContext ctx_;
  std::atomic<size_t> tokens_{0};
  std::atomic<bool> done_{false};
  StreamResult result_;
  std::thread thread_;
};

// Runs one stream to its end (in the calling thread).
StreamResult Generate(sambay::v1::Generation::Stub& stub,
                      const sambay::v1::GenerateRequest& request,
                      absl::Duration timeout = absl::Seconds(60),
                      std::vector<std::pair<std::string, std::string>> metadata = {});
// Runs all streams concurrently and returns their results in order.
std::vector<StreamResult> GenerateAll(sambay::v1::Generation::Stub& stub,
                                      const std::vector<sambay::v1::GenerateRequest>& requests,
                                      absl::Duration timeout = absl::Seconds(60));

// A request with a token-id prompt. ignore_eos: do not stop at the model's EOS ids.
sambay::v1::GenerateRequest IdsRequest(const std::vector<uint32_t>& prompt,
                                       const Sampling& sampling, uint32_t max_new_tokens,
                                       bool ignore_eos = true);
// A request with a text prompt.
sambay::v1::GenerateRequest TextRequest(const std::string& text, const Sampling& sampling,
                                        uint32_t max_new_tokens, bool ignore_eos = false);

// The ids `sambay-run generate --ids` gives for an IdsRequest (stopping at the EOS ids exactly
// where the router does unless the request ignores them).
absl::StatusOr<std::vector<uint32_t>> ReferenceIds(const sambay::v1::GenerateRequest& request,
                                                   const std::string& scratch_dir);
// The text `sambay-run generate --prompt` prints for a TextRequest (its trailing newline cut).
absl::StatusOr<std::string> ReferenceText(const sambay::v1::GenerateRequest& request,
                                          const std::string& scratch_dir);
// References for many requests, computed two at a time. Each entry: ids for token-id prompts,
// or text (ids empty) for text prompts.
struct Reference {
  absl::Status status;
  std::vector<uint32_t> ids;
  std::string text;
};
std::vector<Reference> References(const std::vector<sambay::v1::GenerateRequest>& requests,
                                  const std::string& scratch_dir);

// Polls `pred` every 10 ms until it holds or `timeout` passes; returns its last value.
bool WaitFor(const std::function<bool()>& pred, absl::Duration timeout);

// The status of a grpc call as a string ("OK" or "CODE: message").
inline std::string Str(const grpc::Status& s) { return StatusString(s); }

// The tiny model's tokenizer (TinyModelDir()); nullptr, with a test failure, when it cannot be
// loaded.
std::unique_ptr<Tokenizer> TinyTokenizer();

// A TCP port on 127.0.0.1 that was free a moment ago (bound and closed).
absl::StatusOr<int> FreePort();

}  // namespace sambay::testing

#endif  // SAMBAY_TESTS_ROUTER_ROUTER_HARNESS_H_
