// Test support for sambay-worker integration tests: start real worker processes on loopback,
// drive the disaggregated flow (Decode reservation -> Prefill with destination -> tokens) and
// the colocated one (Decode with local_prompt), get the reference ids from `sambay-run
// generate`, check that a worker is idle again (GetLoad and the gauges back to zero), and make
// sequence states in-process for fault injection.
//
// Thread-safety: a Worker's stubs may be used from many threads; the free functions are
// thread-safe. DecodeStream and LocalModel are used by one thread at a time.
#ifndef SAMBAY_TESTS_WORKER_WORKER_HARNESS_H_
#define SAMBAY_TESTS_WORKER_WORKER_HARNESS_H_

#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/model.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "sambay/v1/worker.grpc.pb.h"
#include "tests/worker/process.h"

namespace sambay::testing {

// The bundled tiny model (build/models/tiny): byte tokenizer, window 16, context 4096.
inline constexpr uint32_t kTinyVocab = 320;
inline constexpr uint32_t kTinyWindow = 16;
inline constexpr uint32_t kTinyMaxContext = 4096;
inline const std::vector<uint32_t> kTinyEosIds = {260, 256};

std::string BinDir();
std::string TinyModelDir();

// A fresh directory under the gtest temp dir, removed (with the servers' logs) when it dies.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Sampling as the worker takes it (every field explicit; 1.0 = off for top_p and penalties).
struct Sampling {
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
};
sambay::v1::SamplingParams ToProto(const Sampling& s);
// The sambay-run flags for `s` (--temperature ... --seed).
std::vector<std::string> SambayRunSamplingArgs(const Sampling& s);
inline Sampling Greedy() { return {}; }
inline Sampling Seeded(float temperature, float top_p, uint64_t seed, int32_t top_k = 0) {
  Sampling s;
  s.temperature = temperature;
  s.top_p = top_p;
  s.seed = seed;
  s.top_k = top_k;
  return s;
}

// Deterministic pseudo-random ids in [0, vocab) (never a stop id when avoid_eos).
std::vector<uint32_t> PromptIds(size_t n, uint64_t seed, bool avoid_eos = true);
std::string JoinIds(const std::vector<uint32_t>& ids, const char* sep = ",");

// `sambay-run generate --model TINY --ids ... --max-new-tokens N` with the sampling flags and
// --stop-ids: the single-process reference (no EOS stopping unless stop_ids say so).
absl::StatusOr<std::vector<uint32_t>> ReferenceGenerate(const std::vector<uint32_t>& prompt,
                                                        const Sampling& sampling,
                                                        uint32_t max_new_tokens,
                                                        const std::vector<uint32_t>& stop_ids,
                                                        const std::string& scratch_dir);

// A running sambay-worker with stubs for its services.
class Worker {
 public:
  // Starts `sambay-worker --model TINY --role ROLE --host 127.0.0.1 --port 0 --metrics-port 0
  // --log-level info EXTRA...` (and --threads 1 unless EXTRA sets --threads; no --role when
  // ROLE is empty) with `env` added to the environment, and waits for its port file and for
  // readiness (health "sambay.v1.Worker" SERVING).
  static absl::StatusOr<std::unique_ptr<Worker>> Start(const std::string& role,
                                                       const std::vector<std::string>& extra,
                                                       const std::string& dir,
                                                       const std::string& name,
                                                       const std::vector<std::string>& env = {});

  ServerProcess& server() { return *server_; }
  Process& process() { return server_->process(); }
  const std::string& name() const { return server_->name(); }
  std::string address() const { return server_->address(); }
  int metrics_port() const { return server_->metrics_port(); }
  sambay::v1::Worker::Stub& stub() { return *stub_; }
  grpc::health::v1::Health::Stub& health() { return *health_; }
  // The worker's stderr (JSON log lines), for failure messages.
  std::string Logs() const { return Tail(server_->ReadStderr(), 12000); }

  absl::StatusOr<sambay::v1::WorkerLoad> GetLoad(absl::Duration timeout = absl::Seconds(5));
  absl::StatusOr<sambay::v1::WorkerInfo> GetInfo(absl::Duration timeout = absl::Seconds(5));
  absl::StatusOr<std::string> Metrics();
  // The value of one series (exact labels); an error when the scrape fails or it is absent.
  absl::StatusOr<double> Metric(const std::string& name,
                                const std::map<std::string, std::string>& labels = {});
  // grpc.health.v1 Check for `service` ("" = liveness, "sambay.v1.Worker" = readiness).
  absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> Health(
      const std::string& service, absl::Duration timeout = absl::Seconds(2));
  grpc::Status Release(const std::string& handle, uint32_t* released = nullptr);
  // Drops this test's channel to the worker (the stubs are null afterwards).
  void Disconnect() {
    stub_.reset();
    health_.reset();
  }

