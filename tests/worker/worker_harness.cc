#include "tests/worker/worker_harness.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/grpc_channel.h"
#include "engine/sampler.h"
#include "engine/state_io.h"
#include "gtest/gtest.h"
#include "tests/worker/http_get.h"

namespace sambay::testing {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
namespace v1 = sambay::v1;

namespace {

std::chrono::system_clock::time_point DeadlineIn(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

}  // namespace

// SAMBAY_TEST_BIN_DIR overrides the build's bin/ (e.g. carry/gpu/bin on the device machine,
// scripts/gpu-check.sh); the tiny model is then looked up beside it, in ../models/tiny.
std::string BinDir() {
  const char* e = std::getenv("SAMBAY_TEST_BIN_DIR");
  return e != nullptr && *e != '\0' ? std::string(e) : std::string(SAMBAY_BIN_DIR);
}
std::string TinyModelDir() { return BinDir() + "/../models/tiny"; }

ScratchDir::ScratchDir() {
  std::string tmpl = ::testing::TempDir();
  if (tmpl.empty() || tmpl.back() != '/') tmpl += '/';
  tmpl += "sambay_worker_XXXXXX";
  path_ = mkdtemp(tmpl.data()) == nullptr ? "" : tmpl;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  if (!path_.empty()) std::filesystem::remove_all(path_, ec);
}

v1::SamplingParams ToProto(const Sampling& s) {
  v1::SamplingParams p;
  p.set_temperature(s.temperature);
  p.set_top_k(s.top_k);
  p.set_top_p(s.top_p);
  p.set_min_p(s.min_p);
  p.set_repetition_penalty(s.repetition_penalty);
  p.set_presence_penalty(s.presence_penalty);
  p.set_frequency_penalty(s.frequency_penalty);
  p.set_seed(s.seed);
  return p;
}

std::vector<std::string> SambayRunSamplingArgs(const Sampling& s) {
  return {"--temperature",
          absl::StrCat(s.temperature),
          "--top-k",
          absl::StrCat(s.top_k),
          "--top-p",
          absl::StrCat(s.top_p),
          "--min-p",
          absl::StrCat(s.min_p),
          "--repetition-penalty",
          absl::StrCat(s.repetition_penalty),
          "--presence-penalty",
          absl::StrCat(s.presence_penalty),
          "--frequency-penalty",
          absl::StrCat(s.frequency_penalty),
          "--seed",
          absl::StrCat(s.seed)};
}

std::vector<uint32_t> PromptIds(size_t n, uint64_t seed, bool avoid_eos) {
  std::vector<uint32_t> ids;
  uint64_t x = seed * 6364136223846793005ull + 1442695040888963407ull;
  while (ids.size() < n) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    const uint32_t id = static_cast<uint32_t>((x >> 33) % kTinyVocab);
    if (avoid_eos && std::count(kTinyEosIds.begin(), kTinyEosIds.end(), id)) continue;
    ids.push_back(id);
  }
  return ids;
}

std::string JoinIds(const std::vector<uint32_t>& ids, const char* sep) {
  return absl::StrJoin(ids, sep);
}

absl::StatusOr<std::vector<uint32_t>> ReferenceGenerate(const std::vector<uint32_t>& prompt,
                                                        const Sampling& s, uint32_t max_new_tokens,
                                                        const std::vector<uint32_t>& stop_ids,
                                                        const std::string& scratch_dir) {
  std::vector<std::string> args = {"generate",
                                   "--model",
                                   TinyModelDir(),
                                   "--ids",
                                   JoinIds(prompt),
                                   "--max-new-tokens",
                                   absl::StrCat(max_new_tokens),
                                   "--threads",
                                   "1"};
  for (std::string& a : SambayRunSamplingArgs(s)) args.push_back(std::move(a));
  if (!stop_ids.empty()) {
    args.push_back("--stop-ids");
    args.push_back(JoinIds(stop_ids));
  }
  auto out = RunToCompletion(BinDir() + "/sambay-run", args, scratch_dir);
  if (!out.ok()) return out.status();
  std::vector<uint32_t> ids;
  for (absl::string_view piece : absl::StrSplit(*out, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
    uint32_t id = 0;
    if (!absl::SimpleAtoi(piece, &id)) {
      return absl::InternalError(absl::StrCat("sambay-run printed a non-id: \"", piece, "\""));
    }
    ids.push_back(id);
  }
  return ids;
}

// ---- Worker ---------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Worker>> Worker::Start(const std::string& role,
                                                      const std::vector<std::string>& extra,
                                                      const std::string& dir,
                                                      const std::string& name,
                                                      const std::vector<std::string>& env) {
  std::vector<std::string> args = {"--model", TinyModelDir(),   "--host", "127.0.0.1",   "--port",
                                   "0",       "--metrics-port", "0",      "--log-level", "info"};
  if (!role.empty()) {
    args.push_back("--role");
    args.push_back(role);
  }
  if (std::find(extra.begin(), extra.end(), "--threads") == extra.end()) {
    args.push_back("--threads");
    args.push_back("1");
  }
  args.insert(args.end(), extra.begin(), extra.end());
  std::unique_ptr<Worker> w(new Worker());
  auto server =
      ServerProcess::Start(BinDir() + "/sambay-worker", args, dir, name, absl::Seconds(30), env);
  if (!server.ok()) return server.status();
  w->server_ = std::move(*server);
  RpcLimits limits;
  auto channel = MakeChannel(w->address(), limits);
  w->stub_ = v1::Worker::NewStub(channel);
  w->health_ = grpc::health::v1::Health::NewStub(channel);
  // The port file says "serving"; readiness must agree.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (true) {
    auto h = w->Health("sambay.v1.Worker");
    if (h.ok() && *h == HealthCheckResponse::SERVING) return w;
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(name, ": readiness not SERVING 10 s after the port file (",
                       h.ok() ? absl::StrCat("status ", *h) : std::string(h.status().message()),
                       "); logs:\n", w->Logs()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

absl::StatusOr<v1::WorkerLoad> Worker::GetLoad(absl::Duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(timeout));
  v1::WorkerLoad load;
  grpc::Status st = stub_->GetLoad(&ctx, v1::GetLoadRequest(), &load);
  if (!st.ok())
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                        "GetLoad: " + st.error_message());
  return load;
}

absl::StatusOr<v1::WorkerInfo> Worker::GetInfo(absl::Duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(timeout));
  v1::WorkerInfo info;
  grpc::Status st = stub_->GetInfo(&ctx, v1::GetInfoRequest(), &info);
  if (!st.ok())
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                        "GetInfo: " + st.error_message());
  return info;
}

