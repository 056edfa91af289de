// sambay-gpu-bench: CUDA engine throughput on a checkpoint, beside the HBM and matrix-unit
// floors measured on the same GPU in the same run.
//
//   sambay-gpu-bench --model DIR [--device 0] [--concurrency 1,8,32,64] [--prompt 2048]
//                    [--decode-steps 256] [--prefill-lengths 2048,32768] [--prefill-chunk 2048]
//                    [--check-tokens 64 [--check-steps 8] [--check-only]] [--json FILE]
//
// First the two ceilings: device-to-device copy bandwidth (cudaMemcpyAsync of 1 GiB, bytes read
// plus written per second, best of 10) and a bf16 GEMM rate (8192^3 through the engine's
// cuBLASLt path, random data, best of 10). Then:
//   decode: one sequence prefilled with --prompt tokens is cloned into every slot; at each
//   concurrency c, --decode-steps greedy decode steps (argmax on the device) are timed after
//   two warm-up steps, once enqueued directly and once replayed from a CUDA graph. HBM floor per
//   step = (weight matrix bytes + c * state bytes one step reads and writes at the mean context) /
//   copy bandwidth. prefill: one sequence of each length, chunked; matrix-unit floor = the FLOPs of
//   the pass (GEMMs of layers 0..N/2+1 over every token, attention QK and PV, the cross-decoder and
//   LM head on the last token) / the measured GEMM rate.
// --check-tokens first compares the GPU's bf16 logits with the CPU engine's f32 logits on the
// same checkpoint (prefill, then greedy decode steps fed the CPU's ids), worst row error against
// --check-tolerance. Prints a Markdown table on stdout; --json writes the same numbers, rewritten
// after every row. A row that fails is printed and recorded under "errors"; the rest still run
// (direct rows first, then the CUDA-graph rows); the exit status is 1 if any row failed.
#include <cuda_profiler_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "engine/cpu/precision.h"
#include "engine/cuda/cuda_model.h"
#include "engine/cuda/gemm.h"
#include "engine/dtype.h"
#include "engine/model.h"
#include "nlohmann/json.hpp"
#include "tools/bench_common.h"
#include "tools/cli_util.h"

ABSL_FLAG(std::string, model, "", "model directory");
ABSL_FLAG(int32_t, device, 0, "CUDA device");
ABSL_FLAG(std::string, concurrency, "1,8,32,64", "decode batch sizes");
ABSL_FLAG(int32_t, prompt, 2048, "prompt tokens per sequence before decode");
ABSL_FLAG(int32_t, decode_steps, 256, "timed decode steps per concurrency");
ABSL_FLAG(std::string, prefill_lengths, "2048,32768", "prefill prompt lengths");
ABSL_FLAG(int64_t, prefill_chunk, 2048, "prefill chunk size (rows per forward pass)");
ABSL_FLAG(std::string, json, "", "also write the results as JSON to this file");
ABSL_FLAG(int32_t, threads, 8, "CPU threads for loading the checkpoint and the CPU check");
ABSL_FLAG(int32_t, check_tokens, 0,
          "before timing: prefill this many tokens on the GPU and on the CPU engine (f32) and "
          "compare the logits, then --check-steps decode steps (0 = no check)");
ABSL_FLAG(int32_t, check_steps, 8, "decode steps compared by --check-tokens");
ABSL_FLAG(double, check_tolerance, 7.5e-2,
          "largest relative logits error (||gpu - cpu|| / ||cpu|| per row) the check accepts "
          "against the fp32 CPU engine; the default is 1.5x the 5.0% measured on the 32-layer "
          "phi4-mini-flash shape with random bf16 weights (docs/gpu.md \"Precision\")");
ABSL_FLAG(double, check_emulated_tolerance, 5e-2,
          "the same against the CPU engine rounding at the GPU's bf16 points (measured 3.6%)");
