#include "common/server_util.h"

#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>
#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/tls.h"

namespace sambay {
namespace {

// Prints "<program>: error: <message>" on stderr; returns 2, the exit code of a bad flag.
int FlagError(const char* program, const absl::Status& s) {
  std::fprintf(stderr, "%s: error: %s\n", program, std::string(s.message()).c_str());
  return 2;
}

sigset_t TerminationSignals() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGTERM);
  sigaddset(&s, SIGINT);
  return s;
}

// One capped method's counter: calls admitted and not yet ended.
struct CallCap {
  int max = 0;
  std::atomic<int> open{0};
};
using CallCaps = std::map<std::string, std::unique_ptr<CallCap>>;

// Lives for one call: holds a slot of its method's cap, or cancels the call when none is free.
class CallCapInterceptor final : public grpc::experimental::Interceptor {
 public:
  CallCapInterceptor(std::shared_ptr<const CallCaps> caps, CallCap* cap,
                     grpc::experimental::ServerRpcInfo* info)
      : caps_(std::move(caps)), cap_(cap), info_(info) {
    admitted_ = cap_->open.fetch_add(1) < cap_->max;
    if (!admitted_) cap_->open.fetch_sub(1);
  }
  ~CallCapInterceptor() override {
    if (admitted_) cap_->open.fetch_sub(1);
  }
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (!admitted_ && !cancelled_ &&
        methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      cancelled_ = true;
      info_->server_context()->TryCancel();
    }
    methods->Proceed();
  }

 private:
  std::shared_ptr<const CallCaps> caps_;  // keeps cap_ alive
  CallCap* cap_;
  grpc::experimental::ServerRpcInfo* info_;
  bool admitted_ = false;
  bool cancelled_ = false;
};

class CallCapFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CallCapFactory(std::shared_ptr<const CallCaps> caps) : caps_(std::move(caps)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    auto it = caps_->find(info->method());
    if (it == caps_->end()) return nullptr;
    return new CallCapInterceptor(caps_, it->second.get(), info);
  }

 private:
  std::shared_ptr<const CallCaps> caps_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeCallCapInterceptor(
    std::map<std::string, int> caps) {
  auto counters = std::make_shared<CallCaps>();
  for (const auto& [method, max] : caps) {
    auto c = std::make_unique<CallCap>();
    c->max = max;
    (*counters)[method] = std::move(c);
  }
  return std::make_unique<CallCapFactory>(std::move(counters));
}

namespace {
// Drops the reflection plugin from the builder's plugins.
class NoReflectionOption final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(
        std::remove_if(plugins->begin(), plugins->end(),
                       [](const auto& p) { return p->name() == "proto_server_reflection"; }),
        plugins->end());
  }
};
}  // namespace

void WithoutReflection(grpc::ServerBuilder& builder) {
  builder.SetOption(std::make_unique<NoReflectionOption>());
}

void CapUnownedStreams(grpc::ServerBuilder& builder) {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(MakeCallCapInterceptor(
      {{"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", kMaxReflectionStreams},
       {"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", kMaxReflectionStreams}}));
  builder.experimental().SetInterceptorCreators(std::move(creators));
}

