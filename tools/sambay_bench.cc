// sambay-bench: a load generator for sambay-serve. Streams many generations at once, either
// through sambay-router (sambay.v1.Generation/Generate, or with --api http its OpenAI-compatible
// POST /v1/completions with "stream": true) or straight from a role-both sambay-worker
// (sambay.v1.Worker/Decode with local_prompt), and reports latency percentiles, throughput and
// goodput. Running the same load both ways measures the router's own overhead; running it
// through both APIs measures what HTTP/SSE costs beside gRPC.
//
//   sambay-bench --address 127.0.0.1:50050 --concurrency 8 --requests 2000
//       --prompt-len 16 --gen-len 256 --router-pid 1234
//   sambay-bench --api http --address 127.0.0.1:8000 --concurrency 1000 --duration 20
//   sambay-bench --target worker --address 127.0.0.1:40001 --concurrency 8 --duration 30
//   sambay-bench --rate 20 --duration 60 --prompt-len 8-64 --gen-len 32-128
//       --slo-ttft 0.5 --slo-itl 0.05 --json out.json
//
// Load: closed loop (--concurrency N: N streams always in flight) or open loop (--rate R:
// Poisson arrivals, R requests/s, however many are in flight). The run ends after --requests
// requests were sent, or when --duration seconds have passed (no new request after that; the
// ones in flight finish and are counted). Prompts are random token ids in [0, --vocab) drawn
// with --seed; every request sets ignore_eos (router) / no stop ids (worker), so a generation
// has exactly the requested length unless the context ends first.
//
// Per request: TTFT (send -> first token), inter-token latencies (the gap between two token
// messages; a message with k tokens contributes k samples of gap/k), end-to-end (send -> status)
// and tokens. Goodput counts the successful requests with TTFT <= --slo-ttft and mean ITL
// (the request's (last token - first token) / (tokens - 1)) <= --slo-itl.
//
// --api http: the body is {"prompt": [ids], "max_tokens", "stream": true, "stream_options":
// {"include_usage": true}, "temperature", "seed", "ignore_eos": true}. An SSE event carries
// text, not token ids, and the router holds back the text of a token that ends inside a UTF-8
// character, sending it with the next one; so a message is an event whose choices[0].text is
// not empty, and the request's token count is the final usage chunk's completion_tokens. When
// the characters (code points) of a request's events add up to that count (every token is one
// character, as the tiny model's ASCII ids are: bench/router_overhead.sh's VOCAB=128), an event
// of k characters is a message of k tokens, exactly as on the gRPC path; otherwise each event
// counts as one token for TTFT and ITL (one sample per event: the ITL row then times events),
// and "tokens per stream message" shows how many tokens an event held on average. Mean ITL per
// request uses the true token count either way. An HTTP error status becomes the matching gRPC code
// in the report (429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, ...; an error
// event or a broken stream after 200 INTERNAL). The HTTP client (tools/http_stream_client.h) runs
// every stream on --http-threads threads over pooled keep-alive connections, no thread per stream.
//
// TLS and the API key: the flags of common/client_flags.h (gRPC only; --api http is plaintext and
// sends --api-key as "Authorization: Bearer KEY").
//
// With --router-pid (and/or --worker-pid) the process's CPU time (utime + stime from
// /proc/PID/stat) is read before and after the run and reported with the tokens streamed per
// CPU-second of that process.
//
// Threads: main sends (and, open loop, sleeps until each arrival); gRPC's callback threads (or
// the HTTP client's threads) record the stream events. Output: a markdown report on stdout; errors
// on stderr. Exit codes: 0 every request succeeded, 1 some failed or a setup error, 2 bad flags.
#include <grpcpp/client_context.h>
#include <grpcpp/support/client_callback.h>
#include <grpcpp/support/status.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/client_flags.h"
#include "common/flags.h"
#include "common/grpc_status.h"
#include "common/mutex.h"
#include "nlohmann/json.hpp"
#include "sambay/v1/generate.grpc.pb.h"
#include "sambay/v1/worker.grpc.pb.h"
#include "tools/bench_report.h"
#include "tools/http_stream_client.h"