absl::StatusOr<std::string> Worker::Metrics() { return ScrapeMetrics(metrics_port()); }

absl::StatusOr<double> Worker::Metric(const std::string& name,
                                      const std::map<std::string, std::string>& labels) {
  auto text = Metrics();
  if (!text.ok()) return text.status();
  std::optional<double> v = MetricValue(*text, name, labels);
  if (!v.has_value()) {
    std::string l;
    for (const auto& [k, val] : labels) absl::StrAppend(&l, l.empty() ? "" : ",", k, "=", val);
    return absl::NotFoundError(absl::StrCat("no series ", name, "{", l, "} in /metrics"));
  }
  return *v;
}

absl::StatusOr<HealthCheckResponse::ServingStatus> Worker::Health(const std::string& service,
                                                                  absl::Duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(timeout));
  HealthCheckRequest req;
  req.set_service(service);
  HealthCheckResponse resp;
  grpc::Status st = health_->Check(&ctx, req, &resp);
  if (!st.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                        "health Check: " + st.error_message());
  }
  return resp.status();
}

grpc::Status Worker::Release(const std::string& handle, uint32_t* released) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(absl::Seconds(5)));
  v1::ReleaseRequest req;
  req.set_handle(handle);
  v1::ReleaseResponse resp;
  grpc::Status st = stub_->Release(&ctx, req, &resp);
  if (released != nullptr) *released = resp.released();
  return st;
}

// ---- DecodeStream ---------------------------------------------------------------------------

