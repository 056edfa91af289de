// sambay-handoff-bench: the prefill -> decode state handoff on loopback, through a real
// sambay-worker process.
//
//   sambay-handoff-bench --model DIR [--tokens 2048,32768] [--reps 3] [--warmup 1]
//                        [--worker-bin PATH]
//                        [--worker-max-context 40000] [--state-memory-mib 4096]
//                        [--chunk-bytes 4194304] [--worker-log PATH]
//
// The bench plays the prefill worker. It starts `sambay-worker --role decode` on 127.0.0.1
// (ports chosen by the kernel, read back from its --port-file), asks GetInfo for the model
// fingerprint, and builds a synthetic SequenceState of the model's shape for each --tokens
// value N: random fp32 in every Mamba conv/SSM state, every SWA ring and N rows of global K/V
// (the content is synthetic: no prefill runs). Then, --warmup untimed and --reps timed times per
// N:
//   0. wait until GetLoad says the worker is idle (nothing running or waiting);
//   1. Decode(handle, prompt_tokens = N, max_new_tokens = 1, greedy) on the worker; wait for
//      its `reserved` message (not timed);
//   2. timed: ExportState (export) + worker/state_push.h PushState (transfer: the chunks over
//      loopback TCP, and the worker's strict validation and import before it acknowledges);
//   3. read the Decode stream to its end: the worker runs one decode step on the imported state
//      and streams one token and DecodeDone (whose transfer_bytes must equal the bytes pushed).
//      Not timed (its duration is printed per rep); waiting for it keeps the decode step from
//      overlapping the next handoff (a Release would not stop a step already running).
// Wire bytes = the sum of chunk frames (payload + 16-byte header each), as TransferResult
// counts them. The analytic size is computed here from the config fields with the formula of
// docs/model-spec.md "Decode-time state per sequence" (at fp32), independently of
// StatePayloadBytes (printed as a cross-check).
// The loopback column is the kernel's byte count of the `lo` interface over the push
// (/proc/net/dev: gRPC, HTTP/2 and TCP/IP framing and acks included; system-wide, so other
// loopback traffic on the machine adds to it).
//
// Prints a Markdown table (medians over reps) and one PASS/FAIL line per target:
// wire bytes at most 1% over the analytic size; at least 1 GB/s end to end
// (wire bytes / (export seconds + PushState's transfer seconds, which include the import)).
// Exit status 0 when both pass, 2 when a target fails, 1 on error.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/grpc_channel.h"
#include "common/grpc_status.h"
#include "common/server_util.h"
#include "common/status_macros.h"
#include "common/tls.h"
#include "engine/config.h"
#include "engine/state.h"
#include "engine/state_io.h"
#include "nlohmann/json.hpp"
#include "sambay/v1/worker.grpc.pb.h"
#include "tools/bench_common.h"
#include "tools/cli_util.h"
#include "worker/state_push.h"

ABSL_FLAG(std::string, model, "", "model directory (required; the worker loads it too)");
ABSL_FLAG(std::string, worker_bin, "",
          "sambay-worker binary; default: sambay-worker next to this program");
ABSL_FLAG(std::string, tokens, "2048,32768", "context sizes (tokens consumed by the state)");
ABSL_FLAG(int32_t, reps, 3, "handoffs per context size (the table shows medians)");
ABSL_FLAG(int32_t, warmup, 1, "untimed handoffs per context size before the timed ones");
ABSL_FLAG(int64_t, worker_max_context, 40000, "the worker's --max-context");
ABSL_FLAG(int64_t, state_memory_mib, 4096, "the worker's --state-memory-mib");
ABSL_FLAG(int64_t, lease_timeout, 60, "the worker's --lease-timeout (seconds)");
ABSL_FLAG(int64_t, chunk_bytes, 4 << 20, "largest state chunk, frame included");
ABSL_FLAG(std::string, worker_log, "",
          "file for the worker's stdout/stderr; default: a temporary file, removed at exit");
ABSL_FLAG(double, startup_timeout, 900, "seconds to wait for the worker's port file");
ABSL_FLAG(uint64_t, seed, 1, "seed of the synthetic state's random content");
ABSL_FLAG(std::string, internal_tls_cert, "",
          "with --internal-tls-key and --internal-tls-ca: the worker's port is mTLS and the bench "
          "pushes over mTLS with this certificate (it needs the DNS SAN sambay-internal)");
ABSL_FLAG(std::string, internal_tls_key, "", "key of --internal-tls-cert");
ABSL_FLAG(std::string, internal_tls_ca, "", "the cluster CA of --internal-tls-cert");

