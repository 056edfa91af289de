// sambay-client: streams one generation from a sambay-serve cluster (sambay.v1.Generation, served
// by sambay-router) to the terminal as the text arrives. See docs/client.md.
//
//   sambay-client --address 127.0.0.1:50050 --prompt "Hello" --max-new-tokens 64
//   sambay-client --chat "Why is the sky blue?" --system "Be brief." --temperature 0.7 --seed 1
//   sambay-client --ids 3,14,15 --max-new-tokens 16 --json      (one JSON object per message)
//   sambay-client --health [--wait-ready 60]                    (readiness probe)
//   sambay-client --info                                        (GetModelInfo as JSON)
//   SAMBAY_API_KEY=KEY sambay-client --tls-ca ca.pem --tls-cert client.pem --tls-key client.key
//       --prompt "Hello"                                        (TLS, mTLS and an API key)
//
// Default output: the text on stdout, flushed per message, then one newline; a summary line on
// stderr. Errors: one line "sambay-client: error: CODE: message" on stderr. Exit codes: 0 OK,
// 1 other errors, 2 bad flags, 3 INVALID_ARGUMENT, 4 RESOURCE_EXHAUSTED, 5 UNAVAILABLE (and a
// health check that is not SERVING), 6 DEADLINE_EXCEEDED, 7 CANCELLED, 130 interrupted by SIGINT
// (Ctrl-C cancels the call), 143 by SIGTERM.
//
// Threads: main does the call; one signal thread turns SIGINT/SIGTERM into TryCancel.
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>
#include <signal.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/client_flags.h"
#include "common/flags.h"
#include "common/grpc_status.h"
#include "common/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "sambay/v1/generate.grpc.pb.h"

namespace sambay {
namespace {

constexpr const char* kTool = "sambay-client";
constexpr const char* kReadinessService = "sambay.v1.Generation";

// Exit codes (documented in docs/client.md).
constexpr int kExitOther = 1;
constexpr int kExitFlags = 2;
constexpr int kExitSigint = 130;
constexpr int kExitSigterm = 143;

int ExitCodeFor(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return 0;
    case grpc::StatusCode::INVALID_ARGUMENT:
      return 3;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return 4;
    case grpc::StatusCode::UNAVAILABLE:
      return 5;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return 6;
    case grpc::StatusCode::CANCELLED:
      return 7;
    default:
      return kExitOther;
  }
}

const char* FinishName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_STOP:
      return "STOP";
    case v1::FINISH_REASON_LENGTH:
      return "LENGTH";
    case v1::FINISH_REASON_ABORT:
      return "ABORT";
    case v1::FINISH_REASON_ERROR:
      return "ERROR";
    default:
      return "UNSPECIFIED";
  }
}

// One line on stderr (newlines in the message become spaces).
void PrintError(const std::string& message) {
  std::fprintf(stderr, "%s: error: %s\n", kTool,
               absl::StrReplaceAll(message, {{"\n", " "}, {"\r", " "}}).c_str());
}

int ReportRpcError(const grpc::Status& s) {
  PrintError(absl::StrCat(GrpcCodeName(s.error_code()), ": ", s.error_message()));
  return ExitCodeFor(s.error_code());
}

// Turns SIGINT / SIGTERM into TryCancel of the current call. The signals are blocked in every
// thread (Start runs before gRPC makes its threads) and taken by one sigtimedwait loop.
// Thread-safety: mu_ guards the watched context (so it is not cancelled after Watch replaced
// it); the flags are atomics.
class SignalCanceller {
 public:
  void Start() {
    sigset_t set = Set();
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    thread_ = std::thread([this] { Loop(); });
  }
  ~SignalCanceller() {
    done_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  // The context to cancel (nullptr = none). If a signal already came, cancels it at once.
  void Watch(grpc::ClientContext* ctx) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    ctx_ = ctx;
    if (ctx_ != nullptr && signal_.load() != 0) ctx_->TryCancel();
  }
  int signal() const { return signal_.load(); }
  int ExitCode() const { return signal_.load() == SIGTERM ? kExitSigterm : kExitSigint; }