ABSL_FLAG(bool, check_only, false, "run the ceilings and the --check-tokens check, no timing");
ABSL_FLAG(bool, graph_rows, true, "also time every decode row replayed from CUDA graphs");
ABSL_FLAG(std::string, profile, "",
          "decode | prefill: bracket that phase's timed work with cudaProfilerStart/Stop (for "
          "ncu --profile-from-start off; use --decode-steps 1); the other phase is skipped");

namespace sambay {
namespace {

using Clock = std::chrono::steady_clock;

// Best of `reps` event-timed runs of fn (seconds).
template <typename Fn>
absl::StatusOr<double> BestTime(cudaStream_t st, int reps, const Fn& fn) {
  cudaEvent_t a, b;
  SAMBAY_CUDA_RETURN_IF_ERROR(cudaEventCreate(&a));
  SAMBAY_CUDA_RETURN_IF_ERROR(cudaEventCreate(&b));
  double best = 1e30;
  for (int r = 0; r < reps + 1; ++r) {  // the first run is a warm-up
    SAMBAY_CUDA_RETURN_IF_ERROR(cudaEventRecord(a, st));
    SAMBAY_RETURN_IF_ERROR(fn());
    SAMBAY_CUDA_RETURN_IF_ERROR(cudaEventRecord(b, st));
    SAMBAY_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(b));
    float ms = 0;
    SAMBAY_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, a, b));
    if (r > 0) best = std::min(best, ms / 1e3);
  }
  (void)cudaEventDestroy(a);
  (void)cudaEventDestroy(b);
  return best;
}

absl::StatusOr<cuda::DeviceBuffer> RandomBf16(size_t n, uint64_t seed) {
  std::vector<uint16_t> h(n);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  for (auto& v : h) v = F32ToBf16(d(rng));
  SAMBAY_ASSIGN_OR_RETURN(cuda::DeviceBuffer b, cuda::DeviceBuffer::Alloc(n * 2));
  SAMBAY_RETURN_IF_ERROR(b.CopyFromHost(h.data(), n * 2));
  return b;
}

// FLOPs of a prefill of n tokens (one sequence, YOCO: cross-decoder on the last token only).
double PrefillFlops(const ModelConfig& c, const ModelWeights& w, int64_t n) {
  double self = 0, cross = 0;
  auto mat = [](const WeightView& v) { return static_cast<double>(v.rows) * v.cols; };
  for (int i = 0; i < c.num_layers; ++i) {
    const LayerWeights& l = w.layers[i];
    double p = mat(l.fc1) + mat(l.fc2);
    if (l.kind == LayerKind::kMamba) {
      p +=
          mat(l.mamba.in_proj) + mat(l.mamba.x_proj) + mat(l.mamba.dt_proj) + mat(l.mamba.out_proj);
    } else if (l.kind == LayerKind::kGmu) {
      p += mat(l.gmu.in_proj) + mat(l.gmu.out_proj);
    } else {
      p += mat(l.attn.wqkv) + mat(l.attn.out_proj);
    }
    (i < c.first_cross_layer ? self : cross) += p;
  }
  // Attention: per (query, key): 2 stripes x (QK 2 hd + PV 2 * 2 hd) per pair = 6 q_dim.
  const double per_pair_key = 6.0 * static_cast<double>(c.q_dim());
  double keys = 0;
  for (int i = 0; i < c.first_cross_layer; ++i) {
    if (c.layers[i] == LayerKind::kSwa) {
      const double W = static_cast<double>(c.sliding_window);
      const double m = std::min<double>(n, W);
      keys += m * (m + 1) / 2 + (n - m) * W;
    } else if (c.layers[i] == LayerKind::kGlobal) {
      keys += static_cast<double>(n) * (n + 1) / 2;
    }
  }
  const double head = static_cast<double>(c.vocab_size) * c.hidden_size;
  return 2.0 * self * n + per_pair_key * keys + 2.0 * (cross + head) +
         per_pair_key * (c.num_layers - c.first_cross_layer) / 2.0 * n;
}

