#include "common/server_util.h"

#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace sambay {
namespace {

sigset_t TerminationSignals() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGTERM);
  sigaddset(&s, SIGINT);
  return s;
}

}  // namespace

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

absl::Status WritePortFile(const std::string& path, int grpc_port, int metrics_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << "{\"grpc_port\":" << grpc_port << ",\"metrics_port\":" << metrics_port
        << ",\"pid\":" << getpid() << "}\n";
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
  std::fprintf(stderr, "%s: error: %s\n", program, std::string(s.message()).c_str());
  return 2;
}

void RegisterServerFlags(FlagSet& fs, ServerFlags* flags, const ServerFlagSpec& spec) {
  flags->port = spec.port;
  flags->metrics_port = spec.metrics_port;
  fs.AddString("host", &flags->host, spec.host_help);
  fs.AddInt("port", &flags->port, spec.port_help);
  fs.AddString("metrics-host", &flags->metrics_host, spec.metrics_host_help);
  fs.AddInt("metrics-port", &flags->metrics_port, "Prometheus /metrics port (0 = any free port).");
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
  return absl::OkStatus();
}

RpcLimits ServerRpcLimits(const ServerFlags& flags) {
  RpcLimits limits;
  limits.keepalive_seconds = flags.keepalive_seconds;
  limits.keepalive_timeout_seconds = flags.keepalive_timeout_seconds;
  return limits;
}

}  // namespace sambay