 private:
  static sigset_t Set() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    return set;
  }
  void Loop() ABSL_LOCKS_EXCLUDED(mu_) {
    const sigset_t set = Set();
    const timespec tick{0, 50 * 1000 * 1000};
    while (!done_.load()) {
      const int sig = sigtimedwait(&set, nullptr, &tick);
      if (sig != SIGINT && sig != SIGTERM) continue;
      int expected = 0;
      signal_.compare_exchange_strong(expected, sig);
      MutexLock lock(&mu_);
      if (ctx_ != nullptr) ctx_->TryCancel();
    }
  }

  std::thread thread_;
  std::atomic<bool> done_{false};
  std::atomic<int> signal_{0};
  Mutex mu_;
  grpc::ClientContext* ctx_ ABSL_GUARDED_BY(mu_) = nullptr;
};

struct Flags {
  ClientFlags client;
  std::string prompt;
  std::string chat;
  std::string system;
  std::string ids;
  int64_t max_new_tokens = 0;
  double temperature = 0;
  int64_t top_k = 0;
  double top_p = 1;
  double min_p = 0;
  double repetition_penalty = 1;
  double presence_penalty = 0;
  double frequency_penalty = 0;
  std::string seed;
  std::string stop;
  std::string stop_ids;
  bool ignore_eos = false;
  int64_t logprobs = 0;
  std::string request_id;
  bool json = false;
  bool print_ids = false;
  bool quiet = false;
  bool health = false;
  double wait_ready = 0;
  bool info = false;
};

void Register(FlagSet& fs, Flags& f) {
  RegisterClientFlags(fs, &f.client, "Router address host:port (sambay.v1.Generation).",
                      "Deadline of the call in seconds; 0 = none.");
  fs.AddString("prompt", &f.prompt, "Prompt text (tokenized by the server, no special tokens).");
  fs.AddString("chat", &f.chat, "A user message, formatted with the model's chat template.");
  fs.AddString("system", &f.system, "With --chat: a system message before the user message.");
  fs.AddString("ids", &f.ids, "Prompt token ids, comma separated (e.g. 3,14,15).");
  fs.AddInt("max-new-tokens", &f.max_new_tokens,
            "Largest number of new tokens; 0 = the router's default.");
  fs.AddDouble("temperature", &f.temperature, "Sampling temperature; 0 = greedy.");
  fs.AddInt("top-k", &f.top_k, "Keep the k most likely tokens; 0 = off.");
  fs.AddDouble("top-p", &f.top_p, "Nucleus sampling in (0, 1]; sent only when given.");
  fs.AddDouble("min-p", &f.min_p, "Min-p filter in [0, 1]; 0 = off.");
  fs.AddDouble("repetition-penalty", &f.repetition_penalty,
               "Repetition penalty (> 0); sent only when given.");
  fs.AddDouble("presence-penalty", &f.presence_penalty, "Presence penalty; 0 = off.");
  fs.AddDouble("frequency-penalty", &f.frequency_penalty,
               "Frequency penalty, per occurrence of a token; 0 = off.");
  fs.AddString("seed", &f.seed, "Sampler seed (unsigned 64-bit); empty = the server picks one.");
  fs.AddString(
      "stop", &f.stop,
      "Stop string: one string, or a JSON array of strings (e.g. '[\"\\n\\n\",\"END\"]').");
  fs.AddString("stop-ids", &f.stop_ids, "Stop after any of these token ids (comma separated).");
  fs.AddBool("ignore-eos", &f.ignore_eos, "Do not stop at the model's EOS ids.");
  fs.AddInt("logprobs", &f.logprobs,
            "When given: return each token's logprob and the N most likely alternatives "
            "(0..20); shown with --json.");
  fs.AddString("request-id", &f.request_id, "Request id (empty: the router picks one).");
  fs.AddBool("json", &f.json, "One JSON object per response message on stdout.");
  fs.AddBool("print-ids", &f.print_ids,
             "Print the generated ids, space-separated, on one line of stdout instead of text.");
  fs.AddBool("quiet", &f.quiet, "No summary line on stderr.");
  fs.AddBool("health", &f.health,
             "Check readiness (grpc.health.v1, service sambay.v1.Generation): exit 0 when "
             "SERVING, 5 otherwise.");
  fs.AddDouble("wait-ready", &f.wait_ready,
               "With --health: poll up to this many seconds for SERVING; 0 = check once.");
  fs.AddBool("info", &f.info, "Print the served model's GetModelInfo as JSON.");
}