namespace sambay {
namespace {

using Clock = std::chrono::steady_clock;
using bench::ProcCpu;
using bench::ReportSettings;
using bench::Result;
using bench::Summary;

constexpr const char* kTool = "sambay-bench";

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// "N" or "A-B" (inclusive, uniform integers).
struct Range {
  int64_t lo = 0;
  int64_t hi = 0;
  std::string text;
  int64_t Draw(std::mt19937_64& rng) const {
    if (lo == hi) return lo;
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  }
};

absl::StatusOr<Range> ParseRange(const std::string& text, const std::string& flag) {
  Range r;
  r.text = text;
  std::vector<std::string> parts = absl::StrSplit(text, '-');
  bool ok = false;
  if (parts.size() == 1) {
    ok = absl::SimpleAtoi(parts[0], &r.lo);
    r.hi = r.lo;
  } else if (parts.size() == 2) {
    ok = absl::SimpleAtoi(parts[0], &r.lo) && absl::SimpleAtoi(parts[1], &r.hi);
  }
  if (!ok || r.lo < 1 || r.hi < r.lo) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": \"", text, "\" is not N or A-B with 1 <= A <= B"));
  }
  return r;
}

struct Flags {
  ClientFlags client;
  std::string target = "router";
  std::string api = "grpc";
  int64_t http_threads = 2;
  int64_t concurrency = 0;
  double rate = 0;
  int64_t requests = 0;
  double duration = 0;
  std::string prompt_len = "16";
  std::string gen_len = "128";
  int64_t vocab = 256;
  int64_t seed = 1;
  double temperature = 0;
  double slo_ttft = 0;
  double slo_itl = 0;
  int64_t router_pid = 0;
  int64_t worker_pid = 0;
  std::string json;
  int64_t warmup = 0;
  bool quiet = false;
};

void Register(FlagSet& fs, Flags& f) {
  RegisterClientFlags(fs, &f.client, "Address host:port of the router or the worker.",
                      "Deadline of each request in seconds; 0 = none.");
  fs.AddString("target", &f.target,
               "router: sambay.v1.Generation/Generate; worker: sambay.v1.Worker/Decode with "
               "local_prompt on a role-both worker.");
  fs.AddString("api", &f.api,
               "grpc: the gRPC API; http: the router's OpenAI-compatible HTTP API (POST "
               "/v1/completions, streamed; --address is the router's --http-port; plaintext "
               "only: the TLS flags are refused, --api-key is sent as 'Authorization: Bearer').");
  fs.AddInt("http-threads", &f.http_threads, "--api http: threads running the HTTP streams.");
  fs.AddInt("concurrency", &f.concurrency,
            "Closed loop: this many streams always in flight (default 8 when --rate is not "
            "given).");
  fs.AddDouble("rate", &f.rate, "Open loop: Poisson arrivals at this many requests/s.");
  fs.AddInt("requests", &f.requests,
            "Requests to send (measured; default 100 when --duration is not given).");
  fs.AddDouble("duration", &f.duration,
               "Send requests for this many seconds (in-flight ones then finish).");
  fs.AddString("prompt-len", &f.prompt_len, "Prompt tokens: N or A-B (uniform).");
  fs.AddString("gen-len", &f.gen_len, "Generated tokens (max_new_tokens): N or A-B (uniform).");
  fs.AddInt("vocab", &f.vocab, "Prompt token ids are drawn from [0, vocab).");
  fs.AddInt("seed", &f.seed, "Seed of the prompts, lengths, arrivals and sampler seeds.");
  fs.AddDouble("temperature", &f.temperature, "Sampling temperature; 0 = greedy.");
  fs.AddDouble("slo-ttft", &f.slo_ttft, "Goodput: TTFT limit in seconds (0 = none).");
  fs.AddDouble("slo-itl", &f.slo_itl,
               "Goodput: limit on the request's mean inter-token latency in seconds (0 = none).");
  fs.AddInt("router-pid", &f.router_pid,
            "Report this process's CPU seconds over the run (the router) and tokens per "
            "CPU-second.");
  fs.AddInt("worker-pid", &f.worker_pid, "Same, for a worker process.");
  fs.AddString("json", &f.json, "Also write the results and the config as JSON to this file.");
  fs.AddInt("warmup", &f.warmup,
            "Requests sent (closed loop, at --concurrency) before the measured run, not counted.");
  fs.AddBool("quiet", &f.quiet, "No progress lines on stderr.");
}

