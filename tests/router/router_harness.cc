#include "tests/router/router_harness.h"

#include <arpa/inet.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_channel.h"
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

// ---- Router ---------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Router>> Router::Start(const std::vector<std::string>& args,
                                                      const std::string& dir,
                                                      const std::string& name, int workers_up) {
  // usage.workers on: the tests check where each request ran.
  std::vector<std::string> all = {
      "--model", TinyModelDir(), "--host", "127.0.0.1",       "--port", "0", "--metrics-port",
      "0",       "--log-level",  "info",   "--usage-workers", "true"};
  all.insert(all.end(), args.begin(), args.end());
  std::unique_ptr<Router> r(new Router());
  auto server =
      ServerProcess::Start(BinDir() + "/sambay-router", all, dir, name, absl::Seconds(30));
  if (!server.ok()) return server.status();
  r->server_ = std::move(*server);
  RpcLimits limits;
  auto channel = MakeChannel(r->address(), limits);
  r->stub_ = v1::Generation::NewStub(channel);
  r->health_ = grpc::health::v1::Health::NewStub(channel);
  if (workers_up >= 0) {
    const double up = r->WaitMetricSum(
        "sambay_router_worker_up", {}, [&](double v) { return v == workers_up; },
        absl::Seconds(20));
    if (up != workers_up) {
      return absl::DeadlineExceededError(absl::StrCat(name, ": sambay_router_worker_up sums to ",
                                                      up, ", not ", workers_up,
                                                      " after 20 s; logs:\n", r->Logs()));
    }
  }
  return r;
}

absl::StatusOr<HealthCheckResponse::ServingStatus> Router::Health(const std::string& service,
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

absl::Status Router::WaitReadiness(HealthCheckResponse::ServingStatus want,
                                   absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    auto h = Health("sambay.v1.Generation");
    if (h.ok() && *h == want) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "readiness not ", HealthCheckResponse::ServingStatus_Name(want), " after ",
          absl::FormatDuration(timeout), " (last: ",
          h.ok() ? HealthCheckResponse::ServingStatus_Name(*h) : std::string(h.status().message()),
          ")"));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

absl::StatusOr<std::string> Router::Metrics() { return ScrapeMetrics(metrics_port()); }

double Router::MetricSum(const std::string& name,
                         const std::map<std::string, std::string>& labels) {
  auto text = Metrics();
  if (!text.ok()) return -1;
  return ::sambay::testing::MetricSum(*text, name, labels);
}

std::optional<double> Router::Metric(const std::string& name,
                                     const std::map<std::string, std::string>& labels) {
  auto text = Metrics();
  if (!text.ok()) return std::nullopt;
  return MetricValue(*text, name, labels);
}

double Router::WaitMetricSum(const std::string& name,
                             const std::map<std::string, std::string>& labels,
                             const std::function<bool(double)>& pred, absl::Duration timeout) {
  double v = MetricSum(name, labels);
  WaitFor(
      [&] {
        v = MetricSum(name, labels);
        return pred(v);
      },
      timeout);
  return v;
}

// ---- Cluster --------------------------------------------------------------------------------

absl::Status Cluster::Start(int prefill, int decode, int both,
                            const std::vector<std::string>& router_args,
                            const std::vector<std::string>& worker_args) {
  if (scratch_.path().empty()) return absl::InternalError("no scratch directory");
  struct Kind {
    int n;
    const char* role;
    std::vector<std::unique_ptr<Worker>>* into;
  };
  for (const Kind& k : {Kind{prefill, "prefill", &prefill_}, Kind{decode, "decode", &decode_},
                        Kind{both, "both", &both_}}) {
    for (int i = 0; i < k.n; ++i) {
      auto w = Worker::Start(k.role, worker_args, dir(), absl::StrCat(k.role, i));
      if (!w.ok()) return w.status();
      k.into->push_back(*std::move(w));
    }
  }
  auto list = [](const std::vector<std::unique_ptr<Worker>>& ws) {
    std::string s;
    for (const auto& w : ws) absl::StrAppend(&s, s.empty() ? "" : ",", w->address());
    return s;
  };
  std::vector<std::string> args;
  if (!prefill_.empty()) args.insert(args.end(), {"--prefill-workers", list(prefill_)});
  if (!decode_.empty()) args.insert(args.end(), {"--decode-workers", list(decode_)});
  if (!both_.empty()) args.insert(args.end(), {"--workers", list(both_)});
  args.insert(args.end(), router_args.begin(), router_args.end());
  return StartRouter(args);
}

absl::Status Cluster::StartRouter(const std::vector<std::string>& args, int workers_up) {
  if (router_ != nullptr) router_->process().Kill();
  router_.reset();
  if (workers_up < 0) {
    workers_up = static_cast<int>(prefill_.size() + decode_.size() + both_.size());
  }
  auto r = Router::Start(args, dir(), "router", workers_up);
  if (!r.ok()) return r.status();
  router_ = *std::move(r);
  return absl::OkStatus();
}