absl::StatusOr<std::vector<uint32_t>> ParseIdList(const std::string& text,
                                                  const std::string& flag) {
  std::vector<uint32_t> ids;
  for (absl::string_view part :
       absl::StrSplit(text, absl::ByAnyChar(", \t\r\n"), absl::SkipEmpty())) {
    uint32_t v;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": \"", part, "\" is not a token id (an unsigned integer)"));
    }
    ids.push_back(v);
  }
  return ids;
}

absl::StatusOr<std::vector<std::string>> ParseStop(const std::string& text) {
  if (text.empty()) return std::vector<std::string>{};
  if (text.front() != '[') return std::vector<std::string>{text};
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_array()) {
    return absl::InvalidArgumentError("--stop: starts with '[' but is not a JSON array");
  }
  std::vector<std::string> out;
  for (const auto& e : j) {
    if (!e.is_string()) {
      return absl::InvalidArgumentError("--stop: the JSON array must hold strings only");
    }
    out.push_back(e.get<std::string>());
  }
  return out;
}

// The request from the flags. `set` says which flags were given (FlagSet::Effective "set_by").
absl::StatusOr<v1::GenerateRequest> BuildRequest(const Flags& f, const nlohmann::json& set) {
  auto given = [&](const char* name) { return set.contains(name); };
  v1::GenerateRequest req;
  req.set_request_id(f.request_id);
  const int prompts = given("prompt") + given("chat") + given("ids");
  if (prompts != 1) {
    return absl::InvalidArgumentError("exactly one of --prompt, --chat or --ids is required");
  }
  if (given("system") && !given("chat")) {
    return absl::InvalidArgumentError("--system: only with --chat");
  }
  if (given("prompt")) {
    req.set_text(f.prompt);
  } else if (given("chat")) {
    if (given("system")) {
      auto* m = req.mutable_chat()->add_messages();
      m->set_role("system");
      m->set_content(f.system);
    }
    auto* m = req.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content(f.chat);
  } else {
    std::vector<uint32_t> ids;
    auto parsed = ParseIdList(f.ids, "--ids");
    if (!parsed.ok()) return parsed.status();
    if (parsed->empty()) return absl::InvalidArgumentError("--ids: at least one token id");
    req.mutable_token_ids()->mutable_ids()->Assign(parsed->begin(), parsed->end());
  }
  // Sampling: values are passed on as given; the router validates ranges and names the field.
  v1::SamplingParams* s = req.mutable_sampling();
  s->set_temperature(static_cast<float>(f.temperature));
  if (f.top_k < std::numeric_limits<int32_t>::min() ||
      f.top_k > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("--top-k: out of the int32 range");
  }
  s->set_top_k(static_cast<int32_t>(f.top_k));
  if (given("top-p")) s->set_top_p(static_cast<float>(f.top_p));
  s->set_min_p(static_cast<float>(f.min_p));
  if (given("repetition-penalty")) {
    s->set_repetition_penalty(static_cast<float>(f.repetition_penalty));
  }
  s->set_presence_penalty(static_cast<float>(f.presence_penalty));
  s->set_frequency_penalty(static_cast<float>(f.frequency_penalty));
  if (!f.seed.empty()) {
    uint64_t seed;
    if (!absl::SimpleAtoi(f.seed, &seed)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--seed: \"", f.seed, "\" is not an unsigned 64-bit integer"));
    }
    s->set_seed(seed);
  }
  v1::StoppingCriteria* st = req.mutable_stopping();
  if (f.max_new_tokens < 0 || f.max_new_tokens > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError("--max-new-tokens: must be >= 0");
  }
  st->set_max_new_tokens(static_cast<uint32_t>(f.max_new_tokens));
  auto stop_ids = ParseIdList(f.stop_ids, "--stop-ids");
  if (!stop_ids.ok()) return stop_ids.status();
  st->mutable_stop_token_ids()->Assign(stop_ids->begin(), stop_ids->end());
  auto stops = ParseStop(f.stop);
  if (!stops.ok()) return stops.status();
  for (std::string& x : *stops) st->add_stop_strings(std::move(x));
  st->set_ignore_eos(f.ignore_eos);
  if (given("logprobs")) {
    if (f.logprobs < 0 || f.logprobs > std::numeric_limits<uint32_t>::max()) {
      return absl::InvalidArgumentError("--logprobs: must be >= 0");
    }
    req.set_return_logprobs(true);
    req.set_top_logprobs(static_cast<uint32_t>(f.logprobs));
  }
  return req;
}