// Collects finished requests; wakes the sender when one finishes. Thread-safety: mu_ guards the
// results, the in-flight count and the last finish time.
class Collector {
 public:
  void Add(Result r) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    results_.push_back(std::move(r));
    --in_flight_;
    last_done_ = Clock::now();
    cv_.SignalAll();
  }
  void Started() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    ++in_flight_;
  }
  // Waits until fewer than `limit` requests are in flight.
  void WaitBelow(int64_t limit) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    while (in_flight_ >= limit) cv_.Wait(&mu_);
  }
  // As WaitBelow, but returns after `d` at the latest.
  void WaitBelowFor(int64_t limit, absl::Duration d) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    const absl::Time deadline = absl::Now() + d;
    while (in_flight_ >= limit) {
      if (cv_.WaitWithDeadline(&mu_, deadline)) break;
    }
  }
  int64_t InFlight() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return in_flight_;
  }
  size_t Done() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return results_.size();
  }
  std::vector<Result> Take() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return std::move(results_);
  }
  Clock::time_point last_done() ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return last_done_;
  }

 private:
  Mutex mu_;
  CondVar cv_;  // signalled when a request finishes
  std::vector<Result> results_ ABSL_GUARDED_BY(mu_);
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  Clock::time_point last_done_ ABSL_GUARDED_BY(mu_);
};

// Shared timing logic of both reactors.
class Timing {
 public:
  Timing(int64_t prompt_tokens, int64_t requested) {
    r_.prompt_tokens = prompt_tokens;
    r_.requested_tokens = requested;
    r_.itl.reserve(static_cast<size_t>(requested));
  }
  void Start() { start_ = Clock::now(); }
  void Tokens(int64_t count, Clock::time_point now = Clock::now()) {
    if (count <= 0) return;
    ++r_.messages;
    if (!r_.got_token) {
      r_.got_token = true;
      r_.ttft = Seconds(now - start_);
      first_ = now;
      // The other tokens of the first message arrived with it: gap 0.
      for (int i = 1; i < count; ++i) r_.itl.push_back(0);
    } else {
      const double gap = Seconds(now - last_) / count;
      for (int i = 0; i < count; ++i) r_.itl.push_back(gap);
    }
    last_ = now;
    r_.tokens += count;
  }
  // reported_tokens >= 0: the stream's own count of its tokens (the HTTP usage chunk), which
  // replaces the count of the timed messages (an SSE event may hold several tokens).
  Result Finish(const grpc::Status& s, int64_t reported_tokens = -1) {
    r_.e2e = Seconds(Clock::now() - start_);
    r_.code = s.error_code();
    r_.error = s.error_message();
    if (reported_tokens >= 0) r_.tokens = reported_tokens;
    if (r_.got_token) r_.first_to_last = Seconds(last_ - first_);
    return std::move(r_);
  }

 private:
  Result r_;
  Clock::time_point start_, first_, last_;
};

