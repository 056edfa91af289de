// sambay-worker: serves one model replica over gRPC (sambay.v1.Worker) in role prefill, decode
// or both; metrics on their own port; SIGTERM drains. See docs/worker.md.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <chrono>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/flags.h"
#include "common/grpc_channel.h"
#include "common/health_service.h"
#include "common/log.h"
#include "common/server_util.h"
#include "engine/backend.h"
#include "engine/model.h"
#include "engine/tp/tp_plan.h"
#include "worker/gpu_plugin.h"
#include "worker/metrics.h"
#include "worker/push_policy.h"
#include "worker/scheduler.h"
#include "worker/service.h"

#ifndef SAMBAY_VERSION
#define SAMBAY_VERSION "dev"
#endif

namespace sambay {
namespace {

constexpr const char* kReadinessService = "sambay.v1.Worker";

struct Flags {
  ServerFlags server;
  std::string model;
  std::string role = "both";
  int64_t max_running = 64;
  int64_t max_context = 0;
  int64_t state_memory_mib = 4096;
  int64_t prefill_chunk = 512;
  int64_t threads = 0;
  int64_t tp = 1;
  std::string device = "cpu";
  int64_t gpu = 0;
  bool cuda_graphs = false;
  double lease_timeout = 30;
  int64_t max_message_mib = 32;
  std::string push_allow = "loopback";
  double push_first_chunk_timeout = 10;
  double push_chunk_timeout = 10;
  int64_t max_push_streams = 0;
};

void Register(FlagSet& fs, Flags& f) {
  RegisterServerFlags(fs, &f.server,
                      {.port = 50051,
                       .metrics_port = 9400,
                       .host_help = "Address to bind the gRPC service to (0.0.0.0 for all).",
                       .port_help = "gRPC port (0 = any free port).",
                       .metrics_host_help = "Address to bind the metrics endpoint to.",
                       .drain_timeout_help =
                           "Seconds SIGTERM waits for admitted sequences to finish before exiting.",
                       .keepalive_timeout_help =
                           "Seconds without a ping reply before a connection is declared dead."});
  fs.AddString("model", &f.model,
               "Model directory (config.json, safetensors, tokenizer). Required.");
  fs.AddString("role", &f.role, "prefill, decode or both.");
  fs.AddInt("max-running", &f.max_running,
            "Most sequences admitted at once (decoding, prefilling, or awaiting their state).");
  fs.AddInt("max-context", &f.max_context,
            "Most tokens (prompt + generated) per sequence; 0 = the model's "
            "max_position_embeddings.");
  fs.AddInt("state-memory-mib", &f.state_memory_mib,
            "Budget for sequence states (MiB); each admitted sequence reserves the state size "
            "of its prompt + max_new_tokens.");
  fs.AddInt("prefill-chunk", &f.prefill_chunk,
            "Most prompt tokens run per scheduler step (chunked prefill).");
  fs.AddInt("threads", &f.threads, "Engine threads (0 = all cores); shared by the TP ranks.");
  fs.AddInt("tp", &f.tp,
            "Tensor-parallel ranks: the model is split over this many threads of this process "
            "(in-process all-reduce), or with --device cuda over GPUs --gpu .. --gpu+tp-1 "
            "(NCCL); 1 = off. See docs/tensor-parallel.md.");
  fs.AddString("device", &f.device,
               "cpu, or cuda: run the model on GPU --gpu through the CUDA backend (a build with "
               "CUDA and a GPU; bf16 weights and state, see docs/gpu.md).");
  fs.AddInt("gpu", &f.gpu, "CUDA device index for --device cuda (the first of --tp devices).");
  fs.AddBool("cuda-graphs", &f.cuda_graphs,
             "With --device cuda: replay each decode step from a CUDA graph captured once per "
             "batch size (fewer launches; see docs/gpu.md).");
  fs.AddDouble("lease-timeout", &f.lease_timeout,
               "Seconds a Decode reservation waits for its whole state before it is freed.");
  fs.AddInt("max-message-mib", &f.max_message_mib, "Largest gRPC message, both directions (MiB).");
  fs.AddString("push-allow", &f.push_allow,
               "Where Prefill may push states: comma-separated *, loopback, CIDR blocks, IP "
               "addresses, HOST or HOST:PORT (docs/worker.md).");
  fs.AddDouble("push-first-chunk-timeout", &f.push_first_chunk_timeout,
               "Seconds a PushState stream may wait for its first chunk.");
  fs.AddDouble("push-chunk-timeout", &f.push_chunk_timeout,
               "Seconds a PushState stream may wait between chunks.");
  fs.AddInt("max-push-streams", &f.max_push_streams,
            "Most PushState streams served at once (0 = --max-running).");
}

absl::Status CheckFlags(const Flags& f, WorkerRoles* roles) {
  if (f.model.empty()) return absl::InvalidArgumentError("--model: required");
  if (f.role == "prefill") {
    *roles = {true, false};
  } else if (f.role == "decode") {
    *roles = {false, true};
  } else if (f.role == "both") {
    *roles = {true, true};
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--role: must be prefill, decode or both, got \"", f.role, "\""));
  }
  if (absl::Status s = CheckServerFlags(f.server); !s.ok()) return s;
  if (f.max_running < 1 || f.max_running > 4096) {
    return absl::InvalidArgumentError("--max-running: must be in [1, 4096]");
  }
  if (f.max_context < 0) return absl::InvalidArgumentError("--max-context: must be >= 0");
  if (f.state_memory_mib < 1) return absl::InvalidArgumentError("--state-memory-mib: must be >= 1");
  if (f.prefill_chunk < 1) return absl::InvalidArgumentError("--prefill-chunk: must be >= 1");
  if (f.threads < 0) return absl::InvalidArgumentError("--threads: must be >= 0");
  if (f.tp < 1 || f.tp > kMaxTpSize) {
    return absl::InvalidArgumentError(absl::StrCat("--tp: must be in [1, ", kMaxTpSize, "]"));
  }
  if (f.device != "cpu" && f.device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device: must be cpu or cuda, got \"", f.device, "\""));
  }
  if (f.gpu < 0) return absl::InvalidArgumentError("--gpu: must be >= 0");
  if (!(f.lease_timeout > 0)) return absl::InvalidArgumentError("--lease-timeout: must be > 0");
  if (f.max_message_mib < 1 || f.max_message_mib > 1024) {
    return absl::InvalidArgumentError("--max-message-mib: must be in [1, 1024]");
  }
  if (!(f.push_first_chunk_timeout > 0) || !(f.push_chunk_timeout > 0)) {
    return absl::InvalidArgumentError("--push-first-chunk-timeout/--push-chunk-timeout: > 0");
  }
  if (f.max_push_streams < 0 || f.max_push_streams > f.max_running) {
    return absl::InvalidArgumentError("--max-push-streams: must be in [0, --max-running]");
  }
  if (auto allow = PushAllowList::Parse(f.push_allow); !allow.ok()) return allow.status();
  return SetLogLevel(f.server.log_level);
}