nlohmann::json LogprobJson(const v1::TokenLogprob& t) {
  return {{"token_id", t.token_id()}, {"logprob", t.logprob()}};
}

nlohmann::json UsageJson(const v1::Usage& u) {
  nlohmann::json workers = nlohmann::json::array();
  for (const std::string& w : u.workers()) workers.push_back(w);
  return {{"prompt_tokens", u.prompt_tokens()},
          {"completion_tokens", u.completion_tokens()},
          {"queue_seconds", u.queue_seconds()},
          {"prefill_seconds", u.prefill_seconds()},
          {"transfer_seconds", u.transfer_seconds()},
          {"transfer_bytes", u.transfer_bytes()},
          {"time_to_first_token_seconds", u.time_to_first_token_seconds()},
          {"decode_seconds", u.decode_seconds()},
          {"workers", workers},
          {"migrations", u.migrations()}};
}

nlohmann::json MessageJson(const v1::GenerateResponse& m) {
  nlohmann::json j;
  j["request_id"] = m.request_id();
  j["token_ids"] = std::vector<uint32_t>(m.token_ids().begin(), m.token_ids().end());
  j["text"] = m.text();
  if (m.logprobs_size() > 0) {
    nlohmann::json lps = nlohmann::json::array();
    for (const v1::PositionLogprobs& p : m.logprobs()) {
      nlohmann::json top = nlohmann::json::array();
      for (const v1::TokenLogprob& t : p.top()) top.push_back(LogprobJson(t));
      nlohmann::json e = LogprobJson(p.token());
      e["top"] = std::move(top);
      lps.push_back(std::move(e));
    }
    j["logprobs"] = std::move(lps);
  }
  if (m.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    j["finish_reason"] = FinishName(m.finish_reason());
  }
  if (m.has_usage()) j["usage"] = UsageJson(m.usage());
  return j;
}