std::vector<Worker*> Cluster::LiveWorkers() {
  std::vector<Worker*> out;
  for (auto* ws : {&prefill_, &decode_, &both_}) {
    for (auto& w : *ws) {
      if (w != nullptr && w->process().Running()) out.push_back(w.get());
    }
  }
  return out;
}

std::string Cluster::Logs() {
  std::string s;
  if (router_ != nullptr) absl::StrAppend(&s, "--- router log:\n", Tail(router_->Logs(), 6000));
  for (auto* ws : {&prefill_, &decode_, &both_}) {
    for (auto& w : *ws) {
      if (w != nullptr) absl::StrAppend(&s, "\n--- ", w->name(), " log:\n", Tail(w->Logs(), 3000));
    }
  }
  return s;
}

absl::Status Cluster::WaitWorkersIdle(absl::Duration timeout) {
  for (Worker* w : LiveWorkers()) {
    absl::Status s = WaitIdle(*w, timeout);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// ---- Streams --------------------------------------------------------------------------------

std::string StreamResult::Describe() const {
  return absl::StrCat("status ", StatusString(status), "; request_id \"", request_id, "\"; ",
                      messages, " messages; ", ids.size(), " ids [", JoinIds(ids, " "),
                      "]; finish ", v1::FinishReason_Name(finish), "; usage {",
                      usage.ShortDebugString(), "}",
                      protocol_error.empty() ? "" : "; PROTOCOL ERROR: " + protocol_error);
}

Stream::Stream(v1::Generation::Stub& stub, v1::GenerateRequest request, absl::Duration timeout,
               std::vector<std::pair<std::string, std::string>> metadata)
    : stub_(stub), request_(std::move(request)) {
  ctx_.set_deadline(DeadlineIn(timeout));
  for (const auto& [k, v] : metadata) ctx_.AddMetadata(k, v);
  thread_ = std::thread([this] { Run(); });
}

Stream::~Stream() {
  if (thread_.joinable()) {
    ctx_.TryCancel();
    thread_.join();
  }
}

void Stream::Run() {
  StreamResult& r = result_;
  r.started = absl::Now();
  auto reader = stub_.Generate(&ctx_, request_);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    ++r.messages;
    if (r.messages == 1) {
      r.request_id = msg.request_id();
      if (r.request_id.empty()) r.protocol_error += "first message without request_id; ";
    }
    if (r.got_final) r.protocol_error += "a message after the one with finish_reason; ";
    if (msg.token_ids_size() > 0 && r.first_token_at == absl::InfinitePast()) {
      r.first_token_at = absl::Now();
    }
    r.ids.insert(r.ids.end(), msg.token_ids().begin(), msg.token_ids().end());
    r.text += msg.text();
    tokens_.fetch_add(msg.token_ids_size());
    if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      r.got_final = true;
      r.finish = msg.finish_reason();
      r.usage = msg.usage();
    } else if (msg.has_usage()) {
      r.protocol_error += "usage on a message without finish_reason; ";
    }
  }
  r.status = reader->Finish();
  r.ended = absl::Now();
  if (r.status.ok() && !r.got_final) r.protocol_error += "stream ended OK without finish_reason; ";
  done_.store(true);
}

const StreamResult& Stream::Wait() {
  if (thread_.joinable()) thread_.join();
  return result_;
}

StreamResult Generate(v1::Generation::Stub& stub, const v1::GenerateRequest& request,
                      absl::Duration timeout,
                      std::vector<std::pair<std::string, std::string>> metadata) {
  Stream s(stub, request, timeout, std::move(metadata));
  return s.Wait();
}

std::vector<StreamResult> GenerateAll(v1::Generation::Stub& stub,
                                      const std::vector<v1::GenerateRequest>& requests,
                                      absl::Duration timeout) {
  std::vector<std::unique_ptr<Stream>> streams;
  for (const auto& r : requests) streams.push_back(std::make_unique<Stream>(stub, r, timeout));
  std::vector<StreamResult> out;
  for (auto& s : streams) out.push_back(s->Wait());
  return out;
}

v1::GenerateRequest IdsRequest(const std::vector<uint32_t>& prompt, const Sampling& sampling,
                               uint32_t max_new_tokens, bool ignore_eos) {
  v1::GenerateRequest r;
  for (uint32_t id : prompt) r.mutable_token_ids()->add_ids(id);
  *r.mutable_sampling() = ToProto(sampling);
  r.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  r.mutable_stopping()->set_ignore_eos(ignore_eos);
  return r;
}

v1::GenerateRequest TextRequest(const std::string& text, const Sampling& sampling,
                                uint32_t max_new_tokens, bool ignore_eos) {
  v1::GenerateRequest r;
  r.set_text(text);
  *r.mutable_sampling() = ToProto(sampling);
  r.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  r.mutable_stopping()->set_ignore_eos(ignore_eos);
  return r;
}