// One streamed request, router Generate or worker Decode: times the token messages
// (TokenCount says how many tokens a response carries) and hands the Result to the Collector
// when the stream ends. It deletes itself then.
template <typename Request, typename Response, int (*TokenCount)(const Response&)>
class StreamCall final : public grpc::ClientReadReactor<Response> {
 public:
  // start(&ctx, &req, this) begins the call (stub->async()->Method(...)).
  template <typename StartFn>
  StreamCall(Collector* out, Request req, Timing timing, const ClientFlags& client,
             const StartFn& start)
      : out_(out), req_(std::move(req)), timing_(std::move(timing)) {
    PrepareClientContext(client, &ctx_);  // the deadline and the API key
    timing_.Start();
    start(&ctx_, &req_, this);
    this->StartRead(&resp_);
    this->StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    timing_.Tokens(TokenCount(resp_));
    this->StartRead(&resp_);
  }
  void OnDone(const grpc::Status& s) override {
    out_->Add(timing_.Finish(s));
    delete this;
  }

 private:
  Collector* out_;
  grpc::ClientContext ctx_;
  Request req_;
  Response resp_;
  Timing timing_;
};

int RouterTokens(const v1::GenerateResponse& r) { return r.token_ids_size(); }
int WorkerTokens(const v1::DecodeResponse& r) {
  return r.has_tokens() ? r.tokens().token_ids_size() : 0;
}
using RouterCall = StreamCall<v1::GenerateRequest, v1::GenerateResponse, RouterTokens>;
using WorkerCall = StreamCall<v1::DecodeRequest, v1::DecodeResponse, WorkerTokens>;

// The status an HTTP stream's end maps to: OK, or the gRPC code of its HTTP status.
grpc::Status HttpEndStatus(const SseStreamEnd& end) {
  if (end.error.empty()) return grpc::Status::OK;
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  if (end.timed_out) {
    code = grpc::StatusCode::DEADLINE_EXCEEDED;
  } else {
    static const std::map<int, grpc::StatusCode> kCodes = {
        {0, grpc::StatusCode::UNAVAILABLE},         {200, grpc::StatusCode::INTERNAL},
        {400, grpc::StatusCode::INVALID_ARGUMENT},  {401, grpc::StatusCode::UNAUTHENTICATED},
        {403, grpc::StatusCode::PERMISSION_DENIED}, {404, grpc::StatusCode::NOT_FOUND},
        {409, grpc::StatusCode::ABORTED},           {429, grpc::StatusCode::RESOURCE_EXHAUSTED},
        {499, grpc::StatusCode::CANCELLED},         {501, grpc::StatusCode::UNIMPLEMENTED},
        {503, grpc::StatusCode::UNAVAILABLE},       {504, grpc::StatusCode::DEADLINE_EXCEEDED},
    };
    if (auto it = kCodes.find(end.http_status); it != kCodes.end()) code = it->second;
  }
  return grpc::Status(code, end.error);
}

// One streamed request through the HTTP API: notes when each event that carries text arrived
// and how many characters it held; when the stream ends, times them as messages (of as many
// tokens as characters where the characters add up to the usage chunk's completion_tokens, as
// when every token is one character; else of one token each) and hands the Result, with the
// usage chunk's token count, to the Collector. It deletes itself then.
class HttpCall final : public SseStreamObserver {
 public:
  HttpCall(Collector* out, Timing timing, int64_t expected_events)
      : out_(out), timing_(std::move(timing)) {
    events_.reserve(static_cast<size_t>(expected_events));
    timing_.Start();
  }
  void OnTextEvent(int64_t characters) override {
    events_.push_back({Clock::now(), characters});
    characters_ += characters;
  }
  void OnEnd(const SseStreamEnd& end) override {
    const bool per_character = characters_ == end.completion_tokens;
    for (const Event& e : events_) timing_.Tokens(per_character ? e.characters : 1, e.time);
    out_->Add(timing_.Finish(HttpEndStatus(end), end.completion_tokens));
    delete this;
  }

 private:
  struct Event {
    Clock::time_point time;
    int64_t characters;
  };
  Collector* out_;
  Timing timing_;
  std::vector<Event> events_;
  int64_t characters_ = 0;
};

// One drawn request: its prompt, length, sampler seed and id.
struct Draw {
  std::vector<uint32_t> ids;
  int64_t gen_len = 0;
  uint64_t seed = 0;
  std::string id;
};

