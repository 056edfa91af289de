// sambay-router: the public entry point of a sambay-serve cluster. Serves sambay.v1.Generation,
// places each request's prefill and decode on workers, hands the state between them, fails over.
// See docs/router.md.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/flags.h"
#include "common/grpc_channel.h"
#include "common/health_service.h"
#include "common/log.h"
#include "common/server_util.h"
#include "common/tls.h"
#include "engine/config.h"
#include "router/api_keys.h"
#include "router/http_api.h"
#include "router/http_server.h"
#include "router/metrics.h"
#include "router/placement.h"
#include "router/registry.h"
#include "router/service.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

#ifndef SAMBAY_VERSION
#define SAMBAY_VERSION "dev"
#endif

namespace sambay {
namespace {

constexpr const char* kReadinessService = "sambay.v1.Generation";

struct Flags {
  ServerFlags server;
  std::string model;
  std::string prefill_workers, decode_workers, workers;
  std::string prefill_dns, decode_dns, workers_dns;
  double dns_refresh_seconds = 10;
  double health_interval_seconds = 1;
  double probe_timeout_seconds = 1;
  int64_t fail_threshold = 1;
  double max_backoff_seconds = 2;
  std::string fingerprint;
  std::string placement = "least-loaded";
  int64_t max_concurrent = 256;
  int64_t max_queue = 1024;
  int64_t io_threads = 0;
  int64_t migration_limit = 3;
  int64_t prefill_retries = 2;
  int64_t max_context = 0;
  int64_t default_max_new_tokens = 256;
  int64_t max_new_tokens_limit = 32768;
  int64_t max_request_bytes = 4 << 20;
  double stall_timeout_seconds = 5;
  double write_timeout_seconds = 30;
  int64_t max_pending_output_bytes = 1 << 20;
  bool usage_workers = false;
  double lease_renew_seconds = 5;
  int64_t http_port = 0;
  int64_t http_threads = 1;
  std::string served_model_name;
  std::string tls_cert, tls_key, tls_client_ca;
  std::string api_keys_file;
  bool reflection = true;
};

// Where the workers are and how they are probed, checked and chosen.
void RegisterWorkerFlags(FlagSet& fs, Flags& f) {
  fs.AddString("prefill-workers", &f.prefill_workers, "Comma-separated host:port prefill workers.");
  fs.AddString("decode-workers", &f.decode_workers, "Comma-separated host:port decode workers.");
  fs.AddString("workers", &f.workers, "Comma-separated workers whose roles come from GetInfo.");
  fs.AddString("prefill-dns", &f.prefill_dns,
               "Comma-separated name:port resolved periodically to prefill workers (a headless "
               "Service).");
  fs.AddString("decode-dns", &f.decode_dns, "As --prefill-dns, for decode workers.");
  fs.AddString("workers-dns", &f.workers_dns, "As --prefill-dns, roles from GetInfo.");
  fs.AddDouble("dns-refresh-seconds", &f.dns_refresh_seconds, "How often DNS names are resolved.");
  fs.AddDouble("health-interval-seconds", &f.health_interval_seconds,
               "How often each healthy worker is probed (GetLoad).");
  fs.AddDouble("probe-timeout-seconds", &f.probe_timeout_seconds, "Deadline of one probe.");
  fs.AddInt("fail-threshold", &f.fail_threshold,
            "Failed probes in a row before a worker is taken out.");
  fs.AddDouble("max-backoff-seconds", &f.max_backoff_seconds,
               "Longest wait between probes of a failing worker.");
  fs.AddString("fingerprint", &f.fingerprint,
               "Model fingerprint every worker must serve (empty = the first worker's).");
  fs.AddString("placement", &f.placement, "Placement policy: least-loaded or round-robin.");
}

// Admission, the request flow (retries, migrations, timeouts) and request limits.
void RegisterRequestFlags(FlagSet& fs, Flags& f) {
  fs.AddInt("max-concurrent", &f.max_concurrent, "Most requests served at once.");
  fs.AddInt("max-queue", &f.max_queue,
            "Most requests waiting for a serving slot; beyond it RESOURCE_EXHAUSTED.");
  fs.AddInt("io-threads", &f.io_threads,
            "Threads streaming Generate calls (one completion queue each; 0 = one per core, at "
            "most 8).");
  fs.AddInt("migration-limit", &f.migration_limit,
            "Most times one sequence moves to another decode worker after failures.");
  fs.AddInt("prefill-retries", &f.prefill_retries,
            "Most prefill attempts on other workers after a prefill failure.");
  fs.AddInt("max-context", &f.max_context,
            "Most tokens per sequence; 0 = the model's max_position_embeddings.");
  fs.AddInt("default-max-new-tokens", &f.default_max_new_tokens,
            "max_new_tokens when a request leaves it 0 (capped by the context).");
  fs.AddInt("max-new-tokens-limit", &f.max_new_tokens_limit, "Largest max_new_tokens accepted.");
  fs.AddInt("max-request-bytes", &f.max_request_bytes, "Largest Generate request (bytes).");
  fs.AddDouble("stall-timeout-seconds", &f.stall_timeout_seconds,
               "A decode stream with no token for this long counts as a failed worker: the "
               "sequence migrates and the worker is taken out until a probe succeeds.");
  fs.AddDouble("write-timeout-seconds", &f.write_timeout_seconds,
               "A client that leaves one write unread for this long is cut off.");
  fs.AddInt("max-pending-output-bytes", &f.max_pending_output_bytes,
            "Most output bytes waiting for a slow client; beyond it the client is cut off.");
  fs.AddDouble("lease-renew-seconds", &f.lease_renew_seconds,
               "While a prefill runs, its decode reservation's lease is renewed this often (keep "
               "it well below the workers' --lease-timeout).");
  fs.AddBool("usage-workers", &f.usage_workers,
             "Report the workers' addresses in usage.workers (internal topology: off by default).");
}

// The OpenAI-compatible HTTP API (docs/openai.md).
void RegisterHttpFlags(FlagSet& fs, Flags& f) {
  fs.AddInt("http-port", &f.http_port, "OpenAI-compatible HTTP API port on --host (0 = off).");
  fs.AddInt("http-threads", &f.http_threads, "Threads serving the HTTP API's connections.");
  fs.AddString("served-model-name", &f.served_model_name,
               "Model name of the HTTP API (/v1/models, the requests' \"model\"); empty = the "
               "--model directory's name.");
}

// The public port's TLS and API keys (docs/security.md); the internal mTLS flags are ServerFlags.
void RegisterSecurityFlags(FlagSet& fs, Flags& f) {
  fs.AddString("tls-cert", &f.tls_cert,
               "PEM certificate chain: the public gRPC port speaks TLS (with --tls-key).");
  fs.AddString("tls-key", &f.tls_key, "PEM key of --tls-cert.");
  fs.AddString("tls-client-ca", &f.tls_client_ca,
               "PEM CA bundle: clients of the public port must present a certificate it signed "
               "(mTLS).");
  fs.AddString("api-keys-file", &f.api_keys_file,
               "File of API keys, one per line: KEY [NAME]. Every public method but health then "
               "needs \"authorization: Bearer KEY\"; the name owns the requests. Re-read when it "
               "changes.");
  fs.AddBool("reflection", &f.reflection,
             "Serve gRPC server reflection on the public port (it needs no API key).");
}

void Register(FlagSet& fs, Flags& f) {
  RegisterServerFlags(
      fs, &f.server,
      {.port = 50050,
       .metrics_port = 9300,
       .host_help = "Address the public gRPC service binds to.",
       .port_help = "Public gRPC port (0 = any free port).",
       .metrics_host_help = "Address of the metrics endpoint.",
       .drain_timeout_help = "Seconds SIGTERM waits for running requests before exiting.",
       .keepalive_timeout_help =
           "Seconds without a ping reply before a connection (e.g. to a worker) is dead."});
  fs.AddString("model", &f.model,
               "Model directory: tokenizer, config.json, generation_config.json. Required.");
  RegisterWorkerFlags(fs, f);
  RegisterHttpFlags(fs, f);
  RegisterRequestFlags(fs, f);
  RegisterSecurityFlags(fs, f);
}

std::vector<std::string> List(const std::string& s) {
  return absl::StrSplit(s, ',', absl::SkipWhitespace());
}

absl::Status Check(const Flags& f) {
  if (f.model.empty()) return absl::InvalidArgumentError("--model: required");
  if (f.prefill_workers.empty() && f.decode_workers.empty() && f.workers.empty() &&
      f.prefill_dns.empty() && f.decode_dns.empty() && f.workers_dns.empty()) {
    return absl::InvalidArgumentError(
        "no workers: give --workers, --prefill-workers/--decode-workers or a --*-dns name");
  }
  if (absl::Status s = CheckServerFlags(f.server); !s.ok()) return s;
  if (f.max_concurrent < 1) return absl::InvalidArgumentError("--max-concurrent: must be >= 1");
  if (f.max_queue < 0) return absl::InvalidArgumentError("--max-queue: must be >= 0");
  if (f.io_threads < 0 || f.io_threads > 256) {
    return absl::InvalidArgumentError("--io-threads: must be in [0, 256]");
  }
  if (f.http_port < 0 || f.http_port > 65535) {
    return absl::InvalidArgumentError("--http-port: must be in [0, 65535]");
  }
  if (f.http_threads < 1 || f.http_threads > 64) {
    return absl::InvalidArgumentError("--http-threads: must be in [1, 64]");
  }
  if (f.migration_limit < 0) return absl::InvalidArgumentError("--migration-limit: >= 0");
  if (f.prefill_retries < 0) return absl::InvalidArgumentError("--prefill-retries: >= 0");
  if (f.fail_threshold < 1) return absl::InvalidArgumentError("--fail-threshold: >= 1");
  if (!(f.health_interval_seconds > 0) || !(f.probe_timeout_seconds > 0) ||
      !(f.dns_refresh_seconds > 0) || !(f.max_backoff_seconds > 0) ||
      !(f.stall_timeout_seconds > 0) || !(f.write_timeout_seconds > 0) ||
      !(f.lease_renew_seconds > 0)) {
    return absl::InvalidArgumentError("--*-seconds: must be > 0");
  }
  if (f.default_max_new_tokens < 1 || f.max_new_tokens_limit < 1) {
    return absl::InvalidArgumentError("--default-max-new-tokens/--max-new-tokens-limit: >= 1");
  }
  if (f.max_request_bytes < 1024) {
    return absl::InvalidArgumentError("--max-request-bytes: must be >= 1024");
  }
  if (f.max_pending_output_bytes < 4096) {
    return absl::InvalidArgumentError("--max-pending-output-bytes: must be >= 4096");
  }
  if (!f.tls_client_ca.empty() && f.tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca: needs --tls-cert and --tls-key");
  }
  if (absl::Status s =
          CheckTlsFiles({f.tls_cert, f.tls_key, f.tls_client_ca}, {}, "--tls", "--tls-client-ca");
      !s.ok()) {
    return s;
  }
  return SetLogLevel(f.server.log_level);
}

// What the router needs from the model directory: the tokenizer and the request limits.
struct RouterModel {
  std::unique_ptr<Tokenizer> tokenizer;
  RouterLimits limits;
};

absl::StatusOr<RouterModel> LoadRouterModel(const Flags& f) {
  auto config = LoadModelConfig(f.model);
  if (!config.ok()) return config.status();
  auto tokenizer = LoadTokenizer(f.model);
  if (!tokenizer.ok()) return tokenizer.status();
  auto eos = LoadStopTokenIds(f.model, **tokenizer);
  if (!eos.ok()) return eos.status();
  RouterModel m;
  m.tokenizer = *std::move(tokenizer);
  RouterLimits& limits = m.limits;
  limits.vocab_size = config->vocab_size;
  limits.max_context = f.max_context == 0 ? config->max_position_embeddings : f.max_context;
  limits.eos_ids = *eos;
  limits.default_max_new_tokens = f.default_max_new_tokens;
  limits.max_new_tokens_limit = f.max_new_tokens_limit;
  limits.max_request_bytes = f.max_request_bytes;
  if (limits.max_context > config->max_position_embeddings) {
    return absl::InvalidArgumentError("--max-context: exceeds the model's context");
  }
  return m;
}

RegistryOptions MakeRegistryOptions(const Flags& f, const RpcLimits& rpc) {
  RegistryOptions ro;
  ro.prefill = List(f.prefill_workers);
  ro.decode = List(f.decode_workers);
  ro.any = List(f.workers);
  ro.prefill_dns = List(f.prefill_dns);
  ro.decode_dns = List(f.decode_dns);
  ro.any_dns = List(f.workers_dns);
  ro.dns_refresh = absl::Seconds(f.dns_refresh_seconds);
  ro.health_interval = absl::Seconds(f.health_interval_seconds);
  ro.probe_timeout = absl::Seconds(f.probe_timeout_seconds);
  ro.max_backoff = absl::Seconds(f.max_backoff_seconds);
  ro.fail_threshold = static_cast<int>(f.fail_threshold);
  ro.fingerprint = f.fingerprint;
  ro.limits = rpc;
  return ro;
}

RouterServiceOptions MakeServiceOptions(const Flags& f, const ApiKeys* keys) {
  RouterServiceOptions so;
  so.api_keys = keys;
  so.max_concurrent = f.max_concurrent;
  so.max_queue = f.max_queue;
  so.flow.migration_limit = static_cast<int>(f.migration_limit);
  so.flow.prefill_retries = static_cast<int>(f.prefill_retries);
  so.flow.stall_timeout = absl::Seconds(f.stall_timeout_seconds);
  so.flow.write_timeout = absl::Seconds(f.write_timeout_seconds);
  so.flow.max_pending_output_bytes = f.max_pending_output_bytes;
  so.flow.usage_workers = f.usage_workers;
  so.flow.lease_renew_interval = absl::Seconds(f.lease_renew_seconds);
  return so;
}

// Starts the gRPC server with the Generation and health services; *cqs gets the completion
// queues for the io threads.
absl::StatusOr<StartedServer> StartServer(
    const Flags& f, const RpcLimits& rpc, GenerationService& service, HealthService& health,
    std::vector<std::unique_ptr<grpc::ServerCompletionQueue>>* cqs) {
  RpcLimits server_limits = rpc;
  server_limits.max_message_bytes = std::max<int64_t>(64 << 20, 4 * f.max_request_bytes);
  std::shared_ptr<grpc::ServerCredentials> credentials =
      f.tls_cert.empty() ? grpc::InsecureServerCredentials()
                         : MakeTlsServerCredentials({f.tls_cert, f.tls_key, f.tls_client_ca},
                                                    absl::Seconds(f.server.tls_reload_seconds));
  return StartGrpcServer(
      f.server, server_limits, std::move(credentials), {&service, &health},
      [&](grpc::ServerBuilder& builder) {
        if (f.reflection) {
          grpc::reflection::InitProtoReflectionServerBuilderPlugin();
        } else {
          WithoutReflection(builder);
        }
        // Requests: a little above --max-request-bytes, so that the handler rejects a request
        // slightly too large (INVALID_ARGUMENT naming the field) and gRPC refuses a far larger one
        // (RESOURCE_EXHAUSTED) before it is parsed.
        builder.SetMaxReceiveMessageSize(
            static_cast<int>(std::min<int64_t>(f.max_request_bytes + (64 << 10), INT_MAX)));
        grpc::ResourceQuota quota("sambay-router");
        quota.SetMaxThreads(64);  // the synchronous methods (Generate runs on the io threads)
        // gRPC 1.51 buffers a whole request before checking the receive cap: the transports' memory
        // is bounded here instead (past it, gRPC cancels streams with RESOURCE_EXHAUSTED), room for
        // eight requests of the largest size at once.
        quota.Resize(static_cast<size_t>(
            std::max<int64_t>(32 << 20, 8 * (f.max_request_bytes + (64 << 10)))));
        builder.SetResourceQuota(quota);
        const int io_threads = static_cast<int>(
            f.io_threads > 0 ? f.io_threads
                             : std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 8));
        for (int i = 0; i < io_threads; ++i) cqs->push_back(builder.AddCompletionQueue());
      });
}

// The HTTP API, when --http-port is set (else null).
absl::StatusOr<std::unique_ptr<HttpServer>> StartHttp(const Flags& f, const RouterModel& model,
                                                      GenerationService& service,
                                                      WorkerRegistry& registry,
                                                      std::unique_ptr<HttpApi>* api) {
  if (f.http_port == 0) return nullptr;
  HttpApiOptions ao;
  std::string name = f.served_model_name;
  if (name.empty()) {
    std::string dir = f.model;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    name = dir.substr(dir.find_last_of('/') + 1);
  }
  ao.model_names = {name};
  ao.created = absl::ToUnixSeconds(absl::Now());
  *api = std::make_unique<HttpApi>(service, registry, *model.tokenizer, model.limits, ao);
  HttpServerOptions ho;
  ho.host = f.server.host;
  ho.port = static_cast<int>(f.http_port);
  ho.threads = static_cast<int>(f.http_threads);
  ho.max_body_bytes = f.max_request_bytes;
  // A backstop: a flow cuts a slow client itself at --write-timeout-seconds (reason slow_client);
  // the listener's own limit covers the responses no flow watches.
  ho.write_timeout = absl::Seconds(f.write_timeout_seconds) + absl::Seconds(5);
  // The public port's certificate (and client CA) serve the HTTP API too.
  ho.tls_cert_file = f.tls_cert;
  ho.tls_key_file = f.tls_key;
  ho.tls_client_ca_file = f.tls_client_ca;
  ho.tls_reload = absl::Seconds(f.server.tls_reload_seconds);
  auto server = std::make_unique<HttpServer>(
      ho, [a = api->get()](std::shared_ptr<HttpExchange> ex) { a->Handle(std::move(ex)); });
  auto port = server->Start();
  if (!port.ok()) return port.status();
  return server;
}

// Start-up failed after the server started: stop everything in order (the io threads hold the
// completion queues; the server must not be destroyed under them) before exiting.
void StopAfterFailedStart(grpc::Server& server, HttpServer* http, GenerationService& service) {
  server.Shutdown(std::chrono::system_clock::now());
  if (http != nullptr) http->Stop();
  service.StopServing(absl::Seconds(1));
  server.Wait();
}

// Stops taking requests, waits up to --drain-timeout for running ones, then stops the server.
void Drain(const Flags& f, const std::string& sig, grpc::Server& server, HttpServer* http,
           GenerationService& service, HealthService& health, std::atomic<bool>& draining) {
  draining.store(true);
  health.SetServingStatus(kReadinessService, false);
  service.StartDrain();
  Log(LogLevel::kInfo, "router", "draining", {{"signal", sig}, {"active", service.active()}});
  WaitWhile([&] { return service.active() > 0; }, absl::Seconds(f.server.drain_timeout),
            absl::Milliseconds(20));
  health.Shutdown();
  server.Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  if (http != nullptr) http->Stop();  // its unfinished streams are cut: their flows end
  service.StopServing(absl::Seconds(5));
  server.Wait();
  Log(LogLevel::kInfo, "router", "stopped", {{"unfinished", service.active()}});
}

int Run(int argc, char** argv) {
  BlockTerminationSignals();
  Flags f;
  FlagSet fs("sambay-router", "SAMBAY_");
  Register(fs, f);
  if (auto exit_code =
          ParseAndCheckServerFlags(fs, "sambay-router", argc, argv, [&] { return Check(f); })) {
    return *exit_code;
  }
  LogStarting("router", SAMBAY_VERSION, fs);

  auto model = LoadRouterModel(f);
  if (!model.ok()) return CannotStart("router", model.status());
  const RpcLimits rpc = ServerRpcLimits(f.server);
  RouterMetrics metrics;
  auto metrics_port = metrics.Serve(f.server.metrics_host, static_cast<int>(f.server.metrics_port),
                                    ServerMetricsOptions(f.server));
  if (!metrics_port.ok()) return CannotStart("router", metrics_port.status());
  auto policy = MakePlacementPolicy(f.placement);
  if (!policy.ok()) return CannotStart("router", policy.status());
  WorkerRegistry registry(MakeRegistryOptions(f, rpc), &metrics);
  std::unique_ptr<ApiKeys> keys;
  if (!f.api_keys_file.empty()) {
    auto loaded = ApiKeys::Load(f.api_keys_file);
    if (!loaded.ok()) return CannotStart("router", loaded.status());
    keys = *std::move(loaded);
  }
  GenerationService service(registry, **policy, metrics, *model->tokenizer, model->limits,
                            MakeServiceOptions(f, keys.get()));

  HealthService health;
  HealthMirror health_mirror(&health);
  auto health_port = StartHealthServer(f.server, &health_mirror);
  if (!health_port.ok()) return CannotStart("router", health_port.status());
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs;
  auto started = StartServer(f, rpc, service, health, &cqs);
  if (!started.ok()) return CannotStart("router", started.status());
  service.Serve(std::move(cqs));
  std::unique_ptr<HttpApi> http_api;
  auto http = StartHttp(f, *model, service, registry, &http_api);
  if (!http.ok()) {
    StopAfterFailedStart(*started->server, nullptr, service);
    return CannotStart("router", http.status());
  }
  health.SetServingStatus("", true);
  health.SetServingStatus(kReadinessService, false);
  std::atomic<bool> draining{false};
  registry.SetReadyCallback([&](bool ready) {
    if (!draining.load()) health.SetServingStatus(kReadinessService, ready);
    Log(LogLevel::kInfo, "router", ready ? "ready" : "not ready (workers missing)");
  });
  registry.Start();
  nlohmann::json fields = {{"placement", (*policy)->name()},
                           {"tls", f.tls_cert.empty()        ? "off"
                                   : f.tls_client_ca.empty() ? "tls"
                                                             : "mtls"},
                           {"api_keys", keys == nullptr ? 0 : keys->size()},
                           {"reflection", f.reflection}};
  if (*http != nullptr) fields["http_port"] = f.http_port;
  const ServingPorts ports{started->port, *metrics_port,
                           health_port->server ? health_port->port : -1};
  if (absl::Status s = AnnounceServing("router", f.server, ports, fields); !s.ok()) {
    StopAfterFailedStart(*started->server, http->get(), service);
    return CannotStart("router", s);
  }
  Drain(f, WaitForTerminationSignal(), *started->server, http->get(), service, health, draining);
  return 0;
}

}  // namespace
}  // namespace sambay

int main(int argc, char** argv) { return sambay::Run(argc, argv); }