 private:
  Worker() = default;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<sambay::v1::Worker::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// A Decode stream (owns its context).
class DecodeStream {
 public:
  DecodeStream(sambay::v1::Worker::Stub& stub, const sambay::v1::DecodeRequest& request,
               absl::Duration timeout);
  ~DecodeStream();
  // Next message; false at the end of the stream (then call Finish).
  bool Read(sambay::v1::DecodeResponse* msg);
  // Reads the first message and expects `reserved`; returns the status otherwise (the stream's
  // final status when it ended).
  grpc::Status ExpectReserved(sambay::v1::Reserved* reserved = nullptr);
  // Reads until the end: collects the tokens and the done message, returns the status.
  grpc::Status ReadToEnd(std::vector<uint32_t>* tokens, sambay::v1::DecodeDone* done,
                         bool* got_done);
  grpc::Status Finish();
  void Cancel() { ctx_.TryCancel(); }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<sambay::v1::DecodeResponse>> reader_;
  bool finished_ = false;
  grpc::Status status_;
};

// One generation request as a test states it: `max_new_tokens` counts every new token (the
// prefill's first token included).
struct GenerateSpec {
  std::vector<uint32_t> prompt;
  Sampling sampling;
  uint32_t max_new_tokens = 16;
  std::vector<uint32_t> stop_ids;
  std::string request_id;
  absl::Duration timeout = absl::Seconds(30);
};

struct GenerateResult {
  grpc::Status status;           // the first failure (reservation, prefill or decode)
  std::string failed_step;       // "decode-reserve", "prefill", "decode", "" when ok
  std::vector<uint32_t> tokens;  // every new token, the first one included
  bool got_done = false;
  sambay::v1::DecodeDone done;
  sambay::v1::TransferResult transfer;  // disaggregated only
  std::string Describe() const;
};

// The router's disaggregated flow: Decode(handle) on `decode`, Prefill on `prefill` with
// destination {decode, handle}, then the Decode stream's tokens. If the first token is a stop
// id, the reservation is released and the result is that one token.
GenerateResult DisaggregatedGenerate(Worker& prefill, Worker& decode, const GenerateSpec& spec);
// The colocated flow: Decode(local_prompt) on a role-both worker.
GenerateResult LocalGenerate(Worker& both, const GenerateSpec& spec);

// Builds the requests used by the flows above (tests tweak them for bad-input cases).
sambay::v1::DecodeRequest MakeHandleDecode(const std::string& handle, uint32_t prompt_tokens,
                                           const Sampling& sampling, uint32_t max_new_tokens,
                                           const std::vector<uint32_t>& stop_ids = {});
sambay::v1::DecodeRequest MakeLocalDecode(const std::vector<uint32_t>& prompt,
                                          const Sampling& sampling, uint32_t max_new_tokens,
                                          const std::vector<uint32_t>& stop_ids = {});
sambay::v1::PrefillRequest MakePrefill(const std::vector<uint32_t>& prompt,
                                       const Sampling& sampling, const std::string& address,
                                       const std::string& handle);
// Runs a Prefill to its end; the first token and the transfer result when they came.
grpc::Status RunPrefill(Worker& worker, const sambay::v1::PrefillRequest& request,
                        absl::Duration timeout, uint32_t* first_token = nullptr,
                        sambay::v1::TransferResult* transfer = nullptr);

// A unique reservation handle.
std::string NewHandle(const std::string& prefix = "h");

// Polls until the worker has nothing admitted: GetLoad running = waiting = 0,
// state_bytes_used = 0, free_slots = max_running, and the gauges running_sequences,
// waiting_sequences, slots_used, state_memory_used_bytes all 0. The error says what was not.
absl::Status WaitIdle(Worker& worker, absl::Duration timeout = absl::Seconds(5));
// A gtest failure (non-fatal) unless WaitIdle succeeds.
void ExpectIdle(Worker& worker, absl::Duration timeout = absl::Seconds(5));
// Polls a series until `pred` holds; returns its last value or an error describing it.
absl::StatusOr<double> WaitMetric(Worker& worker, const std::string& name,
                                  const std::map<std::string, std::string>& labels,
                                  const std::function<bool(double)>& pred,
                                  absl::Duration timeout = absl::Seconds(5));

// The tiny model loaded in the test process, to make states for PushState tests.
class LocalModel {
 public:
  static absl::StatusOr<std::unique_ptr<LocalModel>> Load();
  Model& model() { return *model_; }
  // Prefills `prompt`, samples the pending token with `sampling` (like the first draw of
  // Generate), and exports the state in chunks of at most chunk_bytes (frame included) with
  // `fingerprint` ("" = the model's own). *pending receives the sampled token.
  absl::StatusOr<std::vector<std::string>> ExportPrefilled(const std::vector<uint32_t>& prompt,
                                                           const Sampling& sampling,
                                                           size_t chunk_bytes,
                                                           const std::string& fingerprint = "",
                                                           uint32_t* pending = nullptr);

 private:
  std::unique_ptr<Model> model_;
};

// Sends `chunks` (any bytes) on one PushState stream for `handle`; WritesDone after the last.
grpc::Status PushChunks(Worker& worker, const std::string& handle,
                        const std::vector<std::string>& chunks, absl::Duration timeout,
                        sambay::v1::PushStateResponse* response = nullptr);

// For gtest messages: "DATA_LOSS: message".
std::string StatusString(const grpc::Status& s);

}  // namespace sambay::testing

#endif  // SAMBAY_TESTS_WORKER_WORKER_HARNESS_H_