// JSON text with invalid UTF-8 replaced (U+FFFD) instead of throwing.
std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void WriteOut(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

std::string SummaryLine(const std::string& request_id, v1::FinishReason finish,
                        const v1::Usage* usage, double wall) {
  std::string line = absl::StrCat(kTool, ": request ", request_id.empty() ? "-" : request_id,
                                  " finish ", FinishName(finish));
  if (usage != nullptr) {
    const v1::Usage& u = *usage;
    // Decode rate: tokens after the first over the seconds from the first to the last.
    const double rate = (u.decode_seconds() > 0 && u.completion_tokens() > 1)
                            ? (u.completion_tokens() - 1) / u.decode_seconds()
                            : 0.0;
    absl::StrAppend(&line, " prompt_tokens ", u.prompt_tokens(), " completion_tokens ",
                    u.completion_tokens());
    char buf[256];
    std::snprintf(buf, sizeof(buf),
                  " ttft %.3f s %.1f tokens/s queue %.3f s prefill %.3f s transfer %.3f s "
                  "(%llu bytes)",
                  u.time_to_first_token_seconds(), rate, u.queue_seconds(), u.prefill_seconds(),
                  u.transfer_seconds(), static_cast<unsigned long long>(u.transfer_bytes()));
    absl::StrAppend(&line, buf, " workers ",
                    u.workers_size() ? absl::StrJoin(u.workers(), ",") : std::string("-"));
    if (u.migrations() > 0) absl::StrAppend(&line, " migrations ", u.migrations());
  } else {
    absl::StrAppend(&line, " (no usage)");
  }
  char wbuf[64];
  std::snprintf(wbuf, sizeof(wbuf), " wall %.3f s", wall);
  absl::StrAppend(&line, wbuf);
  return line;
}

int RunGenerate(const Flags& f, const v1::GenerateRequest& req, v1::Generation::Stub& stub,
                SignalCanceller& signals) {
  grpc::ClientContext ctx;
  PrepareClientContext(f.client, &ctx);
  signals.Watch(&ctx);
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub.Generate(&ctx, req);
  v1::GenerateResponse msg;
  std::string request_id = req.request_id();
  std::vector<uint32_t> ids;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  std::optional<v1::Usage> usage;
  bool wrote_text = false;
  while (reader->Read(&msg)) {
    if (!msg.request_id().empty()) request_id = msg.request_id();
    ids.insert(ids.end(), msg.token_ids().begin(), msg.token_ids().end());
    if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) finish = msg.finish_reason();
    if (msg.has_usage()) usage = msg.usage();
    if (f.json) {
      WriteOut(Dump(MessageJson(msg)) + "\n");
    } else if (!f.print_ids && !msg.text().empty()) {
      WriteOut(msg.text());
      wrote_text = true;
    }
  }
  const grpc::Status status = reader->Finish();
  signals.Watch(nullptr);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!f.json) {
    if (f.print_ids) {
      WriteOut(absl::StrJoin(ids, " ") + "\n");
    } else if (wrote_text || status.ok()) {
      WriteOut("\n");
    }
  }
  if (signals.signal() != 0) {
    PrintError(absl::StrCat("CANCELLED: interrupted by ",
                            signals.signal() == SIGTERM ? "SIGTERM" : "SIGINT"));
    return signals.ExitCode();
  }
  if (!status.ok()) {
    if (f.json) {
      WriteOut(Dump({{"error",
                      {{"code", GrpcCodeName(status.error_code())},
                       {"code_number", static_cast<int>(status.error_code())},
                       {"message", status.error_message()}}}}) +
               "\n");
    }
    return ReportRpcError(status);
  }
  if (finish == v1::FINISH_REASON_UNSPECIFIED) {
    PrintError("INTERNAL: the stream ended without a finish_reason");
    return kExitOther;
  }
  if (!f.quiet) {
    std::fprintf(stderr, "%s\n",
                 SummaryLine(request_id, finish, usage ? &*usage : nullptr, wall).c_str());
  }
  return 0;
}

int RunHealth(const Flags& f, const std::shared_ptr<grpc::Channel>& channel,
              SignalCanceller& signals) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  const auto give_up = std::chrono::steady_clock::now() +
                       std::chrono::microseconds(static_cast<int64_t>(f.wait_ready * 1e6));
  grpc::Status last;
  std::string state = "UNKNOWN";
  while (true) {
    grpc::ClientContext ctx;
    PrepareClientContext(f.client, &ctx, 5.0);
    signals.Watch(&ctx);
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(kReadinessService);
    grpc::health::v1::HealthCheckResponse resp;
    last = stub->Check(&ctx, req, &resp);
    signals.Watch(nullptr);
    if (signals.signal() != 0) return signals.ExitCode();
    if (last.ok()) {
      state = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status());
      if (resp.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
        if (!f.quiet) std::printf("%s\n", state.c_str());
        return 0;
      }
    }
    if (std::chrono::steady_clock::now() >= give_up) break;
    for (int i = 0; i < 4 && signals.signal() == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (signals.signal() != 0) return signals.ExitCode();
  }
  if (!last.ok()) return ReportRpcError(last);
  PrintError(
      absl::StrCat("UNAVAILABLE: ", kReadinessService, " is ", state, " at ", f.client.address));
  return 5;
}