namespace {

Sampling FromProto(const v1::SamplingParams& p) {
  Sampling s;
  s.temperature = p.temperature();
  s.top_k = p.top_k();
  s.top_p = p.has_top_p() ? p.top_p() : 1.0f;
  s.min_p = p.min_p();
  s.repetition_penalty = p.has_repetition_penalty() ? p.repetition_penalty() : 1.0f;
  s.presence_penalty = p.presence_penalty();
  s.frequency_penalty = p.frequency_penalty();
  s.seed = p.seed();
  return s;
}

}  // namespace

absl::StatusOr<std::vector<uint32_t>> ReferenceIds(const v1::GenerateRequest& request,
                                                   const std::string& scratch_dir) {
  if (request.prompt_case() != v1::GenerateRequest::kTokenIds) {
    return absl::InvalidArgumentError("ReferenceIds: not a token_ids request");
  }
  std::vector<uint32_t> prompt(request.token_ids().ids().begin(), request.token_ids().ids().end());
  std::vector<uint32_t> stops(request.stopping().stop_token_ids().begin(),
                              request.stopping().stop_token_ids().end());
  if (!request.stopping().ignore_eos())
    stops.insert(stops.end(), kTinyEosIds.begin(), kTinyEosIds.end());
  return ReferenceGenerate(prompt, FromProto(request.sampling()),
                           request.stopping().max_new_tokens(), stops, scratch_dir);
}

absl::StatusOr<std::string> ReferenceText(const v1::GenerateRequest& request,
                                          const std::string& scratch_dir) {
  if (request.prompt_case() != v1::GenerateRequest::kText) {
    return absl::InvalidArgumentError("ReferenceText: not a text request");
  }
  const Sampling s = FromProto(request.sampling());
  std::vector<std::string> args = {"generate",
                                   "--model",
                                   TinyModelDir(),
                                   "--prompt",
                                   request.text(),
                                   "--max-new-tokens",
                                   absl::StrCat(request.stopping().max_new_tokens()),
                                   "--threads",
                                   "1"};
  for (std::string& a : SambayRunSamplingArgs(s)) args.push_back(std::move(a));
  if (request.stopping().ignore_eos()) args.push_back("--ignore-eos");
  auto out = RunToCompletion(BinDir() + "/sambay-run", args, scratch_dir);
  if (!out.ok()) return out.status();
  std::string text = *std::move(out);
  if (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

std::vector<Reference> References(const std::vector<v1::GenerateRequest>& requests,
                                  const std::string& scratch_dir) {
  std::vector<Reference> out(requests.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next.fetch_add(1); i < requests.size(); i = next.fetch_add(1)) {
      if (requests[i].prompt_case() == v1::GenerateRequest::kText) {
        auto t = ReferenceText(requests[i], scratch_dir);
        out[i].status = t.status();
        if (t.ok()) out[i].text = *t;
      } else {
        auto ids = ReferenceIds(requests[i], scratch_dir);
        out[i].status = ids.status();
        if (ids.ok()) out[i].ids = *ids;
      }
    }
  };
  std::thread a(work), b(work);
  a.join();
  b.join();
  return out;
}

bool WaitFor(const std::function<bool()>& pred, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (pred()) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

absl::StatusOr<int> FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return absl::InternalError("bind failed");
  }
  close(fd);
  return ntohs(addr.sin_port);
}

absl::StatusOr<Worker*> BusiestWorker(std::vector<std::unique_ptr<Worker>>& workers,
                                      uint32_t* running) {
  Worker* busiest = nullptr;
  *running = 0;
  for (auto& w : workers) {
    auto load = w->GetLoad();
    if (!load.ok()) return load.status();
    if (busiest == nullptr || load->running() > *running) {
      busiest = w.get();
      *running = load->running();
    }
  }
  if (busiest == nullptr) return absl::NotFoundError("no workers");
  return busiest;
}

std::string RunNodeScript(const std::string& script, const std::vector<std::string>& args) {
  if (std::system("command -v node >/dev/null 2>&1") != 0) return "";
  std::string cmd = absl::StrCat("node ", SAMBAY_SOURCE_DIR, "/tests/router/", script);
  for (const std::string& a : args) absl::StrAppend(&cmd, " ", a);
  absl::StrAppend(&cmd, " 2>&1");
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
    pclose(p);
  }
  return out;
}

std::unique_ptr<Tokenizer> TinyTokenizer() {
  auto tok = LoadTokenizer(TinyModelDir());
  if (!tok.ok()) {
    ADD_FAILURE() << "the tiny model's tokenizer: " << tok.status();
    return nullptr;
  }
  return *std::move(tok);
}

}  // namespace sambay::testing