namespace sambay {
namespace {

namespace pb = ::sambay::v1;
using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The last `lines` lines of a file, for error messages.
std::string Tail(const std::string& path, int lines) {
  const std::string text = ReadFile(path);
  std::vector<std::string> all = absl::StrSplit(text, '\n', absl::SkipEmpty());
  const size_t from = all.size() > static_cast<size_t>(lines) ? all.size() - lines : 0;
  return absl::StrJoin(all.begin() + from, all.end(), "\n");
}

std::string SelfDir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, n);
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// Bytes transmitted by the loopback interface so far (/proc/net/dev), or -1.
int64_t LoopbackBytes() {
  std::ifstream in("/proc/net/dev");
  std::string line;
  while (std::getline(in, line)) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    name.erase(0, name.find_first_not_of(' '));
    if (name != "lo") continue;
    std::istringstream fields(line.substr(colon + 1));
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes ...
    long long v[9] = {};
    for (long long& x : v) fields >> x;
    return fields ? v[8] : -1;
  }
  return -1;
}

// CPU time, in clock ticks, that the whole machine spent busy (/proc/stat) and that process
// `pid` (all its threads) used (/proc/PID/stat), so a rep can report how much CPU other
// processes took while it ran (the machine is small and may be shared). -1 if unreadable.
int64_t MachineBusyTicks() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  if (!(in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal) ||
      cpu != "cpu") {
    return -1;
  }
  return user + nice + system + irq + softirq + steal;
}

struct ProcessCounters {
  int64_t ticks = -1;         // utime + stime
  int64_t minor_faults = -1;  // page faults served without I/O (first touches, mostly)
};

ProcessCounters ReadProcessCounters(pid_t pid) {
  ProcessCounters out;
  const std::string text = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos || paren + 2 > text.size()) return out;
  std::istringstream fields(text.substr(paren + 2));
  std::string f;
  long long minflt = 0, utime = 0, stime = 0;
  // Fields 3..9 (state .. flags), minflt (10), cminflt .. cmajflt (11..13), utime (14), stime.
  for (int i = 3; i <= 9; ++i) fields >> f;
  fields >> minflt;
  for (int i = 11; i <= 13; ++i) fields >> f;
  if (!(fields >> utime >> stime)) return out;
  out.ticks = utime + stime;
  out.minor_faults = minflt;
  return out;
}

// ---- The worker process ---------------------------------------------------------------------

class WorkerProcess {
 public:
  ~WorkerProcess() { Stop(); }