// Draws requests and starts them over gRPC (router or worker) or over the router's HTTP API.
class Sender {
 public:
  Sender(const Flags& f, Range prompt, Range gen, std::shared_ptr<grpc::Channel> channel,
         HttpStreamClient* http)
      : f_(f), prompt_(prompt), gen_(gen), rng_(static_cast<uint64_t>(f.seed)), http_(http) {
    if (http_ != nullptr) return;
    if (f.target == "worker") {
      worker_ = v1::Worker::NewStub(channel);
    } else {
      router_ = v1::Generation::NewStub(channel);
    }
  }
  void Send(Collector* out) {
    Draw d;
    const int64_t plen = prompt_.Draw(rng_);
    d.gen_len = gen_.Draw(rng_);
    std::uniform_int_distribution<uint32_t> tok(0, static_cast<uint32_t>(f_.vocab - 1));
    d.ids.resize(static_cast<size_t>(plen));
    for (auto& id : d.ids) id = tok(rng_);
    d.seed = rng_();
    d.id = absl::StrCat("loadgen-", f_.seed, "-", counter_++);
    out->Started();
    if (http_ != nullptr) {
      SendHttp(out, d);
    } else if (worker_) {
      SendWorker(out, d);
    } else {
      SendRouter(out, d);
    }
  }
  std::mt19937_64& rng() { return rng_; }

 private:
  void SendWorker(Collector* out, const Draw& d) {
    v1::DecodeRequest req;
    req.set_request_id(d.id);
    req.mutable_local_prompt()->mutable_ids()->Add(d.ids.begin(), d.ids.end());
    req.mutable_sampling()->set_temperature(static_cast<float>(f_.temperature));
    req.mutable_sampling()->set_seed(d.seed);
    req.set_max_new_tokens(static_cast<uint32_t>(d.gen_len));
    Timing timing(req.local_prompt().ids_size(), req.max_new_tokens());
    new WorkerCall(
        out, std::move(req), std::move(timing), f_.client,
        [this](auto* ctx, auto* r, auto* call) { worker_->async()->Decode(ctx, r, call); });
  }
  void SendRouter(Collector* out, const Draw& d) {
    v1::GenerateRequest req;
    req.set_request_id(d.id);
    req.mutable_token_ids()->mutable_ids()->Add(d.ids.begin(), d.ids.end());
    req.mutable_sampling()->set_temperature(static_cast<float>(f_.temperature));
    req.mutable_sampling()->set_seed(d.seed);
    req.mutable_stopping()->set_max_new_tokens(static_cast<uint32_t>(d.gen_len));
    req.mutable_stopping()->set_ignore_eos(true);
    Timing timing(req.token_ids().ids_size(), req.stopping().max_new_tokens());
    new RouterCall(
        out, std::move(req), std::move(timing), f_.client,
        [this](auto* ctx, auto* r, auto* call) { router_->async()->Generate(ctx, r, call); });
  }
  // POST /v1/completions, streamed, with the usage chunk (the request id is the router's).
  void SendHttp(Collector* out, const Draw& d) {
    const nlohmann::json body = {{"prompt", d.ids},
                                 {"max_tokens", d.gen_len},
                                 {"stream", true},
                                 {"stream_options", {{"include_usage", true}}},
                                 {"temperature", f_.temperature},
                                 {"seed", d.seed},
                                 {"ignore_eos", true}};
    auto* call =
        new HttpCall(out, Timing(static_cast<int64_t>(d.ids.size()), d.gen_len), d.gen_len);
    http_->Start("/v1/completions", body.dump(), f_.client.timeout, call);
  }

  const Flags& f_;
  Range prompt_, gen_;
  std::mt19937_64 rng_;
  uint64_t counter_ = 0;
  HttpStreamClient* http_;
  std::unique_ptr<v1::Generation::Stub> router_;
  std::unique_ptr<v1::Worker::Stub> worker_;
};