// The GPU plugin for --device cuda, checked against --gpu and --tp; nullptr for --device cpu.
// --device cuda fails here, before the model is loaded, when it cannot work.
absl::StatusOr<const GpuPluginApi*> OpenDevice(const Flags& f) {
  if (f.device != "cuda") return nullptr;
  auto plugin = LoadGpuPlugin();
  if (!plugin.ok()) return plugin.status();
  const GpuPluginApi* gpu = *plugin;
  const int n = gpu->device_count();
  if (n == 0) return absl::FailedPreconditionError("--device cuda: no CUDA device is present");
  if (f.gpu + f.tp > n) {
    return absl::FailedPreconditionError(
        f.tp == 1 ? absl::StrCat("--gpu: device ", f.gpu, " does not exist (", n, " CUDA devices)")
                  : absl::StrCat("--tp ", f.tp, " from --gpu ", f.gpu, ": needs devices ", f.gpu,
                                 "..", f.gpu + f.tp - 1, ", ", n, " present"));
  }
  return gpu;
}

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const Flags& f) {
  ModelOptions mo;
  mo.num_threads = static_cast<int>(f.threads);
  // CUDA: the full weights are loaded once and sharded while they are uploaded to the GPUs.
  mo.tp = f.device == "cuda" ? 1 : static_cast<int>(f.tp);
  return Model::Load(f.model, mo);
}