  // Starts `bin args...` with stdout and stderr appended to `log_path`. The child gets SIGKILL
  // if this process dies first.
  static absl::StatusOr<std::unique_ptr<WorkerProcess>> Start(const std::string& bin,
                                                              const std::vector<std::string>& args,
                                                              const std::string& log_path) {
    if (access(bin.c_str(), X_OK) != 0) {
      return absl::NotFoundError(absl::StrCat(
          "worker binary ", bin, " is not executable (--worker-bin): ", std::strerror(errno)));
    }
    std::vector<std::string> argv_storage = {bin};
    argv_storage.insert(argv_storage.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_storage) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = getpid();
    std::fflush(nullptr);
    const pid_t pid = fork();
    if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
      }
      execv(argv[0], argv.data());
      std::fprintf(stderr, "exec %s: %s\n", argv[0], std::strerror(errno));
      _exit(127);
    }
    auto w = std::unique_ptr<WorkerProcess>(new WorkerProcess);
    w->pid_ = pid;
    w->log_path_ = log_path;
    return w;
  }

  // Waits until the port file holds {"grpc_port": N, ...} with N > 0; returns N.
  absl::StatusOr<int> WaitForPort(const std::string& port_file, double timeout_s) {
    const auto t0 = Clock::now();
    while (Since(t0) < timeout_s) {
      int wstatus = 0;
      if (waitpid(pid_, &wstatus, WNOHANG) == pid_) {
        pid_ = -1;
        return absl::UnavailableError(absl::StrCat("sambay-worker exited (", DescribeExit(wstatus),
                                                   ") before serving; the end of its log ",
                                                   log_path_, ":\n", Tail(log_path_, 15)));
      }
      struct stat sb;
      if (stat(port_file.c_str(), &sb) == 0 && sb.st_size > 0) {
        const nlohmann::json j = nlohmann::json::parse(ReadFile(port_file), nullptr, false);
        if (!j.is_discarded() && j.is_object() && j.contains("grpc_port") &&
            j["grpc_port"].is_number_integer() && j["grpc_port"].get<int64_t>() > 0) {
          return static_cast<int>(j["grpc_port"].get<int64_t>());
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return absl::DeadlineExceededError(
        absl::StrCat("sambay-worker wrote no port file ", port_file, " within ", timeout_s,
                     " s; the end of its log ", log_path_, ":\n", Tail(log_path_, 15)));
  }

  // SIGTERM, up to 20 s to exit, then SIGKILL. Returns how it ended ("" if not running).
  std::string Stop() {
    if (pid_ <= 0) return "";
    kill(pid_, SIGTERM);
    int wstatus = 0;
    const auto t0 = Clock::now();
    while (true) {
      const pid_t r = waitpid(pid_, &wstatus, WNOHANG);
      if (r == pid_ || r < 0) break;
      if (Since(t0) > 20) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &wstatus, 0);
        pid_ = -1;
        return "did not exit within 20 s of SIGTERM; killed";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    pid_ = -1;
    return DescribeExit(wstatus);
  }

  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }

 private:
  WorkerProcess() = default;
  static std::string DescribeExit(int wstatus) {
    if (WIFEXITED(wstatus)) return absl::StrCat("exit status ", WEXITSTATUS(wstatus));
    if (WIFSIGNALED(wstatus)) return absl::StrCat("signal ", WTERMSIG(wstatus));
    return "unknown";
  }
  pid_t pid_ = -1;
  std::string log_path_;
};

// ---- Sizes and the synthetic state ----------------------------------------------------------

struct LayerCounts {
  int mamba = 0, swa = 0, global = 0;
};

LayerCounts CountLayers(const ModelConfig& c) {
  LayerCounts n;
  for (LayerKind k : c.layers) {
    n.mamba += k == LayerKind::kMamba;
    n.swa += k == LayerKind::kSwa;
    n.global += k == LayerKind::kGlobal;
  }
  return n;
}

// docs/model-spec.md "Decode-time state per sequence" at fp32 (4 bytes per element), from the
// raw config fields: per Mamba layer conv [d_conv - 1, d_inner] + ssm [d_inner, d_state]; per
// SWA layer K and V of the live window, 2 x min(n, W) x kv_dim; the global layer's K and V,
// 2 x n x kv_dim.
int64_t AnalyticStateBytes(const ModelConfig& c, int64_t n) {
  const LayerCounts layers = CountLayers(c);
  const int64_t d_inner = c.expand * c.hidden_size;
  const int64_t kv_dim = c.num_kv_heads * (c.hidden_size / c.num_heads);
  const int64_t mamba = (c.d_conv - 1) * d_inner + d_inner * c.d_state;
  const int64_t swa = 2 * std::min(n, c.sliding_window) * kv_dim;
  const int64_t global = 2 * n * kv_dim;
  return 4 * (layers.mamba * mamba + layers.swa * swa + layers.global * global);
}

// splitmix64, and floats in [-1, 1).
struct Rng {
  uint64_t s;
  uint64_t Next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  void Fill(float* p, int64_t n) {
    for (int64_t i = 0; i < n; i += 2) {
      const uint64_t r = Next();
      p[i] = static_cast<float>(static_cast<int32_t>(r)) * (1.0f / 2147483648.0f);
      if (i + 1 < n)
        p[i + 1] = static_cast<float>(static_cast<int32_t>(r >> 32)) * (1.0f / 2147483648.0f);
    }
  }
};

std::unique_ptr<SequenceState> MakeState(const ModelConfig& c, int64_t n, uint64_t seed) {
  auto s = std::make_unique<SequenceState>(c);
  Rng rng{seed * 0x2545f4914f6cdd1dull + static_cast<uint64_t>(n)};
  for (int i = 0; i < c.num_layers; ++i) {
    if (c.layers[i] == LayerKind::kMamba) {
      rng.Fill(s->mamba[i].conv.data(), static_cast<int64_t>(s->mamba[i].conv.size()));
      rng.Fill(s->mamba[i].ssm.data(), static_cast<int64_t>(s->mamba[i].ssm.size()));
    } else if (c.layers[i] == LayerKind::kSwa) {
      rng.Fill(s->swa[i].k.data(), static_cast<int64_t>(s->swa[i].k.size()));
      rng.Fill(s->swa[i].v.data(), static_cast<int64_t>(s->swa[i].v.size()));
    }
  }
  s->global.Resize(n);
  const int64_t kv_dim = c.kv_dim();
  for (int64_t p = 0; p < n; ++p) {
    rng.Fill(s->global.k(p), kv_dim);
    rng.Fill(s->global.v(p), kv_dim);
  }
  s->num_tokens = n;
  s->last_token = static_cast<int32_t>(rng.Next() % static_cast<uint64_t>(c.vocab_size));
  for (uint64_t& w : s->rng_state) w = rng.Next();
  return s;
}

// ---- One handoff ------------------------------------------------------------------------------

int64_t VarintBytes(uint64_t v) {
  int64_t n = 1;
  for (; v >= 128; v >>= 7) ++n;
  return n;
}

// Polls GetLoad until nothing is running or waiting on the worker.
absl::Status WaitIdle(pb::Worker::Stub& stub) {
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (true) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    pb::WorkerLoad load;
    SAMBAY_RETURN_IF_ERROR(FromGrpcStatus(stub.GetLoad(&ctx, pb::GetLoadRequest(), &load)));
    if (load.running() == 0 && load.waiting() == 0) return absl::OkStatus();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("the worker is still busy after 60 s: ", load.ShortDebugString()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

struct Rep {
  int64_t wire_bytes = 0;  // sum of chunk frames
  int64_t chunks = 0;
  int64_t grpc_bytes = 0;  // serialized StateChunk messages + 5-byte gRPC message prefixes
  int64_t loopback_bytes = -1;
  double export_s = 0;
  double transfer_s = 0;     // PushState: first write to acknowledgement (includes import)
  double import_s = 0;       // as the worker reported it
  double total_s = 0;        // one clock around export + PushState (call overhead included)
  double decode_s = 0;       // from the push's acknowledgement to the end of the Decode stream
  double others_cpu_s = -1;  // CPU used by other processes during export + PushState
  int64_t bench_faults = -1, worker_faults = -1;  // minor page faults meanwhile
  std::string stream_note;
};

absl::StatusOr<Rep> Handoff(pb::Worker::Stub& stub, const std::string& address,
                            const ModelConfig& config, const std::string& fingerprint,
                            const SequenceState& state, const std::string& handle,
                            size_t chunk_bytes, pid_t worker_pid) {
  const int64_t n = state.num_tokens;
  SAMBAY_RETURN_IF_ERROR(WaitIdle(stub));
  grpc::ClientContext dctx;
  dctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Minutes(10)));
  dctx.AddMetadata("x-request-id", handle);
  pb::DecodeRequest req;
  req.set_request_id(handle);
  req.set_handle(handle);
  req.set_prompt_tokens(static_cast<uint32_t>(n));
  req.set_max_new_tokens(1);
  pb::SamplingParams* smp = req.mutable_sampling();
  smp->set_temperature(0);
  smp->set_top_k(0);
  smp->set_top_p(1);
  smp->set_min_p(0);
  smp->set_repetition_penalty(1);
  smp->set_presence_penalty(0);
  smp->set_seed(0);
  std::unique_ptr<grpc::ClientReader<pb::DecodeResponse>> reader = stub.Decode(&dctx, req);
  pb::DecodeResponse resp;
  if (!reader->Read(&resp)) {
    const absl::Status st = FromGrpcStatus(reader->Finish());
    return absl::Status(st.code(), absl::StrCat("Decode(", handle, "): ", st.message(),
                                                " (stream ended before `reserved`)"));
  }
  if (!resp.has_reserved()) {
    dctx.TryCancel();
    reader->Finish();
    return absl::InternalError(absl::StrCat(
        "Decode(", handle, "): first message is not `reserved`: ", resp.ShortDebugString()));
  }

  Rep rep;
  const int64_t lo0 = LoopbackBytes();
  const int64_t busy0 = MachineBusyTicks();
  const ProcessCounters self0 = ReadProcessCounters(getpid()),
                        worker0 = ReadProcessCounters(worker_pid);
  const auto t0 = Clock::now();
  std::vector<std::string> chunks;
  SAMBAY_ASSIGN_OR_RETURN(chunks, ExportState(config, fingerprint, state, chunk_bytes));
  rep.export_s = Since(t0);
  rep.chunks = static_cast<int64_t>(chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i) {
    rep.wire_bytes += static_cast<int64_t>(chunks[i].size());
    // StateChunk as protobuf encodes it (handle only in the first message: tag, length, bytes),
    // plus gRPC's 5-byte message prefix.
    rep.grpc_bytes += 5 + 1 + VarintBytes(chunks[i].size()) + chunks[i].size();
    if (i == 0) rep.grpc_bytes += 1 + VarintBytes(handle.size()) + handle.size();
  }
  // PushState takes the chunks by value: move them (a copy would be timed as neither part).
  absl::StatusOr<PushResult> pushed =
      PushState(stub, handle, std::move(chunks), absl::Now() + absl::Minutes(5), handle, address);
  rep.total_s = Since(t0);
  const int64_t lo1 = LoopbackBytes();
  const int64_t busy1 = MachineBusyTicks();
  const ProcessCounters self1 = ReadProcessCounters(getpid()),
                        worker1 = ReadProcessCounters(worker_pid);
  if (busy0 >= 0 && busy1 >= 0 && self0.ticks >= 0 && self1.ticks >= 0 && worker0.ticks >= 0 &&
      worker1.ticks >= 0) {
    rep.others_cpu_s = std::max<int64_t>(0, (busy1 - busy0) - (self1.ticks - self0.ticks) -
                                                (worker1.ticks - worker0.ticks)) /
                       static_cast<double>(sysconf(_SC_CLK_TCK));
    rep.bench_faults = self1.minor_faults - self0.minor_faults;
    rep.worker_faults = worker1.minor_faults - worker0.minor_faults;
  }
  if (!pushed.ok()) {
    dctx.TryCancel();
    reader->Finish();
    return pushed.status();
  }
  if (lo0 >= 0 && lo1 >= lo0) rep.loopback_bytes = lo1 - lo0;
  rep.transfer_s = pushed->transfer_seconds;
  rep.import_s = pushed->import_seconds;
  if (pushed->bytes != rep.wire_bytes) {
    return absl::InternalError(absl::StrCat("PushState sent ", pushed->bytes,
                                            " bytes but the chunks hold ", rep.wire_bytes));
  }

  const auto td = Clock::now();
  int64_t tokens = 0;
  bool done = false;
  while (reader->Read(&resp)) {
    if (resp.has_tokens()) tokens += resp.tokens().token_ids_size();
    if (resp.has_done()) {
      done = true;
      const pb::DecodeDone& d = resp.done();
      if (d.transfer_bytes() != static_cast<uint64_t>(rep.wire_bytes)) {
        rep.stream_note = absl::StrCat("DecodeDone.transfer_bytes ", d.transfer_bytes(),
                                       " != pushed ", rep.wire_bytes);
      }
    }
  }
  const absl::Status st = FromGrpcStatus(reader->Finish());
  if (!st.ok()) {
    return absl::Status(st.code(),
                        absl::StrCat("Decode(", handle, ") after the push: ", st.message()));
  }
  if (!done || tokens != 1) {
    return absl::InternalError(absl::StrCat("Decode(", handle, "): stream ended with ", tokens,
                                            " tokens and ", done ? "" : "no ", "DecodeDone"));
  }
  rep.decode_s = Since(td);
  return rep;
}

// ---- Main -------------------------------------------------------------------------------------

std::string Mib(int64_t bytes) { return absl::StrFormat("%.2f", bytes / 1048576.0); }

// The checked flags and the model's config.
struct Options {
  std::string model_dir;
  ModelConfig config;
  std::vector<int32_t> sizes;  // --tokens
  int reps = 0;
  int warmup = 0;
  int64_t max_context = 0;  // --worker-max-context
  size_t chunk_bytes = 0;
};

// The --internal-tls-* files (all empty: plaintext).
TlsFiles InternalTlsFiles() {
  return {absl::GetFlag(FLAGS_internal_tls_cert), absl::GetFlag(FLAGS_internal_tls_key),
          absl::GetFlag(FLAGS_internal_tls_ca)};
}

absl::StatusOr<Options> ReadOptions() {
  Options o;
  o.model_dir = absl::GetFlag(FLAGS_model);
  if (o.model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  SAMBAY_ASSIGN_OR_RETURN(o.config, LoadModelConfig(o.model_dir));
  SAMBAY_ASSIGN_OR_RETURN(o.sizes, ParseIds(absl::GetFlag(FLAGS_tokens), "--tokens"));
  o.reps = absl::GetFlag(FLAGS_reps);
  o.warmup = absl::GetFlag(FLAGS_warmup);
  if (o.sizes.empty() || o.reps < 1 || o.warmup < 0) {
    return absl::InvalidArgumentError("need --tokens, --reps >= 1 and --warmup >= 0");
  }
  o.max_context = absl::GetFlag(FLAGS_worker_max_context);
  for (int32_t n : o.sizes) {
    if (n < 1 || n + 1 > o.max_context) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tokens: ", n, " must be in [1, --worker-max-context - 1 = ", o.max_context - 1, "]"));
    }
  }
  o.chunk_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_chunk_bytes));
  if (const TlsFiles tls = InternalTlsFiles(); !tls.empty()) {
    SAMBAY_RETURN_IF_ERROR(CheckTlsFiles(tls, {.identity = true, .ca = true}, "--internal-tls"));
  }
  return o;
}