// Writes js to path (nothing when path is empty); called after every row.
absl::Status WriteJson(const std::string& path, const nlohmann::json& js) {
  if (path.empty()) return absl::OkStatus();
  std::ofstream out(path, std::ios::trunc);
  out << js.dump(2) << "\n";
  if (!out) return absl::DataLossError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// ||a - b|| / ||b|| over one row of V logits.
double RowRelErr(const float* a, const float* b, int64_t V) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < V; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : (num > 0 ? 1e30 : 0.0);
}

int32_t ArgmaxRow(const float* x, int64_t V) {
  return static_cast<int32_t>(std::max_element(x, x + V) - x);
}

// GPU bf16 logits against two CPU references on the same checkpoint: the fp32 engine and the
// engine rounding at the GPU's bf16 points (ScopedBf16Activations). A prefill of
// --check-tokens tokens, then --check-steps greedy decode steps, all fed the fp32 CPU's argmax.
absl::Status CheckLogits(Model& cpu, cuda::CudaModel& gpu, nlohmann::json* js) {
  const int64_t V = cpu.config().vocab_size;
  const int64_t n = absl::GetFlag(FLAGS_check_tokens);
  const int steps = absl::GetFlag(FLAGS_check_steps);
  const double tol[2] = {absl::GetFlag(FLAGS_check_tolerance),
                         absl::GetFlag(FLAGS_check_emulated_tolerance)};
  const std::vector<int32_t> ids = SyntheticIds(n, V, 5);
  std::unique_ptr<SequenceState> state[2] = {cpu.NewState(), cpu.NewState()};
  std::vector<float> cl[2], gl;
  const auto t0 = Clock::now();
  for (int k = 0; k < 2; ++k) {
    cpu::ScopedBf16Activations precision(k == 1);
    SAMBAY_RETURN_IF_ERROR(cpu.Prefill(*state[k], ids, 0, &cl[k]));
  }
  SAMBAY_ASSIGN_OR_RETURN(const int slot, gpu.AllocSlot());
  SAMBAY_RETURN_IF_ERROR(gpu.Prefill(slot, ids, &gl));
  if (static_cast<int64_t>(cl[0].size()) != V || static_cast<int64_t>(gl.size()) != V) {
    return absl::InternalError("CheckLogits: prefill returned the wrong number of logits");
  }
  std::vector<double> errs[2];
  int agree = 0;
  auto compare = [&] {
    for (int k = 0; k < 2; ++k) errs[k].push_back(RowRelErr(gl.data(), cl[k].data(), V));
    agree += ArgmaxRow(gl.data(), V) == ArgmaxRow(cl[0].data(), V);
  };
  compare();
  for (int s = 0; s < steps; ++s) {
    const int32_t next = ArgmaxRow(cl[0].data(), V);
    for (int k = 0; k < 2; ++k) {
      cpu::ScopedBf16Activations precision(k == 1);
      SequenceState* sp = state[k].get();
      SAMBAY_RETURN_IF_ERROR(cpu.DecodeStep({&sp, 1}, {&next, 1}, &cl[k]));
    }
    SAMBAY_RETURN_IF_ERROR(gpu.DecodeStep({&slot, 1}, {&next, 1}, &gl));
    compare();
  }
  SAMBAY_RETURN_IF_ERROR(gpu.FreeSlot(slot));
  double worst[2];
  bool pass = true;
  for (int k = 0; k < 2; ++k) {
    worst[k] = *std::max_element(errs[k].begin(), errs[k].end());
    pass = pass && worst[k] <= tol[k];  // NaN fails
  }
  std::printf(
      "check: GPU bf16 logits, prefill %lld tokens + %d decode steps: worst rel err %.4g "
      "vs the fp32 CPU (prefill %.4g, tolerance %.3g), %.4g vs the bf16-emulating CPU "
      "(prefill %.4g, tolerance %.3g) -> %s; argmax equal to the fp32 CPU's in %d of %zu "
      "rows (%.1f s)\n\n",
      (long long)n, steps, worst[0], errs[0][0], tol[0], worst[1], errs[1][0], tol[1],
      pass ? "PASS" : "FAIL", agree, errs[0].size(), Since(t0));
  std::fflush(stdout);
  (*js)["check"] = {{"tokens", n},
                    {"steps", steps},
                    {"worst_rel_err", worst[0]},
                    {"prefill_rel_err", errs[0][0]},
                    {"tolerance", tol[0]},
                    {"worst_rel_err_emulated", worst[1]},
                    {"prefill_rel_err_emulated", errs[1][0]},
                    {"tolerance_emulated", tol[1]},
                    {"argmax_equal", agree},
                    {"rows", errs[0].size()},
                    {"pass", pass}};
  if (!pass) {
    return absl::InternalError(absl::StrCat("logits rel err ", worst[0], " / ", worst[1],
                                            " exceeds ", tol[0], " / ", tol[1]));
  }
  return absl::OkStatus();
}