DecodeStream::DecodeStream(v1::Worker::Stub& stub, const v1::DecodeRequest& request,
                           absl::Duration timeout) {
  ctx_.set_deadline(DeadlineIn(timeout));
  if (!request.request_id().empty()) ctx_.AddMetadata("x-request-id", request.request_id());
  reader_ = stub.Decode(&ctx_, request);
}

DecodeStream::~DecodeStream() {
  if (!finished_) {
    ctx_.TryCancel();
    Finish();
  }
}

bool DecodeStream::Read(v1::DecodeResponse* msg) { return !finished_ && reader_->Read(msg); }

grpc::Status DecodeStream::Finish() {
  if (!finished_) {
    // Drain what is left so Finish does not block on unread messages.
    v1::DecodeResponse msg;
    while (reader_->Read(&msg)) {
    }
    status_ = reader_->Finish();
    finished_ = true;
  }
  return status_;
}

grpc::Status DecodeStream::ExpectReserved(v1::Reserved* reserved) {
  v1::DecodeResponse msg;
  if (!Read(&msg)) return Finish();
  if (!msg.has_reserved()) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        "test: first Decode message is not `reserved`: " + msg.ShortDebugString());
  }
  if (reserved != nullptr) *reserved = msg.reserved();
  return grpc::Status::OK;
}

grpc::Status DecodeStream::ReadToEnd(std::vector<uint32_t>* tokens, v1::DecodeDone* done,
                                     bool* got_done) {
  v1::DecodeResponse msg;
  while (Read(&msg)) {
    if (msg.has_tokens()) {
      if (*got_done) {
        return grpc::Status(grpc::StatusCode::INTERNAL, "test: tokens after `done`");
      }
      tokens->insert(tokens->end(), msg.tokens().token_ids().begin(),
                     msg.tokens().token_ids().end());
    } else if (msg.has_done()) {
      *done = msg.done();
      *got_done = true;
    } else {
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          "test: unexpected Decode message " + msg.ShortDebugString());
    }
  }
  return Finish();
}

// ---- Flows ----------------------------------------------------------------------------------

std::string NewHandle(const std::string& prefix) {
  static std::atomic<uint64_t> n{0};
  return absl::StrCat(prefix, "-", getpid(), "-", n.fetch_add(1));
}

v1::DecodeRequest MakeHandleDecode(const std::string& handle, uint32_t prompt_tokens,
                                   const Sampling& sampling, uint32_t max_new_tokens,
                                   const std::vector<uint32_t>& stop_ids) {
  v1::DecodeRequest r;
  r.set_request_id("req-" + handle);
  r.set_handle(handle);
  r.set_prompt_tokens(prompt_tokens);
  *r.mutable_sampling() = ToProto(sampling);
  r.set_max_new_tokens(max_new_tokens);
  for (uint32_t id : stop_ids) r.add_stop_token_ids(id);
  return r;
}

v1::DecodeRequest MakeLocalDecode(const std::vector<uint32_t>& prompt, const Sampling& sampling,
                                  uint32_t max_new_tokens, const std::vector<uint32_t>& stop_ids) {
  v1::DecodeRequest r;
  r.set_request_id(NewHandle("local"));
  v1::TokenIds* ids = r.mutable_local_prompt();  // set even when empty
  for (uint32_t id : prompt) ids->add_ids(id);
  *r.mutable_sampling() = ToProto(sampling);
  r.set_max_new_tokens(max_new_tokens);
  for (uint32_t id : stop_ids) r.add_stop_token_ids(id);
  return r;
}

v1::PrefillRequest MakePrefill(const std::vector<uint32_t>& prompt, const Sampling& sampling,
                               const std::string& address, const std::string& handle) {
  v1::PrefillRequest r;
  r.set_request_id("req-" + handle);
  for (uint32_t id : prompt) r.add_token_ids(id);
  *r.mutable_sampling() = ToProto(sampling);
  r.mutable_destination()->set_address(address);
  r.mutable_destination()->set_handle(handle);
  return r;
}