void BlockTerminationSignals() {
  sigset_t s = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &s, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

std::string WaitForTerminationSignal() {
  sigset_t s = TerminationSignals();
  int sig = 0;
  sigwait(&s, &sig);
  return sig == SIGTERM ? "SIGTERM" : "SIGINT";
}

void TuneMallocForLargeBuffers() {
  // Allocations up to 64 MiB come from the heap (not fresh mmaps), and up to 1 GiB of free heap
  // is kept rather than trimmed.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  // One heap for all threads: a state freed by the engine thread is reused by the next import
  // on whichever gRPC thread runs it (with per-thread arenas the memory sat in another arena and
  // every other import page-faulted its way through fresh memory).
  mallopt(M_ARENA_MAX, 1);
}

absl::Status WritePortFile(const std::string& path, int grpc_port, int metrics_port,
                           int health_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << "{\"grpc_port\":" << grpc_port << ",\"metrics_port\":" << metrics_port;
    if (health_port >= 0) out << ",\"health_port\":" << health_port;
    out << ",\"pid\":" << getpid() << "}\n";
    if (!out) return absl::InternalError(absl::StrCat("--port-file: cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("--port-file: cannot rename to ", path));
  }
  return absl::OkStatus();
}

std::optional<int> ParseServerFlags(FlagSet& flags, const char* program, int argc, char** argv) {
  absl::Status s = flags.Parse(argc, argv);
  if (s.ok()) return std::nullopt;
  if (s.message() == FlagSet::kHelpRequested) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  return FlagError(program, s);
}

std::optional<int> ParseAndCheckServerFlags(FlagSet& flags, const char* program, int argc,
                                            char** argv, absl::FunctionRef<absl::Status()> check) {
  if (auto exit_code = ParseServerFlags(flags, program, argc, argv)) return exit_code;
  if (absl::Status s = check(); !s.ok()) return FlagError(program, s);
  return std::nullopt;
}

void LogStarting(const std::string& component, const std::string& version, const FlagSet& flags) {
  Log(LogLevel::kInfo, component, "starting",
      {{"version", version}, {"config", flags.Effective()}});
}

int CannotStart(const std::string& component, const absl::Status& status) {
  Log(LogLevel::kError, component, "cannot start", {{"error", status.ToString()}});
  return 1;
}

namespace {

void RegisterInternalTlsFlags(FlagSet& fs, ServerFlags* flags) {
  fs.AddString("internal-tls-cert", &flags->internal_tls_cert,
               "PEM certificate chain of this process inside the cluster: with --internal-tls-key "
               "and --internal-tls-ca, every worker port and every call to a worker is mTLS.");
  fs.AddString("internal-tls-key", &flags->internal_tls_key, "PEM key of --internal-tls-cert.");
  fs.AddString("internal-tls-ca", &flags->internal_tls_ca,
               "PEM bundle of the cluster CA: peers must present a certificate it signed.");
  fs.AddString("internal-tls-server-name", &flags->internal_tls_server_name,
               "Name (DNS SAN) every internal certificate carries; checked instead of the peer's "
               "address.");
  fs.AddInt("tls-reload-seconds", &flags->tls_reload_seconds,
            "How often certificate, key and CA files are checked for changes (rotation without "
            "restart).");
}

}  // namespace

void RegisterServerFlags(FlagSet& fs, ServerFlags* flags, const ServerFlagSpec& spec) {
  flags->port = spec.port;
  flags->metrics_port = spec.metrics_port;
  fs.AddString("host", &flags->host, spec.host_help);
  fs.AddInt("port", &flags->port, spec.port_help);
  fs.AddInt("health-port", &flags->health_port,
            "Plaintext port serving only grpc.health.v1 (for probes that cannot speak TLS); -1 = "
            "off, 0 = any free port.");
  fs.AddString("metrics-host", &flags->metrics_host, spec.metrics_host_help);
  fs.AddInt("metrics-port", &flags->metrics_port, "Prometheus /metrics port (0 = any free port).");
  fs.AddString("metrics-tls-cert", &flags->metrics_tls_cert,
               "PEM certificate chain: /metrics is served over HTTPS (with --metrics-tls-key).");
  fs.AddString("metrics-tls-key", &flags->metrics_tls_key, "PEM key of --metrics-tls-cert.");
  fs.AddString("metrics-bearer-token-file", &flags->metrics_bearer_token_file,
               "File holding a token every scrape must send as \"Authorization: Bearer TOKEN\".");
  RegisterInternalTlsFlags(fs, flags);
  fs.AddDouble("drain-timeout", &flags->drain_timeout, spec.drain_timeout_help);
  fs.AddInt("keepalive-seconds", &flags->keepalive_seconds, "HTTP/2 keepalive ping interval.");
  fs.AddInt("keepalive-timeout-seconds", &flags->keepalive_timeout_seconds,
            spec.keepalive_timeout_help);
  fs.AddString("port-file", &flags->port_file,
               "If set, written once serving: {\"grpc_port\":N,\"metrics_port\":M,\"pid\":P}.");
  fs.AddString("log-level", &flags->log_level, "debug, info, warning or error.");
}

absl::Status CheckServerFlags(const ServerFlags& flags) {
  auto port_ok = [](int64_t p) { return p >= 0 && p <= 65535; };
  if (!port_ok(flags.port)) return absl::InvalidArgumentError("--port: must be in [0, 65535]");
  if (!port_ok(flags.metrics_port)) {
    return absl::InvalidArgumentError("--metrics-port: must be in [0, 65535]");
  }
  if (!(flags.drain_timeout >= 0)) {
    return absl::InvalidArgumentError("--drain-timeout: must be >= 0");
  }
  if (flags.keepalive_seconds < 1 || flags.keepalive_timeout_seconds < 1) {
    return absl::InvalidArgumentError("--keepalive-seconds/--keepalive-timeout-seconds: >= 1");
  }
  if (flags.health_port != -1 && !port_ok(flags.health_port)) {
    return absl::InvalidArgumentError("--health-port: must be -1 (off) or in [0, 65535]");
  }
  if (flags.tls_reload_seconds < 1) {
    return absl::InvalidArgumentError("--tls-reload-seconds: must be >= 1");
  }
  const TlsFiles internal{flags.internal_tls_cert, flags.internal_tls_key, flags.internal_tls_ca};
  if (!internal.empty()) {
    if (absl::Status s = CheckTlsFiles(internal, {.identity = true, .ca = true}, "--internal-tls");
        !s.ok()) {
      return s;
    }
    if (flags.internal_tls_server_name.empty()) {
      return absl::InvalidArgumentError("--internal-tls-server-name: required with internal TLS");
    }
  }
  return CheckTlsFiles({flags.metrics_tls_cert, flags.metrics_tls_key, ""}, {}, "--metrics-tls");
}

MetricsHttpOptions ServerMetricsOptions(const ServerFlags& flags) {
  MetricsHttpOptions options;
  options.tls_cert_file = flags.metrics_tls_cert;
  options.tls_key_file = flags.metrics_tls_key;
  options.bearer_token_file = flags.metrics_bearer_token_file;
  options.reload_interval = absl::Seconds(flags.tls_reload_seconds);
  return options;
}

bool InternalTls(const ServerFlags& flags) { return !flags.internal_tls_cert.empty(); }

RpcLimits ServerRpcLimits(const ServerFlags& flags) {
  RpcLimits limits;
  limits.keepalive_seconds = flags.keepalive_seconds;
  limits.keepalive_timeout_seconds = flags.keepalive_timeout_seconds;
  if (InternalTls(flags)) {
    limits.credentials = MakeTlsChannelCredentials(
        {flags.internal_tls_cert, flags.internal_tls_key, flags.internal_tls_ca},
        absl::Seconds(flags.tls_reload_seconds));
    limits.tls_server_name = flags.internal_tls_server_name;
  }
  return limits;
}

std::shared_ptr<grpc::ServerCredentials> InternalServerCredentials(const ServerFlags& flags) {
  if (!InternalTls(flags)) return grpc::InsecureServerCredentials();
  return MakeTlsServerCredentials(
      {flags.internal_tls_cert, flags.internal_tls_key, flags.internal_tls_ca},
      absl::Seconds(flags.tls_reload_seconds));
}

absl::StatusOr<StartedServer> StartGrpcServer(
    const ServerFlags& flags, const RpcLimits& limits,
    std::shared_ptr<grpc::ServerCredentials> credentials,
    std::initializer_list<grpc::Service*> services,
    absl::FunctionRef<void(grpc::ServerBuilder&)> configure) {
  grpc::ServerBuilder builder;
  StartedServer started;
  builder.AddListeningPort(absl::StrCat(flags.host, ":", flags.port), std::move(credentials),
                           &started.port);
  for (grpc::Service* service : services) builder.RegisterService(service);
  ConfigureServer(builder, limits);
  configure(builder);
  started.server = builder.BuildAndStart();
  if (started.server == nullptr || started.port == 0) {
    return absl::UnavailableError(
        absl::StrCat("--port: cannot listen on ", flags.host, ":", flags.port));
  }
  return started;
}

absl::StatusOr<StartedServer> StartHealthServer(const ServerFlags& flags, grpc::Service* health) {
  StartedServer started;
  if (flags.health_port < 0) return started;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(flags.host, ":", flags.health_port),
                           grpc::InsecureServerCredentials(), &started.port);
  builder.RegisterService(health);
  RpcLimits limits = ServerRpcLimits(flags);
  limits.max_message_bytes = 64 << 10;  // a health check is a few bytes
  ConfigureServer(builder, limits);
  grpc::ResourceQuota quota("health");
  quota.SetMaxThreads(16);  // Check calls, plus the Watch streams HealthService caps
  builder.SetResourceQuota(quota);
  started.server = builder.BuildAndStart();
  if (started.server == nullptr || started.port == 0) {
    return absl::UnavailableError(
        absl::StrCat("--health-port: cannot listen on ", flags.host, ":", flags.health_port));
  }
  return started;
}

absl::Status AnnounceServing(const std::string& component, const ServerFlags& flags,
                             ServingPorts ports, const nlohmann::json& fields) {
  if (!flags.port_file.empty()) {
    if (absl::Status s = WritePortFile(flags.port_file, ports.grpc, ports.metrics, ports.health);
        !s.ok()) {
      return s;
    }
  }
  nlohmann::json all = {{"address", absl::StrCat(flags.host, ":", ports.grpc)},
                        {"metrics", absl::StrCat(flags.metrics_host, ":", ports.metrics)},
                        {"internal_tls", InternalTls(flags)}};
  if (ports.health >= 0) all["health"] = absl::StrCat(flags.host, ":", ports.health);
  all.update(fields);
  Log(LogLevel::kInfo, component, "serving", all);
  return absl::OkStatus();
}

void WaitWhile(absl::FunctionRef<bool()> busy, absl::Duration timeout, absl::Duration interval) {
  const absl::Time deadline = absl::Now() + timeout;
  while (busy() && absl::Now() < deadline) {
    std::this_thread::sleep_for(absl::ToChronoNanoseconds(interval));
  }
}

}  // namespace sambay