absl::StatusOr<SchedulerOptions> MakeSchedulerOptions(const Flags& f, const ModelConfig& cfg) {
  SchedulerOptions so;
  so.max_running = f.max_running;
  so.max_context = f.max_context == 0 ? cfg.max_position_embeddings : f.max_context;
  if (so.max_context > cfg.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-context: ", so.max_context, " exceeds the model's ", cfg.max_position_embeddings));
  }
  so.state_budget_bytes = f.state_memory_mib << 20;
  so.prefill_chunk = f.prefill_chunk;
  so.lease = absl::Seconds(f.lease_timeout);
  return so;
}

// One state slot per admitted sequence; the global K/V pool sized by the state budget (bf16
// blocks: the scheduler's fp32 accounting never admits more than it holds).
GpuBackendOptions MakeGpuOptions(const Flags& f, const SchedulerOptions& so,
                                 const ModelConfig& cfg) {
  GpuBackendOptions go;
  for (int64_t d = 0; d < f.tp; ++d) go.devices.push_back(static_cast<int>(f.gpu + d));
  go.max_slots = static_cast<int>(f.max_running);
  go.max_context = so.max_context;
  go.max_chunk = so.prefill_chunk;
  go.max_logits_rows = std::max<int64_t>(64, f.max_running);
  go.cuda_graphs = f.cuda_graphs;
  const int64_t block_bytes = go.block_tokens * cfg.kv_dim() * 2 * 2;
  const int64_t per_seq = (so.max_context + go.block_tokens - 1) / go.block_tokens;
  go.kv_blocks = std::clamp<int64_t>((so.state_budget_bytes + block_bytes - 1) / block_bytes,
                                     per_seq, per_seq * go.max_slots);
  return go;
}

// The GPU backend from `gpu`'s plugin, or the CPU backend over `model` when `gpu` is null.
absl::StatusOr<std::unique_ptr<EngineBackend>> MakeBackend(const Flags& f, const GpuPluginApi* gpu,
                                                           Model& model,
                                                           const SchedulerOptions& so) {
  std::unique_ptr<EngineBackend> engine;
  if (gpu != nullptr) {
    auto gpu_engine = gpu->create(model, MakeGpuOptions(f, so, model.config()));
    if (!gpu_engine.ok()) return gpu_engine.status();
    engine = *std::move(gpu_engine);
  } else {
    engine = std::make_unique<CpuBackend>(model);
  }
  if (engine == nullptr) return absl::InternalError("no engine backend");
  return engine;
}

WorkerServiceOptions MakeServiceOptions(const Flags& f) {
  WorkerServiceOptions wo;
  wo.push_allow = *PushAllowList::Parse(f.push_allow);  // checked by CheckFlags
  wo.push_first_chunk_timeout = absl::Seconds(f.push_first_chunk_timeout);
  wo.push_chunk_timeout = absl::Seconds(f.push_chunk_timeout);
  wo.max_push_streams = f.max_push_streams == 0 ? f.max_running : f.max_push_streams;
  return wo;
}

// The internal port: mTLS with the --internal-tls-* files (no peer without a certificate of the
// cluster CA gets a connection, so PushState, Decode, Release and GetLoad come only from cluster
// members), else plaintext.
absl::StatusOr<StartedServer> StartServer(const Flags& f, const RpcLimits& limits,
                                          WorkerService& service, HealthService& health) {
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  return StartGrpcServer(f.server, limits, InternalServerCredentials(f.server), {&service, &health},
                         [&](grpc::ServerBuilder& builder) {
                           CapUnownedStreams(builder);  // reflection streams (each holds a thread)
                           // Each streaming call holds a thread: two per admitted sequence (Decode
                           // + PushState, capped by --max-push-streams) plus room for probes,
                           // reflection (capped) and load queries. Beyond this, calls fail fast
                           // with RESOURCE_EXHAUSTED.
                           grpc::ResourceQuota quota("sambay-worker");
                           quota.SetMaxThreads(static_cast<int>(2 * f.max_running + 32));
                           builder.SetResourceQuota(quota);
                         });
}