int RunInfo(const Flags& f, v1::Generation::Stub& stub, SignalCanceller& signals) {
  grpc::ClientContext ctx;
  PrepareClientContext(f.client, &ctx, 10.0);
  signals.Watch(&ctx);
  v1::ModelInfo info;
  const grpc::Status s = stub.GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
  signals.Watch(nullptr);
  if (signals.signal() != 0) return signals.ExitCode();
  if (!s.ok()) return ReportRpcError(s);
  nlohmann::json j = {{"model_type", info.model_type()},
                      {"fingerprint", info.fingerprint()},
                      {"vocab_size", info.vocab_size()},
                      {"max_context_tokens", info.max_context_tokens()},
                      {"eos_token_ids", std::vector<uint32_t>(info.eos_token_ids().begin(),
                                                              info.eos_token_ids().end())},
                      {"tokenizer", info.tokenizer()},
                      {"max_new_tokens_limit", info.max_new_tokens_limit()}};
  WriteOut(Dump(j) + "\n");
  return 0;
}

int Run(int argc, char** argv) {
  Flags f;
  FlagSet fs(kTool, "SAMBAY_");
  Register(fs, f);
  if (absl::Status s = fs.Parse(argc, argv); !s.ok()) {
    if (s.message() == FlagSet::kHelpRequested) {
      std::printf(
          "%s\nStreams one generation from a sambay-serve router (see docs/client.md).\n"
          "exit codes: 0 ok, 1 other error, 2 bad flags, 3 INVALID_ARGUMENT, "
          "4 RESOURCE_EXHAUSTED, 5 UNAVAILABLE, 6 DEADLINE_EXCEEDED, 7 CANCELLED, "
          "130 SIGINT, 143 SIGTERM\n",
          fs.Usage().c_str());
      return 0;
    }
    PrintError(std::string(s.message()));
    return kExitFlags;
  }
  const nlohmann::json set = fs.Effective()["set_by"];
  if (absl::Status s = ApplySharedClientEnv(fs, &f.client); !s.ok()) {
    PrintError(std::string(s.message()));
    return kExitFlags;
  }
  if (absl::Status s = CheckClientFlags(f.client); !s.ok()) {
    PrintError(std::string(s.message()));
    return kExitFlags;
  }
  if (f.wait_ready < 0) {
    PrintError("--wait-ready: must be >= 0");
    return kExitFlags;
  }
  if (f.health + f.info > 1) {
    PrintError("--health and --info: give one of them");
    return kExitFlags;
  }
  if (f.json && f.print_ids) {
    PrintError("--json and --print-ids: give one of them (--json carries the ids)");
    return kExitFlags;
  }
  std::optional<v1::GenerateRequest> req;
  if (!f.health && !f.info) {
    absl::StatusOr<v1::GenerateRequest> r = BuildRequest(f, set);
    if (!r.ok()) {
      PrintError(std::string(r.status().message()));
      return kExitFlags;
    }
    req = std::move(*r);
  }

  SignalCanceller signals;
  signals.Start();  // before gRPC starts threads, so they inherit the blocked signals
  std::shared_ptr<grpc::Channel> channel = MakeClientChannel(f.client);
  if (f.health) return RunHealth(f, channel, signals);
  auto stub = v1::Generation::NewStub(channel);
  if (f.info) return RunInfo(f, *stub, signals);
  return RunGenerate(f, *req, *stub, signals);
}

}  // namespace
}  // namespace sambay

int main(int argc, char** argv) { return sambay::Run(argc, argv); }
