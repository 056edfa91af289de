// Start-up and shutdown pieces shared by the server binaries (sambay-worker, sambay-router):
// termination signals taken by sigwait, the port file, the flags both register (ServerFlags) and
// flag parsing and checking with the usual exits, the start-up log lines ("starting", "cannot
// start", "serving"), building and starting the gRPC server, polling while draining, and caps on
// concurrent calls of services the servers do not own (gRPC's reflection).
// Call from main() only (process-wide effects); not thread-safe. RegisterServerFlags writes
// through its ServerFlags pointer, which must outlive FlagSet::Parse. The call-cap interceptor
// factory is thread-safe (atomic counters) and owns its counters (shared with its interceptors,
// so they may outlive it).
#ifndef SAMBAY_COMMON_SERVER_UTIL_H_
#define SAMBAY_COMMON_SERVER_UTIL_H_

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/support/server_interceptor.h>

#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/flags.h"
#include "common/grpc_channel.h"
#include "common/metrics_http.h"
#include "nlohmann/json.hpp"

namespace sambay {

// Blocks SIGTERM and SIGINT in this thread (and every thread started later) and ignores
// SIGPIPE. Call first thing in main().
void BlockTerminationSignals();
// Waits for SIGTERM or SIGINT; returns its name.
std::string WaitForTerminationSignal();

// Keeps freed large buffers (state chunks, K/V blocks) in the heap for reuse instead of returning
// them to the kernel, so a steady stream of state transfers does not page-fault on every
// megabyte. Call once at start-up.
void TuneMallocForLargeBuffers();

// Writes {"grpc_port":N,"metrics_port":M,"pid":P} to `path` atomically (temp file + rename), with
// "health_port":H when health_port >= 0.
absl::Status WritePortFile(const std::string& path, int grpc_port, int metrics_port,
                           int health_port = -1);

// Parses flags; on --help prints the usage and returns 0, on a bad flag prints
// "<program>: error: ..." and returns 2; otherwise nullopt (go on).
std::optional<int> ParseServerFlags(FlagSet& flags, const char* program, int argc, char** argv);

// ParseServerFlags, then `check` (the binary's own checks of the values): when it fails, prints
// "<program>: error: ..." and returns 2; otherwise nullopt (go on).
std::optional<int> ParseAndCheckServerFlags(FlagSet& flags, const char* program, int argc,
                                            char** argv, absl::FunctionRef<absl::Status()> check);

// Logs "starting" with the version and the effective configuration (FlagSet::Effective).
void LogStarting(const std::string& component, const std::string& version, const FlagSet& flags);

// Logs "cannot start" with `status` as `component`'s error; returns 1, the exit code of a server
// that cannot start.
int CannotStart(const std::string& component, const absl::Status& status);

// The flags every server registers the same way: where the gRPC service, the health-only port and
// the metrics endpoint listen, the internal mTLS and the metrics endpoint's TLS and token
// (docs/security.md), keepalive, the drain on SIGTERM, the port file and the log level.
struct ServerFlags {
  std::string host = "127.0.0.1";
  int64_t port = 0;
  int64_t health_port = -1;  // plaintext grpc.health.v1 only; -1 = off, 0 = any free port
  std::string metrics_host = "127.0.0.1";
  int64_t metrics_port = 0;
  std::string metrics_tls_cert, metrics_tls_key, metrics_bearer_token_file;
  // Cluster-internal mTLS: the worker's port, and the router's and workers' calls to workers.
  std::string internal_tls_cert, internal_tls_key, internal_tls_ca;
  std::string internal_tls_server_name = "sambay-internal";
  int64_t tls_reload_seconds = 60;
  double drain_timeout = 60;  // seconds
  int64_t keepalive_seconds = 20;
  int64_t keepalive_timeout_seconds = 10;
  std::string port_file;
  std::string log_level = "info";
};

// What differs between the servers: the default ports and the wording of some help texts.
struct ServerFlagSpec {
  int64_t port = 0;
  int64_t metrics_port = 0;
  const char* host_help = "";
  const char* port_help = "";
  const char* metrics_host_help = "";
  const char* drain_timeout_help = "";
  const char* keepalive_timeout_help = "";
};

// Sets the default ports from `spec` in *flags and registers the ServerFlags (--host, --port,
// --health-port, --metrics-*, --internal-tls-*, --tls-reload-seconds, --drain-timeout,
// --keepalive-seconds, --keepalive-timeout-seconds, --port-file, --log-level) on `fs`, writing
// into *flags.
void RegisterServerFlags(FlagSet& fs, ServerFlags* flags, const ServerFlagSpec& spec);

// Ports in [0, 65535] (--health-port also -1), --drain-timeout >= 0, keepalive >= 1 s,
// --tls-reload-seconds >= 1, the internal TLS files all three or none and readable (CheckTlsFiles),
// the metrics TLS files both or neither; the error names the flag.
absl::Status CheckServerFlags(const ServerFlags& flags);

// The metrics endpoint's TLS and token files (--metrics-*) and their reload interval
// (--tls-reload-seconds).
MetricsHttpOptions ServerMetricsOptions(const ServerFlags& flags);

// True when the --internal-tls-* files are given.
bool InternalTls(const ServerFlags& flags);

// RpcLimits with the keepalive of the flags (the message cap left at its default) and, with
// internal TLS, the mTLS channel credentials and --internal-tls-server-name.
RpcLimits ServerRpcLimits(const ServerFlags& flags);

// The server credentials of an internal port: mTLS with the --internal-tls-* files (clients must
// present a certificate of the cluster CA), or insecure without them.
std::shared_ptr<grpc::ServerCredentials> InternalServerCredentials(const ServerFlags& flags);

// A started gRPC server and the port it listens on.
struct StartedServer {
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

// Builds and starts a gRPC server listening on --host:--port with `credentials` with `services`
// registered in this order and `limits` applied (ConfigureServer); `configure` adds the binary's
// own settings just before the start. UNAVAILABLE "--port: cannot listen on HOST:PORT" when it
// cannot listen.
absl::StatusOr<StartedServer> StartGrpcServer(
    const ServerFlags& flags, const RpcLimits& limits,
    std::shared_ptr<grpc::ServerCredentials> credentials,
    std::initializer_list<grpc::Service*> services,
    absl::FunctionRef<void(grpc::ServerBuilder&)> configure);

// The health-only port: a plaintext server on --host:--health-port with `health` (a
// grpc.health.v1 service) alone, for probes that cannot speak TLS (kubelet's). Returns a null
// server when --health-port is -1; UNAVAILABLE "--health-port: ..." when it cannot listen.
absl::StatusOr<StartedServer> StartHealthServer(const ServerFlags& flags, grpc::Service* health);

// The ports a server announces (health -1 = none).
struct ServingPorts {
  int grpc = 0;
  int metrics = 0;
  int health = -1;
};

// Writes the port file (when --port-file is set; its error is returned), then logs "serving" with
// the gRPC, metrics and health addresses and `fields`.
absl::Status AnnounceServing(const std::string& component, const ServerFlags& flags,
                             ServingPorts ports, const nlohmann::json& fields);

// Sleeps `interval` at a time while busy() is true, for at most `timeout` (a drain).
void WaitWhile(absl::FunctionRef<bool()> busy, absl::Duration timeout, absl::Duration interval);

// Reflection streams (grpc.reflection v1alpha and v1 ServerReflectionInfo) served at once. A
// synchronous reflection stream holds a server thread while it is open.
inline constexpr int kMaxReflectionStreams = 4;

// Per-method caps on concurrent calls ("/package.Service/Method" -> most at once), for
// synchronous services whose handlers this code does not own. A call past its method's cap is
// cancelled as it arrives (the client sees CANCELLED "Cancelled on the server side"), so its
// handler returns at once instead of holding one of the server's threads.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeCallCapInterceptor(
    std::map<std::string, int> caps);

// Leaves gRPC server reflection out of `builder`'s server, even where the reflection plugin
// registered itself (linking grpc++_reflection does that).
void WithoutReflection(grpc::ServerBuilder& builder);

// Installs MakeCallCapInterceptor with the reflection caps on `builder` (this replaces any
// interceptor creators set before: call it once, before BuildAndStart).
void CapUnownedStreams(grpc::ServerBuilder& builder);

}  // namespace sambay

#endif  // SAMBAY_COMMON_SERVER_UTIL_H_