// Drain: stop admitting, let admitted sequences finish, then stop the server.
void Drain(const Flags& f, const std::string& sig, grpc::Server& server, Scheduler& scheduler,
           WorkerService& service, HealthService& health) {
  Log(LogLevel::kInfo, "worker", "draining",
      {{"signal", sig},
       {"active", scheduler.active()},
       {"drain_timeout_seconds", f.server.drain_timeout}});
  health.SetServingStatus(kReadinessService, false);
  scheduler.StartDrain();
  WaitWhile([&] { return scheduler.active() > 0; }, absl::Seconds(f.server.drain_timeout),
            absl::Milliseconds(20));
  const int64_t left = scheduler.active();
  if (left > 0) {
    Log(LogLevel::kWarning, "worker", "drain timeout: ending sequences", {{"active", left}});
  }
  // Handlers of finished sequences are writing their last message: let them (up to 5 s), then
  // stop; anything still running after that is cancelled.
  WaitWhile([&] { return service.inflight() > 0; }, absl::Seconds(5), absl::Milliseconds(10));
  health.Shutdown();
  server.Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  server.Wait();
  Log(LogLevel::kInfo, "worker", "stopped", {{"unfinished", left}});
}

int Run(int argc, char** argv) {
  // SIGTERM/SIGINT are taken by sigwait below: block them before any thread starts.
  BlockTerminationSignals();
  TuneMallocForLargeBuffers();
  Flags f;
  FlagSet fs("sambay-worker", "SAMBAY_");
  Register(fs, f);
  WorkerRoles roles;
  if (auto exit_code = ParseAndCheckServerFlags(fs, "sambay-worker", argc, argv,
                                                [&] { return CheckFlags(f, &roles); })) {
    return *exit_code;
  }
  LogStarting("worker", SAMBAY_VERSION, fs);

  auto gpu = OpenDevice(f);
  if (!gpu.ok()) return CannotStart("worker", gpu.status());
  const absl::Time t0 = absl::Now();
  auto loaded = LoadModel(f);
  if (!loaded.ok()) return CannotStart("worker", loaded.status());
  std::unique_ptr<Model> model = *std::move(loaded);
  auto so = MakeSchedulerOptions(f, model->config());
  if (!so.ok()) return CannotStart("worker", so.status());
  auto made = MakeBackend(f, *gpu, *model, *so);
  if (!made.ok()) return CannotStart("worker", made.status());
  std::unique_ptr<EngineBackend> engine = *std::move(made);
  Log(LogLevel::kInfo, "worker", "model loaded",
      {{"fingerprint", engine->fingerprint()},
       {"seconds", absl::ToDoubleSeconds(absl::Now() - t0)},
       {"device", engine->device_name()},
       {"threads", model->num_threads()},
       {"tp", engine->tp_size()},
       {"max_context", so->max_context}});
  if (f.device == "cuda") model.reset();  // the weights live on the GPU now

  WorkerMetrics metrics(engine->fingerprint(), f.role, SAMBAY_VERSION);
  auto metrics_port = metrics.Serve(f.server.metrics_host, static_cast<int>(f.server.metrics_port),
                                    ServerMetricsOptions(f.server));
  if (!metrics_port.ok()) return CannotStart("worker", metrics_port.status());
  RpcLimits limits = ServerRpcLimits(f.server);
  limits.max_message_bytes = f.max_message_mib << 20;
  Scheduler scheduler(*engine, *so, &metrics);
  WorkerService service(*engine, scheduler, metrics, roles, limits, SAMBAY_VERSION,
                        MakeServiceOptions(f));
  HealthService health;
  HealthMirror health_mirror(&health);
  auto health_port = StartHealthServer(f.server, &health_mirror);
  if (!health_port.ok()) return CannotStart("worker", health_port.status());
  auto started = StartServer(f, limits, service, health);
  if (!started.ok()) return CannotStart("worker", started.status());
  grpc::Server& server = *started->server;
  health.SetServingStatus("", true);
  health.SetServingStatus(kReadinessService, true);
  const ServingPorts ports{started->port, *metrics_port,
                           health_port->server ? health_port->port : -1};
  if (absl::Status s = AnnounceServing("worker", f.server, ports, {{"role", f.role}}); !s.ok()) {
    return CannotStart("worker", s);
  }
  Drain(f, WaitForTerminationSignal(), server, scheduler, service, health);
  return 0;
}

}  // namespace
}  // namespace sambay

int main(int argc, char** argv) { return sambay::Run(argc, argv); }