// One decode row: `batch` slots cloned from the base sequence, two warm-up steps (with graphs:
// the first runs directly, the second captures), then `steps` timed greedy steps.
struct DecodeRow {
  cuda::CudaModel* gpu;
  int base;
  int64_t prompt;
  int steps;
  double wbytes, bw;

  absl::Status Run(const std::vector<int>& batch, bool graphs, nlohmann::json* js) const {
    const int n = static_cast<int>(batch.size());
    gpu->set_cuda_graphs(graphs);
    for (int s : batch) SAMBAY_RETURN_IF_ERROR(gpu->CloneSlot(base, s));
    std::vector<int32_t> toks(n, 1), next;
    for (int w = 0; w < 2; ++w) {
      SAMBAY_RETURN_IF_ERROR(gpu->DecodeStepGreedy(batch, toks, &next));
      toks = next;
    }
    const bool profile = absl::GetFlag(FLAGS_profile) == "decode";
    if (profile) SAMBAY_CUDA_RETURN_IF_ERROR(cudaProfilerStart());
    const auto t0 = Clock::now();
    for (int s = 0; s < steps; ++s) {
      SAMBAY_RETURN_IF_ERROR(gpu->DecodeStepGreedy(batch, toks, &next));
      toks = next;
    }
    const double per_step = Since(t0) / steps;
    if (profile) SAMBAY_CUDA_RETURN_IF_ERROR(cudaProfilerStop());
    const int64_t mean_ctx = prompt + 2 + steps / 2;
    const double state = static_cast<double>(n) * gpu->StateBytesPerStep(mean_ctx);
    const double floor = (wbytes + state) / bw;
    std::printf("| decode%s | %d (context %lld..%lld) | %.0f | %.3f ms/step | %.3f ms | %.2f |\n",
                graphs ? " (graph)" : "", n, (long long)(prompt + 2),
                (long long)(prompt + 2 + steps), n / per_step, 1e3 * per_step, 1e3 * floor,
                floor / per_step);
    std::fflush(stdout);
    (*js)["decode"].push_back({{"concurrency", n},
                               {"cuda_graph", graphs},
                               {"prompt", prompt},
                               {"steps", steps},
                               {"tokens_per_s", n / per_step},
                               {"step_ms", 1e3 * per_step},
                               {"hbm_floor_ms", 1e3 * floor},
                               {"state_bytes_per_step", state}});
    return absl::OkStatus();
  }
};

// One prefill row: a sequence of n tokens, chunked, timed to the last logits on the host.
absl::Status PrefillRow(const Model& model, cuda::CudaModel& gpu, int32_t n, int64_t chunk,
                        double flops_rate, nlohmann::json* js) {
  const ModelConfig& c = model.config();
  SAMBAY_ASSIGN_OR_RETURN(const int s, gpu.AllocSlot());
  const auto ids = SyntheticIds(n, c.vocab_size, 3);
  std::vector<float> logits;
  const bool profile = absl::GetFlag(FLAGS_profile) == "prefill";
  if (profile) SAMBAY_CUDA_RETURN_IF_ERROR(cudaProfilerStart());
  const auto t0 = Clock::now();
  absl::Status st = gpu.Prefill(s, ids, &logits);
  const double secs = Since(t0);
  if (profile) SAMBAY_CUDA_RETURN_IF_ERROR(cudaProfilerStop());
  SAMBAY_RETURN_IF_ERROR(gpu.FreeSlot(s));
  SAMBAY_RETURN_IF_ERROR(st);
  const double floor = PrefillFlops(c, model.weights(), n) / flops_rate;
  std::printf("| prefill | %d tokens (chunk %lld) | %.0f | %.3f s | %.3f s | %.2f |\n", n,
              (long long)chunk, n / secs, secs, floor, floor / secs);
  std::fflush(stdout);
  (*js)["prefill"].push_back({{"tokens", n},
                              {"chunk", chunk},
                              {"tokens_per_s", n / secs},
                              {"seconds", secs},
                              {"matrix_floor_s", floor}});
  return absl::OkStatus();
}