// The worker's files: a temporary directory with its port file and (without --worker-log) its
// log.
struct WorkerFiles {
  std::string tmp_dir, port_file, log_path;
  bool temp_log = false;  // the log is in tmp_dir
};

absl::StatusOr<WorkerFiles> MakeWorkerFiles() {
  char tmpl[] = "/tmp/sambay-handoff-bench.XXXXXX";
  if (mkdtemp(tmpl) == nullptr)
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  WorkerFiles files;
  files.tmp_dir = tmpl;
  files.port_file = files.tmp_dir + "/worker-port.json";
  files.log_path = absl::GetFlag(FLAGS_worker_log);
  files.temp_log = files.log_path.empty();
  if (files.temp_log) files.log_path = files.tmp_dir + "/worker.log";
  return files;
}

// Starts `sambay-worker --role decode` on 127.0.0.1 (ports chosen by the kernel).
absl::StatusOr<std::unique_ptr<WorkerProcess>> StartWorker(const Options& o,
                                                           const WorkerFiles& files) {
  std::string bin = absl::GetFlag(FLAGS_worker_bin);
  if (bin.empty()) bin = SelfDir() + "/sambay-worker";
  std::vector<std::string> args = {"--model",
                                   o.model_dir,
                                   "--role",
                                   "decode",
                                   "--host",
                                   "127.0.0.1",
                                   "--port",
                                   "0",
                                   "--metrics-port",
                                   "0",
                                   "--port-file",
                                   files.port_file,
                                   "--max-context",
                                   absl::StrCat(o.max_context),
                                   "--state-memory-mib",
                                   absl::StrCat(absl::GetFlag(FLAGS_state_memory_mib)),
                                   "--lease-timeout",
                                   absl::StrCat(absl::GetFlag(FLAGS_lease_timeout))};
  const TlsFiles tls = InternalTlsFiles();
  if (!tls.empty()) {
    for (const std::string& a :
         {std::string("--internal-tls-cert"), tls.cert, std::string("--internal-tls-key"), tls.key,
          std::string("--internal-tls-ca"), tls.ca}) {
      args.push_back(a);
    }
  }
  std::fprintf(stderr, "starting %s %s\n", bin.c_str(), absl::StrJoin(args, " ").c_str());
  return WorkerProcess::Start(bin, args, files.log_path);
}