grpc::Status RunPrefill(Worker& worker, const v1::PrefillRequest& request, absl::Duration timeout,
                        uint32_t* first_token, v1::TransferResult* transfer) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(timeout));
  if (!request.request_id().empty()) ctx.AddMetadata("x-request-id", request.request_id());
  auto reader = worker.stub().Prefill(&ctx, request);
  v1::PrefillResponse msg;
  int n = 0;
  bool bad_order = false;
  while (reader->Read(&msg)) {
    if (n == 0 && msg.has_first_token()) {
      if (first_token != nullptr) *first_token = msg.first_token().token_id();
    } else if (n == 1 && msg.has_transfer()) {
      if (transfer != nullptr) *transfer = msg.transfer();
    } else {
      bad_order = true;
    }
    ++n;
  }
  grpc::Status st = reader->Finish();
  if (st.ok() && (bad_order || n != 2)) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        absl::StrCat("test: Prefill stream ended OK after ", n,
                                     " messages; expected first_token then transfer"));
  }
  return st;
}

std::string GenerateResult::Describe() const {
  return absl::StrCat("status ", StatusString(status), failed_step.empty() ? "" : " at ",
                      failed_step, "; tokens [", JoinIds(tokens, " "), "] done ",
                      got_done ? done.ShortDebugString() : "(none)");
}

GenerateResult DisaggregatedGenerate(Worker& prefill, Worker& decode, const GenerateSpec& spec) {
  GenerateResult r;
  const std::string handle = NewHandle(spec.request_id.empty() ? "h" : spec.request_id);
  if (spec.max_new_tokens < 2) {
    r.status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "test: max_new_tokens < 2");
    return r;
  }
  DecodeStream stream(decode.stub(),
                      MakeHandleDecode(handle, static_cast<uint32_t>(spec.prompt.size()),
                                       spec.sampling, spec.max_new_tokens - 1, spec.stop_ids),
                      spec.timeout);
  v1::Reserved reserved;
  r.status = stream.ExpectReserved(&reserved);
  if (!r.status.ok()) {
    r.failed_step = "decode-reserve";
    return r;
  }
  if (reserved.handle() != handle) {
    r.status = grpc::Status(grpc::StatusCode::INTERNAL,
                            "test: reserved.handle " + reserved.handle() + " != " + handle);
    r.failed_step = "decode-reserve";
    return r;
  }
  uint32_t first = 0;
  r.status = RunPrefill(prefill, MakePrefill(spec.prompt, spec.sampling, decode.address(), handle),
                        spec.timeout, &first, &r.transfer);
  if (!r.status.ok()) {
    r.failed_step = "prefill";
    return r;
  }
  r.tokens.push_back(first);
  if (std::count(spec.stop_ids.begin(), spec.stop_ids.end(), first)) {
    // The router's move: nothing more to generate, free the reservation.
    decode.Release(handle);
    stream.Finish();
    r.got_done = true;
    r.done.set_reason(v1::DECODE_FINISH_STOP);
    r.done.set_tokens(1);
    return r;
  }
  r.status = stream.ReadToEnd(&r.tokens, &r.done, &r.got_done);
  if (!r.status.ok()) r.failed_step = "decode";
  return r;
}

GenerateResult LocalGenerate(Worker& both, const GenerateSpec& spec) {
  GenerateResult r;
  v1::DecodeRequest req =
      MakeLocalDecode(spec.prompt, spec.sampling, spec.max_new_tokens, spec.stop_ids);
  if (!spec.request_id.empty()) req.set_request_id(spec.request_id);
  DecodeStream stream(both.stub(), req, spec.timeout);
  r.status = stream.ReadToEnd(&r.tokens, &r.done, &r.got_done);
  if (!r.status.ok()) r.failed_step = "decode";
  return r;
}

// ---- Idle checks ----------------------------------------------------------------------------