// The decode and prefill settings from the flags.
struct BenchOptions {
  std::vector<int32_t> conc, lens;  // --concurrency, --prefill-lengths
  int64_t prompt = 0;
  int steps = 0;  // --decode-steps
  int max_c = 0;  // the largest concurrency
  int64_t max_prefill = 0;
};

absl::StatusOr<BenchOptions> ReadOptions() {
  BenchOptions b;
  SAMBAY_ASSIGN_OR_RETURN(b.conc, ParseIds(absl::GetFlag(FLAGS_concurrency), "--concurrency"));
  SAMBAY_ASSIGN_OR_RETURN(b.lens,
                          ParseIds(absl::GetFlag(FLAGS_prefill_lengths), "--prefill-lengths"));
  b.prompt = absl::GetFlag(FLAGS_prompt);
  b.steps = absl::GetFlag(FLAGS_decode_steps);
  if (b.conc.empty() || b.prompt < 1 || b.steps < 1) {
    return absl::InvalidArgumentError("--concurrency, --prompt and --decode-steps must be set");
  }
  b.max_c = *std::max_element(b.conc.begin(), b.conc.end());
  b.max_prefill = b.lens.empty() ? 0 : *std::max_element(b.lens.begin(), b.lens.end());
  return b;
}

// The CudaModel's sizes: slots, context and KV blocks for every row and the logits check.
cuda::CudaModelOptions GpuOptions(const BenchOptions& b) {
  cuda::CudaModelOptions o;
  o.device = absl::GetFlag(FLAGS_device);
  o.max_slots = b.max_c + 2;  // + the cloned base sequence + the prefill sequence
  o.block_tokens = 256;
  const int64_t decode_ctx = b.prompt + b.steps + 8;
  const int64_t check_ctx = absl::GetFlag(FLAGS_check_tokens) + absl::GetFlag(FLAGS_check_steps);
  o.max_context = std::max({decode_ctx, b.max_prefill, check_ctx});
  o.kv_blocks = (b.max_c + 1) * ((decode_ctx + 255) / 256) + (b.max_prefill + 255) / 256 +
                (check_ctx + 255) / 256 + 4;
  o.max_chunk = absl::GetFlag(FLAGS_prefill_chunk);
  o.max_logits_rows = b.max_c + 2;
  return o;
}

// The ceilings measured on the GPU.
struct Ceilings {
  double bw = 0;          // copy bandwidth, bytes read plus written per second
  double flops_rate = 0;  // bf16 GEMM FLOP/s
};