// Stops the worker and removes its files; a temporary log (and so its directory) stays when
// keep_log. Returns how the worker ended.
std::string StopWorker(WorkerProcess& worker, const WorkerFiles& files, bool keep_log) {
  const std::string how = worker.Stop();
  std::remove(files.port_file.c_str());
  if (files.temp_log && !keep_log) std::remove(files.log_path.c_str());
  if (!files.temp_log || !keep_log) rmdir(files.tmp_dir.c_str());
  return how;
}

// The worker's GetInfo, checked against the model's config.json.
absl::StatusOr<pb::WorkerInfo> GetWorkerInfo(pb::Worker::Stub& stub, const Options& o) {
  pb::WorkerInfo info;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    ctx.set_wait_for_ready(true);
    SAMBAY_RETURN_IF_ERROR(FromGrpcStatus(stub.GetInfo(&ctx, pb::GetInfoRequest(), &info)));
  }
  if (static_cast<int>(info.num_layers()) != o.config.num_layers ||
      static_cast<int64_t>(info.vocab_size()) != o.config.vocab_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the worker serves ", info.num_layers(), " layers / vocab ", info.vocab_size(), ", but ",
        o.model_dir, "/config.json says ", o.config.num_layers, " / ", o.config.vocab_size));
  }
  return info;
}