// utime + stime of a process in seconds, from /proc/PID/stat.
absl::StatusOr<double> CpuSeconds(int64_t pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/stat");
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const size_t paren = text.rfind(')');
  if (!in || paren == std::string::npos) {
    return absl::NotFoundError(absl::StrCat("cannot read ", path));
  }
  // After "pid (comm)": field 3 (state) is the first; utime is field 14, stime 15.
  std::vector<std::string> fields = absl::StrSplit(text.substr(paren + 1), ' ', absl::SkipEmpty());
  uint64_t utime = 0, stime = 0;
  if (fields.size() < 13 || !absl::SimpleAtoi(fields[11], &utime) ||
      !absl::SimpleAtoi(fields[12], &stime)) {
    return absl::InternalError(absl::StrCat("unexpected format of ", path));
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

// Parses and checks the flags, filling in the defaults that depend on other flags, and the
// length ranges. Returns the exit code when the run ends here (0 after --help, 2 for a bad
// flag, with the error on stderr), or nothing to go on.
std::optional<int> ParseAndCheckFlags(FlagSet& fs, Flags& f, int argc, char** argv,
                                      Range* prompt_range, Range* gen_range) {
  if (absl::Status s = fs.Parse(argc, argv); !s.ok()) {
    if (s.message() == FlagSet::kHelpRequested) {
      std::printf("%s", fs.Usage().c_str());
      return 0;
    }
    std::fprintf(stderr, "%s: error: %s\n", kTool, std::string(s.message()).c_str());
    return 2;
  }
  auto bad = [](const std::string& m) {
    std::fprintf(stderr, "%s: error: %s\n", kTool, m.c_str());
    return 2;
  };
  if (absl::Status s = ApplySharedClientEnv(fs, &f.client); !s.ok()) {
    return bad(std::string(s.message()));
  }
  if (absl::Status s = CheckClientFlags(f.client); !s.ok()) return bad(std::string(s.message()));
  if (f.target != "router" && f.target != "worker") return bad("--target: router or worker");
  if (f.api != "grpc" && f.api != "http") return bad("--api: grpc or http");
  if (absl::Status s = RefuseTls(f.client, "--api http is plain HTTP (no HTTPS); use --api grpc");
      f.api == "http" && !s.ok()) {
    return bad(std::string(s.message()));
  }
  if (f.api == "http" && f.target != "router") return bad("--api http needs --target router");
  if (f.http_threads < 1 || f.http_threads > 64) return bad("--http-threads: 1 .. 64");
  if (f.concurrency > 0 && f.rate > 0) return bad("give --concurrency or --rate, not both");
  if (f.concurrency < 0 || f.rate < 0) return bad("--concurrency and --rate must be >= 0");
  if (f.concurrency == 0 && f.rate == 0) f.concurrency = 8;
  if (f.requests < 0 || f.duration < 0) return bad("--requests and --duration must be >= 0");
  if (f.requests == 0 && f.duration == 0) f.requests = 100;
  if (f.vocab < 1 || f.vocab > (int64_t{1} << 32)) return bad("--vocab: 1 .. 2^32");
  if (f.warmup < 0) return bad("--warmup must be >= 0");
  absl::StatusOr<Range> prompt = ParseRange(f.prompt_len, "prompt-len");
  if (!prompt.ok()) return bad(std::string(prompt.status().message()));
  absl::StatusOr<Range> gen = ParseRange(f.gen_len, "gen-len");
  if (!gen.ok()) return bad(std::string(gen.status().message()));
  *prompt_range = *prompt;
  *gen_range = *gen;
  return std::nullopt;
}

// Sends the --warmup requests (closed loop) and waits for them; not measured.
void WarmUp(const Flags& f, Sender& sender) {
  Collector warm;
  const int64_t c = f.concurrency > 0 ? f.concurrency : 8;
  for (int64_t i = 0; i < f.warmup; ++i) {
    warm.WaitBelow(c);
    sender.Send(&warm);
  }
  warm.WaitBelow(1);
  size_t failed = 0;
  for (const Result& r : warm.Take()) failed += r.code != grpc::StatusCode::OK;
  if (!f.quiet) {
    std::fprintf(stderr, "%s: warm-up: %lld requests, %zu failed\n", kTool,
                 static_cast<long long>(f.warmup), failed);
  }
}

// The --router-pid / --worker-pid processes with their CPU seconds now; nothing (error on
// stderr) if one cannot be read.
std::optional<std::vector<ProcCpu>> ReadCpuBefore(const Flags& f) {
  std::vector<ProcCpu> procs;
  if (f.router_pid > 0) procs.push_back({"router", f.router_pid, std::nullopt});
  if (f.worker_pid > 0) procs.push_back({"worker", f.worker_pid, std::nullopt});
  for (ProcCpu& p : procs) {
    absl::StatusOr<double> c = CpuSeconds(p.pid);
    if (!c.ok()) {
      std::fprintf(stderr, "%s: error: --%s-pid: %s\n", kTool, p.name.c_str(),
                   std::string(c.status().message()).c_str());
      return std::nullopt;
    }
    p.before = *c;
  }
  return procs;
}

// Turns each process's CPU seconds before the run into the CPU seconds used since (a warning
// on stderr, and nothing, where it cannot be read any more).
void ReadCpuAfter(std::vector<ProcCpu>& procs) {
  for (ProcCpu& p : procs) {
    absl::StatusOr<double> c = CpuSeconds(p.pid);
    if (c.ok()) {
      *p.before = *c - *p.before;
    } else {
      std::fprintf(stderr, "%s: warning: --%s-pid: %s\n", kTool, p.name.c_str(),
                   std::string(c.status().message()).c_str());
      p.before.reset();
    }
  }
}

// The measured run: sends closed or open loop until --requests were sent or --duration has
// passed, then waits for the requests in flight; a progress line on stderr every 5 s unless
// --quiet. Starts the clock when constructed.
class LoadRun {
 public:
  LoadRun(const Flags& f, Sender& sender, Collector& out)
      : f_(f),
        sender_(sender),
        out_(out),
        start_(Clock::now()),
        stop_sending_(start_ + std::chrono::microseconds(static_cast<int64_t>(f.duration * 1e6))),
        last_progress_(start_) {}

  void Run() {
    if (f_.concurrency > 0) {
      ClosedLoop();
    } else {
      OpenLoop();
    }
    while (out_.InFlight() > 0) {
      out_.WaitBelowFor(1, absl::Milliseconds(500));
      Progress();
    }
  }
  Clock::time_point start() const { return start_; }
  int64_t sent() const { return sent_; }

 private:
  bool More() const {
    if (f_.requests > 0 && sent_ >= f_.requests) return false;
    if (f_.duration > 0 && Clock::now() >= stop_sending_) return false;
    return true;
  }
  void Progress() {
    if (f_.quiet) return;
    const Clock::time_point now = Clock::now();
    if (now - last_progress_ < std::chrono::seconds(5)) return;
    last_progress_ = now;
    std::fprintf(stderr, "%s: %.0f s: %lld sent, %zu done, %lld in flight\n", kTool,
                 Seconds(now - start_), static_cast<long long>(sent_), out_.Done(),
                 static_cast<long long>(out_.InFlight()));
  }
  void ClosedLoop() {
    while (More()) {
      out_.WaitBelowFor(f_.concurrency, absl::Milliseconds(100));
      if (out_.InFlight() >= f_.concurrency) {
        Progress();
        continue;
      }
      if (!More()) break;
      sender_.Send(&out_);
      ++sent_;
      Progress();
    }
  }
  void OpenLoop() {
    std::exponential_distribution<double> gap(f_.rate);
    Clock::time_point next = start_;
    while (More()) {
      std::this_thread::sleep_until(next);
      if (!More()) break;
      sender_.Send(&out_);
      ++sent_;
      next += std::chrono::microseconds(static_cast<int64_t>(gap(sender_.rng()) * 1e6));
      Progress();
    }
  }

  const Flags& f_;
  Sender& sender_;
  Collector& out_;
  const Clock::time_point start_;
  const Clock::time_point stop_sending_;
  int64_t sent_ = 0;
  Clock::time_point last_progress_;
};

// The flags the report prints.
ReportSettings Settings(const Flags& f, const Range& prompt, const Range& gen) {
  ReportSettings r;
  r.target = f.target;
  r.api = f.api;
  r.address = f.client.address;
  r.prompt_text = prompt.text;
  r.gen_text = gen.text;
  r.temperature = f.temperature;
  r.warmup = f.warmup;
  r.concurrency = f.concurrency;
  r.rate = f.rate;
  r.slo_ttft = f.slo_ttft;
  r.slo_itl = f.slo_itl;
  r.json = f.json;
  return r;
}

// What the requests go through: a gRPC channel, or (--api http) the HTTP client.
struct Connection {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<HttpStreamClient> http;
};

// Connects to --address; nothing (error on stderr) when that fails within 10 s.
std::optional<Connection> Connect(const Flags& f) {
  Connection c;
  absl::Status status;
  if (f.api == "grpc") {
    c.channel = MakeClientChannel(f.client);
    if (!c.channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
      status = absl::UnavailableError(
          absl::StrCat("cannot connect to ", f.client.address, " within 10 s"));
    }
  } else {
    const size_t colon = f.client.address.rfind(':');
    int port = 0;
    if (colon == std::string::npos ||
        !absl::SimpleAtoi(f.client.address.substr(colon + 1), &port)) {
      status = absl::InvalidArgumentError("--address: host:port");
    } else {
      std::string host = f.client.address.substr(0, colon);
      if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
      }
      auto http =
          HttpStreamClient::Create(host, port, static_cast<int>(f.http_threads), f.client.api_key);
      status = http.ok() ? (*http)->WaitConnectable(absl::Seconds(10)) : http.status();
      if (http.ok()) c.http = std::move(*http);
    }
  }
  if (!status.ok()) {
    std::fprintf(stderr, "%s: error: %s\n", kTool, std::string(status.message()).c_str());
    return std::nullopt;
  }
  return c;
}

int Run(int argc, char** argv) {
  Flags f;
  FlagSet fs(kTool, "SAMBAY_LOADGEN_");
  Register(fs, f);
  Range prompt, gen;
  if (std::optional<int> code = ParseAndCheckFlags(fs, f, argc, argv, &prompt, &gen)) {
    return *code;
  }
  std::optional<Connection> conn = Connect(f);
  if (!conn) return 1;
  Sender sender(f, prompt, gen, conn->channel, conn->http.get());
  if (f.warmup > 0) WarmUp(f, sender);
  std::optional<std::vector<ProcCpu>> procs = ReadCpuBefore(f);
  if (!procs) return 1;
  const double self_before = SelfCpuSeconds();

  Collector out;
  LoadRun run(f, sender, out);
  run.Run();
  const Clock::time_point end = out.last_done() > run.start() ? out.last_done() : Clock::now();
  const double wall = Seconds(end - run.start());
  const double self_cpu = SelfCpuSeconds() - self_before;
  ReadCpuAfter(*procs);

  const ReportSettings rs = Settings(f, prompt, gen);
  const Summary s = bench::Aggregate(rs, out.Take(), wall, self_cpu);
  const std::string load = bench::LoadText(rs);
  bench::PrintLatencies(rs, load, run.sent(), s);
  bench::PrintResults(rs, *procs, s);
  if (!f.json.empty() &&
      !bench::WriteJson(RedactedEffective(fs), rs, load, run.sent(), *procs, s)) {
    return 1;
  }
  return s.errors.empty() ? 0 : 1;
}

}  // namespace
}  // namespace sambay

int main(int argc, char** argv) { return sambay::Run(argc, argv); }