absl::StatusOr<Ceilings> MeasureCeilings(cuda::CudaContext& ctx) {
  cudaStream_t st = ctx.stream();
  Ceilings ceil;
  const size_t copy_bytes = size_t{1} << 30;
  SAMBAY_ASSIGN_OR_RETURN(cuda::DeviceBuffer src, RandomBf16(copy_bytes / 2, 1));
  SAMBAY_ASSIGN_OR_RETURN(cuda::DeviceBuffer dst, cuda::DeviceBuffer::Alloc(copy_bytes));
  double t = 0;
  SAMBAY_ASSIGN_OR_RETURN(t, BestTime(st, 10, [&]() -> absl::Status {
                            SAMBAY_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
                                dst.data(), src.data(), copy_bytes, cudaMemcpyDeviceToDevice, st));
                            return absl::OkStatus();
                          }));
  ceil.bw = 2.0 * copy_bytes / t;
  const int64_t G = 8192;
  SAMBAY_ASSIGN_OR_RETURN(cuda::DeviceBuffer ga, RandomBf16(G * G, 2));
  SAMBAY_ASSIGN_OR_RETURN(cuda::DeviceBuffer gb, RandomBf16(G * G, 3));
  SAMBAY_ASSIGN_OR_RETURN(cuda::DeviceBuffer gc, cuda::DeviceBuffer::Alloc(G * G * 2));
  cuda::GemmCache cache;
  cuda::GemmArgs ga_args;
  ga_args.x = ga.as<cuda::bf16>();
  ga_args.M = G;
  ga_args.K = G;
  ga_args.w = gb.as<cuda::bf16>();
  ga_args.N = G;
  ga_args.y = gc.data();
  SAMBAY_ASSIGN_OR_RETURN(t, BestTime(st, 10, [&] { return cuda::Gemm(ctx, cache, ga_args); }));
  ceil.flops_rate = 2.0 * G * G * G / t;
  src = cuda::DeviceBuffer();
  dst = cuda::DeviceBuffer();
  ga = cuda::DeviceBuffer();
  gb = cuda::DeviceBuffer();
  gc = cuda::DeviceBuffer();
  return ceil;
}