// The model and worker lines above the table.
void PrintSetup(const Options& o, const pb::WorkerInfo& info) {
  const ModelConfig& config = o.config;
  const LayerCounts layers = CountLayers(config);
  std::printf(
      "model: %s; %d layers (%d Mamba, %d SWA window %lld, %d global), d_inner %lld, d_state "
      "%lld, d_conv %lld, kv_dim %lld; fp32 state\n",
      o.model_dir.c_str(), config.num_layers, layers.mamba, layers.swa,
      (long long)config.sliding_window, layers.global, (long long)config.d_inner,
      (long long)config.d_state, (long long)config.d_conv, (long long)config.kv_dim());
  std::printf(
      "worker: %s %s, role decode, fingerprint %s, state bytes fixed %llu + %llu/token; "
      "chunks of %zu B; %d untimed + %d timed handoffs per size; Decode stream %s\n\n",
      info.model_type().c_str(), info.version().c_str(), info.fingerprint().c_str(),
      (unsigned long long)info.state_bytes_fixed(),
      (unsigned long long)info.state_bytes_per_token(), o.chunk_bytes, o.warmup, o.reps,
      "read to its end after each push (one decode step, not timed)");
  std::fflush(stdout);
}

// The progress line of timed rep r on stderr.
void PrintRep(int r, const Rep& rep) {
  std::fprintf(stderr,
               "  rep %d: %lld B in %lld chunks (gRPC messages %lld B, loopback %lld B); "
               "export %.1f ms, transfer+import %.1f ms (import %.1f ms), %.2f GB/s; wall "
               "clock around both %.1f ms; minor page faults: bench %lld, worker %lld; other "
               "processes' CPU meanwhile %.0f ms; then the decode step %.0f ms (not timed)%s%s\n",
               r, (long long)rep.wire_bytes, (long long)rep.chunks, (long long)rep.grpc_bytes,
               (long long)rep.loopback_bytes, 1e3 * rep.export_s, 1e3 * rep.transfer_s,
               1e3 * rep.import_s, rep.wire_bytes / (rep.export_s + rep.transfer_s) / 1e9,
               1e3 * rep.total_s, (long long)rep.bench_faults, (long long)rep.worker_faults,
               1e3 * rep.others_cpu_s, 1e3 * rep.decode_s, rep.stream_note.empty() ? "" : "; ",
               rep.stream_note.c_str());
}