absl::Status WaitIdle(Worker& worker, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string why;
  while (true) {
    why.clear();
    auto info = worker.GetInfo();
    auto load = worker.GetLoad();
    if (!info.ok() || !load.ok()) {
      why = absl::StrCat(info.status().ToString(), " ", load.status().ToString());
    } else {
      if (load->running() != 0 || load->waiting() != 0 || load->state_bytes_used() != 0 ||
          load->free_slots() != info->max_running()) {
        absl::StrAppend(&why, "GetLoad {", load->ShortDebugString(), "} with max_running ",
                        info->max_running(), "; ");
      }
      auto text = worker.Metrics();
      if (!text.ok()) {
        absl::StrAppend(&why, text.status().ToString());
      } else {
        for (const char* g :
             {"sambay_worker_running_sequences", "sambay_worker_waiting_sequences",
              "sambay_worker_slots_used", "sambay_worker_state_memory_used_bytes"}) {
          std::optional<double> v = MetricValue(*text, g, {});
          if (!v.has_value()) {
            absl::StrAppend(&why, g, " missing; ");
          } else if (*v != 0) {
            absl::StrAppend(&why, g, " = ", *v, "; ");
          }
        }
      }
    }
    if (why.empty()) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::FailedPreconditionError(absl::StrCat(worker.name(), " not idle after ",
                                                        absl::FormatDuration(timeout), ": ", why));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

void ExpectIdle(Worker& worker, absl::Duration timeout) {
  const absl::Status s = WaitIdle(worker, timeout);
  EXPECT_TRUE(s.ok()) << s;
}

absl::StatusOr<double> WaitMetric(Worker& worker, const std::string& name,
                                  const std::map<std::string, std::string>& labels,
                                  const std::function<bool(double)>& pred, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    absl::StatusOr<double> v = worker.Metric(name, labels);
    if (v.ok() && pred(*v)) return *v;
    if (absl::Now() >= deadline) {
      if (!v.ok()) return v.status();
      return absl::FailedPreconditionError(absl::StrCat(
          name, " = ", *v, " did not reach the expected value in ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

// ---- In-process states ----------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<LocalModel>> LocalModel::Load() {
  ModelOptions o;
  o.num_threads = 1;
  auto m = Model::Load(TinyModelDir(), o);
  if (!m.ok()) return m.status();
  std::unique_ptr<LocalModel> lm(new LocalModel());
  lm->model_ = std::move(*m);
  return lm;
}

absl::StatusOr<std::vector<std::string>> LocalModel::ExportPrefilled(
    const std::vector<uint32_t>& prompt, const Sampling& s, size_t chunk_bytes,
    const std::string& fingerprint, uint32_t* pending) {
  auto state = model_->NewState();
  std::vector<int32_t> ids(prompt.begin(), prompt.end());
  std::vector<float> logits;
  absl::Status st = model_->Prefill(*state, ids, 0, &logits);
  if (!st.ok()) return st;
  SamplingParams p;
  p.temperature = s.temperature;
  p.top_k = s.top_k;
  p.top_p = s.top_p;
  p.min_p = s.min_p;
  p.repetition_penalty = s.repetition_penalty;
  p.presence_penalty = s.presence_penalty;
  p.frequency_penalty = s.frequency_penalty;
  p.seed = s.seed;
  Sampler sampler(p);
  const int32_t tok = sampler.Sample(logits, ids);
  state->last_token = tok;
  state->rng_state = sampler.rng_state();
  if (pending != nullptr) *pending = static_cast<uint32_t>(tok);
  return ExportState(model_->config(), fingerprint.empty() ? model_->fingerprint() : fingerprint,
                     *state, chunk_bytes);
}

grpc::Status PushChunks(Worker& worker, const std::string& handle,
                        const std::vector<std::string>& chunks, absl::Duration timeout,
                        v1::PushStateResponse* response) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(timeout));
  v1::PushStateResponse resp;
  auto writer = worker.stub().PushState(&ctx, &resp);
  v1::StateChunk msg;
  msg.set_handle(handle);
  for (const std::string& c : chunks) {
    msg.set_data(c);
    if (!writer->Write(msg)) break;
    msg.clear_handle();
  }
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  if (response != nullptr) *response = resp;
  return st;
}

std::string StatusString(const grpc::Status& s) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  const int c = static_cast<int>(s.error_code());
  const char* name = c >= 0 && c <= 16 ? kNames[c] : "?";
  return s.ok() ? "OK" : absl::StrCat(name, ": ", s.error_message());
}

}  // namespace sambay::testing