// Prints the header (date, GPU, command, model, ceilings); returns the JSON with the same.
nlohmann::json PrintHeader(const std::string& command, const ModelConfig& c, cuda::CudaContext& ctx,
                           double wbytes, double upload_s, const Ceilings& ceil) {
  char date[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  std::printf("sambay-gpu-bench  %s\nGPU: %s (%d SMs)\ncommand: %s\n", date,
              ctx.device_name().c_str(), ctx.sm_count(), command.c_str());
  std::printf(
      "model: %d layers, hidden %lld, vocab %lld; weight matrices read per decode step %.3f GB; "
      "upload %.1f s\ncopy bandwidth %.0f GB/s (read + write); bf16 GEMM 8192^3: %.0f TFLOP/s\n\n",
      c.num_layers, (long long)c.hidden_size, (long long)c.vocab_size, wbytes / 1e9, upload_s,
      ceil.bw / 1e9, ceil.flops_rate / 1e12);
  nlohmann::json js;
  js["date"] = date;
  js["gpu"] = ctx.device_name();
  js["command"] = command;
  js["copy_bandwidth_GBps"] = ceil.bw / 1e9;
  js["gemm_tflops"] = ceil.flops_rate / 1e12;
  js["weight_bytes"] = wbytes;
  return js;
}

// The JSON results, written to --json after every row, and the count of failed rows.
struct Results {
  std::string path;
  nlohmann::json js;
  int failed = 0;

  // Records a failed row (printed, kept in the JSON) and lets the others run.
  void RowFailed(const std::string& what, const absl::Status& st) {
    ++failed;
    std::printf("| %s | FAILED: %s |\n", what.c_str(), st.ToString().c_str());
    std::fflush(stdout);
    js["errors"].push_back({{"row", what}, {"status", st.ToString()}});
  }
  absl::Status Write() const { return WriteJson(path, js); }
};

// Decode: prefill one base sequence, clone it into the slots, then every decode row (unless
// --profile prefill).
absl::Status DecodeRows(cuda::CudaModel& gpu, const ModelConfig& c, const BenchOptions& b,
                        double wbytes, double bw, Results& results) {
  SAMBAY_ASSIGN_OR_RETURN(const int base, gpu.AllocSlot());
  std::vector<float> logits;
  SAMBAY_RETURN_IF_ERROR(gpu.Prefill(base, SyntheticIds(b.prompt, c.vocab_size, 1), &logits));
  std::vector<int> slots;
  for (int i = 0; i < b.max_c; ++i) {
    SAMBAY_ASSIGN_OR_RETURN(const int s, gpu.AllocSlot());
    slots.push_back(s);
  }
  DecodeRow row{&gpu, base, b.prompt, b.steps, wbytes, bw};
  const std::string profile = absl::GetFlag(FLAGS_profile);
  if (profile != "" && profile != "decode" && profile != "prefill") {
    return absl::InvalidArgumentError("--profile must be decode or prefill");
  }
  for (bool graphs : {false, true}) {  // every direct row first: a graph failure loses less
    if (graphs && !absl::GetFlag(FLAGS_graph_rows)) continue;
    if (profile == "prefill") continue;
    for (int n : b.conc) {
      std::vector<int> batch(slots.begin(), slots.begin() + n);
      absl::Status st = row.Run(batch, graphs, &results.js);
      if (!st.ok()) {
        results.RowFailed(absl::StrCat("decode", graphs ? " (graph)" : "", " c=", n), st);
      }
      SAMBAY_RETURN_IF_ERROR(results.Write());
    }
  }
  gpu.set_cuda_graphs(false);
  for (int s : slots) SAMBAY_RETURN_IF_ERROR(gpu.FreeSlot(s));
  SAMBAY_RETURN_IF_ERROR(gpu.FreeSlot(base));
  return absl::OkStatus();
}

absl::Status Run(const std::string& command) {
  ModelOptions mo;
  mo.num_threads = absl::GetFlag(FLAGS_threads);
  std::unique_ptr<Model> model;
  SAMBAY_ASSIGN_OR_RETURN(model, Model::Load(absl::GetFlag(FLAGS_model), mo));
  BenchOptions b;
  SAMBAY_ASSIGN_OR_RETURN(b, ReadOptions());
  const cuda::CudaModelOptions o = GpuOptions(b);
  const auto t_up = Clock::now();
  std::unique_ptr<cuda::CudaModel> gpu;
  SAMBAY_ASSIGN_OR_RETURN(gpu, cuda::CudaModel::Create(*model, o));
  const double upload_s = Since(t_up);
  Ceilings ceil;
  SAMBAY_ASSIGN_OR_RETURN(ceil, MeasureCeilings(gpu->context()));

  const double wbytes = static_cast<double>(gpu->weight_bytes());
  Results results{absl::GetFlag(FLAGS_json),
                  PrintHeader(command, model->config(), gpu->context(), wbytes, upload_s, ceil)};
  SAMBAY_RETURN_IF_ERROR(results.Write());
  if (absl::GetFlag(FLAGS_check_tokens) > 0) {
    absl::Status st = CheckLogits(*model, *gpu, &results.js);
    if (!st.ok()) results.RowFailed("check", st);
    SAMBAY_RETURN_IF_ERROR(results.Write());
  }
  if (absl::GetFlag(FLAGS_check_only)) {
    return results.failed == 0 ? absl::OkStatus() : absl::InternalError("the logits check failed");
  }

  std::printf(
      "| phase | concurrency / prompt | tokens/s | time per step or prompt | floor | "
      "floor / time |\n|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  SAMBAY_RETURN_IF_ERROR(DecodeRows(*gpu, model->config(), b, wbytes, ceil.bw, results));
  const std::string profile = absl::GetFlag(FLAGS_profile);
  for (int32_t n : b.lens) {
    if (profile == "decode") continue;
    absl::Status st = PrefillRow(*model, *gpu, n, o.max_chunk, ceil.flops_rate, &results.js);
    if (!st.ok()) results.RowFailed(absl::StrCat("prefill ", n), st);
    SAMBAY_RETURN_IF_ERROR(results.Write());
  }
  if (results.failed > 0) {
    return absl::InternalError(absl::StrCat(results.failed, " row(s) failed"));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace sambay

int main(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  const std::string command = absl::StrJoin(args, " ");
  sambay::ParseFlags(argc, argv, "sambay-gpu-bench --model DIR [flags]");
  absl::Status st = sambay::Run(command);
  if (!st.ok()) return sambay::ReportError("sambay-gpu-bench", st);
  return 0;
}