// The timed handoffs of one context size.
struct Row {
  int64_t n = 0, analytic = 0, payload = 0;
  std::vector<Rep> reps;
};

// For each --tokens size: the synthetic state, then the untimed and the timed handoffs.
absl::StatusOr<std::vector<Row>> MeasureRows(pb::Worker::Stub& stub, const std::string& address,
                                             const Options& o, const std::string& fingerprint,
                                             pid_t worker_pid) {
  std::vector<Row> rows;
  for (int32_t n : o.sizes) {
    Row row;
    row.n = n;
    row.analytic = AnalyticStateBytes(o.config, n);
    row.payload = StatePayloadBytes(o.config, n);
    const auto tb = Clock::now();
    std::unique_ptr<SequenceState> state = MakeState(o.config, n, absl::GetFlag(FLAGS_seed));
    std::fprintf(stderr, "%d tokens: synthetic state built in %.2f s\n", n, Since(tb));
    for (int r = -o.warmup; r < o.reps; ++r) {
      const std::string handle = absl::StrCat("handoff-bench-", getpid(), "-", n, "-",
                                              r < 0 ? "warmup" : "rep", r + o.warmup);
      Rep rep;
      SAMBAY_ASSIGN_OR_RETURN(rep, Handoff(stub, address, o.config, fingerprint, *state, handle,
                                           o.chunk_bytes, worker_pid));
      if (r < 0) {
        std::fprintf(stderr, "  warm-up: %.1f ms; then the decode step %.0f ms\n",
                     1e3 * rep.total_s, 1e3 * rep.decode_s);
        continue;
      }
      PrintRep(r, rep);
      row.reps.push_back(std::move(rep));
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

// The largest wire-bytes overhead (%) and the lowest end-to-end rate (GB/s) over the rows, with
// their sizes.
struct Worst {
  double overhead = -1, rate = -1;
  int64_t overhead_n = 0, rate_n = 0;
};

// The Markdown table (medians over the reps); adds the reps' stream notes to `notes`.
Worst PrintTable(const std::vector<Row>& rows, std::vector<std::string>* notes) {
  std::printf(
      "| tokens | analytic MiB | wire MiB | overhead %% | loopback MiB (overhead %%) | export "
      "ms | transfer+import ms | import ms (dest) | end-to-end GB/s | other processes' CPU ms "
      "|\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  Worst worst;
  for (const Row& row : rows) {
    std::vector<double> wire, lo, ex, tr, im, rate, others;
    for (const Rep& r : row.reps) {
      wire.push_back(static_cast<double>(r.wire_bytes));
      if (r.loopback_bytes >= 0) lo.push_back(static_cast<double>(r.loopback_bytes));
      ex.push_back(r.export_s);
      tr.push_back(r.transfer_s);
      im.push_back(r.import_s);
      rate.push_back(r.wire_bytes / (r.export_s + r.transfer_s));
      if (r.others_cpu_s >= 0) others.push_back(r.others_cpu_s);
      if (!r.stream_note.empty()) notes->push_back(r.stream_note);
    }
    const double w = Median(wire);
    const double overhead = 100.0 * (w - row.analytic) / row.analytic;
    const double gbps = Median(rate) / 1e9;
    std::string lo_text = "n/a";
    if (!lo.empty()) {
      const double l = Median(lo);
      lo_text = absl::StrFormat("%.2f (%.3f%%)", l / 1048576.0,
                                100.0 * (l - row.analytic) / row.analytic);
    }
    const std::string others_text =
        others.empty() ? "n/a" : absl::StrFormat("%.0f", 1e3 * Median(others));
    std::printf("| %lld | %s | %.2f | %.4f | %s | %.1f | %.1f | %.1f | %.2f | %s |\n",
                (long long)row.n, Mib(row.analytic).c_str(), w / 1048576.0, overhead,
                lo_text.c_str(), 1e3 * Median(ex), 1e3 * Median(tr), 1e3 * Median(im), gbps,
                others_text.c_str());
    if (overhead > worst.overhead) worst.overhead = overhead, worst.overhead_n = row.n;
    if (worst.rate < 0 || gbps < worst.rate) worst.rate = gbps, worst.rate_n = row.n;
  }
  std::printf("\n");
  return worst;
}

// The size cross-checks, the notes and one PASS/FAIL line per target; true when both pass.
bool PrintChecks(const std::vector<Row>& rows, const Worst& worst,
                 std::vector<std::string>* notes) {
  for (const Row& row : rows) {
    std::printf(
        "check %lld tokens: analytic %lld B, StatePayloadBytes %lld B (%s); wire = payload + "
        "%lld B (stream header, descriptors, %lld chunk frames); gRPC messages %lld B\n",
        (long long)row.n, (long long)row.analytic, (long long)row.payload,
        row.analytic == row.payload ? "equal" : "DIFFERENT",
        (long long)(row.reps[0].wire_bytes - row.payload), (long long)row.reps[0].chunks,
        (long long)row.reps[0].grpc_bytes);
    if (row.analytic != row.payload) notes->push_back("analytic size != StatePayloadBytes");
  }
  for (const std::string& note : *notes) std::printf("note: %s\n", note.c_str());
  const bool size_ok = worst.overhead <= 1.0;
  const bool rate_ok = worst.rate >= 1.0;
  std::printf(
      "%s  wire bytes at most 1%% over the analytic state size: worst %.4f%% (%lld tokens)\n",
      size_ok ? "PASS" : "FAIL", worst.overhead, (long long)worst.overhead_n);
  std::printf(
      "%s  end to end (export + transfer + import) at least 1 GB/s: worst %.2f GB/s (%lld "
      "tokens)\n",
      rate_ok ? "PASS" : "FAIL", worst.rate, (long long)worst.rate_n);
  std::fflush(stdout);
  return size_ok && rate_ok;
}

// The benchmark against the running worker at `address`; sets *exit_code (0 when both targets
// pass, 2 when one fails).
absl::Status Bench(const Options& o, const std::string& address, pid_t worker_pid, int* exit_code) {
  RpcLimits limits;
  if (const TlsFiles tls = InternalTlsFiles(); !tls.empty()) {
    limits.credentials = MakeTlsChannelCredentials(tls, absl::Seconds(60));
    limits.tls_server_name = "sambay-internal";
  }
  auto channel = MakeChannel(address, limits);
  auto stub = pb::Worker::NewStub(channel);
  pb::WorkerInfo info;
  SAMBAY_ASSIGN_OR_RETURN(info, GetWorkerInfo(*stub, o));
  PrintSetup(o, info);
  std::vector<Row> rows;
  SAMBAY_ASSIGN_OR_RETURN(rows, MeasureRows(*stub, address, o, info.fingerprint(), worker_pid));
  std::vector<std::string> notes;
  const Worst worst = PrintTable(rows, &notes);
  *exit_code = PrintChecks(rows, worst, &notes) ? 0 : 2;
  return absl::OkStatus();
}

absl::Status Run(int* exit_code) {
  Options o;
  SAMBAY_ASSIGN_OR_RETURN(o, ReadOptions());
  WorkerFiles files;
  SAMBAY_ASSIGN_OR_RETURN(files, MakeWorkerFiles());
  std::unique_ptr<WorkerProcess> worker;
  SAMBAY_ASSIGN_OR_RETURN(worker, StartWorker(o, files));
  const auto t_start = Clock::now();
  absl::StatusOr<int> port =
      worker->WaitForPort(files.port_file, absl::GetFlag(FLAGS_startup_timeout));
  if (!port.ok()) {
    StopWorker(*worker, files, true);
    return port.status();
  }
  const std::string address = absl::StrCat("127.0.0.1:", *port);
  std::fprintf(stderr, "worker pid %d serving on %s after %.1f s (log %s)\n", worker->pid(),
               address.c_str(), Since(t_start), files.log_path.c_str());

  const absl::Status result = Bench(o, address, worker->pid(), exit_code);
  const std::string how = StopWorker(*worker, files, !result.ok());
  std::fprintf(stderr, "worker stopped: %s\n", how.c_str());
  if (!result.ok()) {
    return absl::Status(result.code(),
                        absl::StrCat(result.message(), " (worker log: ", files.log_path, ")"));
  }
  return result;
}

}  // namespace
}  // namespace sambay

int main(int argc, char** argv) {
  // The bench exports states as a prefill worker would: same allocator settings.
  sambay::TuneMallocForLargeBuffers();
  sambay::ParseFlags(argc, argv, "sambay-handoff-bench --model DIR [flags]");
  int exit_code = 0;
  const absl::Status st = sambay::Run(&exit_code);
  if (!st.ok()) return sambay::ReportError("sambay-handoff-bench", st);
  return exit_code;
}
