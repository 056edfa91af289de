// sambay-engine-bench: CPU engine throughput on a checkpoint, beside the memory-bandwidth floor.
//
//   sambay-engine-bench --model DIR [--threads N] [--decode-batches 1,8] [--decode-steps 8]
//                [--context 64] [--prefill-lengths 512,4096] [--prefill-chunk 512]
//
// Decode: each sequence is prefilled with --context tokens, then --decode-steps batched steps
// are timed (after one warm-up step). Floor per step = bytes of weight matrices read by one
// step (Model::weights().matrix_bytes, the embedding lookup excluded, the LM head included) +
// state bytes read, divided by the measured copy bandwidth (memcpy of a 1 GiB buffer split
// over all threads, best of 5, counted as bytes copied per second), and beside the stricter
// floor from the read bandwidth (a vectorized sum over 1 GiB).
// Prefill: one sequence of each length, chunked, timed once after a short warm-up.
// Prints a Markdown table on stdout.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/thread_pool.h"
#include "engine/cpu/vec.h"
#include "engine/model.h"
#include "tools/bench_common.h"
#include "tools/cli_util.h"

ABSL_FLAG(std::string, model, "", "model directory");
ABSL_FLAG(int32_t, threads, 0, "threads; 0 = all cores");
ABSL_FLAG(std::string, decode_batches, "1,8", "decode batch sizes");
ABSL_FLAG(int32_t, decode_steps, 8, "timed decode steps per batch size");
ABSL_FLAG(int32_t, context, 64, "prompt tokens per sequence before decode");
ABSL_FLAG(std::string, prefill_lengths, "512,4096", "prefill prompt lengths");
ABSL_FLAG(int64_t, prefill_chunk, 512, "prefill chunk size");

namespace sambay {
namespace {

using Clock = std::chrono::steady_clock;

// Best of 5 rates (bytes / s) of fn(t, lo, hi) run on every thread t over its slice [lo, hi)
// of n items, each worth `item_bytes`.
template <typename Fn>
double BestRate(ThreadPool& pool, int64_t n, double item_bytes, const Fn& fn) {
  const int threads = pool.num_threads();
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    pool.ParallelFor(threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) fn(t, n * t / threads, n * (t + 1) / threads);
    });
    best = std::max(best, n * item_bytes / Since(t0));
  }
  return best;
}

// Bytes copied per second by memcpy of 1 GiB over all threads.
double CopyBandwidth(ThreadPool& pool) {
  const int64_t n = int64_t{1} << 30;
  std::unique_ptr<char[]> a(new char[n]), b(new char[n]);
  std::memset(a.get(), 1, n);
  std::memset(b.get(), 2, n);
  return BestRate(pool, n, 1.0, [&](int64_t, int64_t lo, int64_t hi) {
    std::memcpy(b.get() + lo, a.get() + lo, hi - lo);
  });
}

// Bytes read per second by a vectorized sum over 1 GiB on all threads: a stricter floor than
// the copy bandwidth, which moves every byte twice.
double ReadBandwidth(ThreadPool& pool) {
  const int64_t n = int64_t{1} << 28;  // floats
  std::vector<float> a(n, 1.0f);
  std::vector<float> sums(pool.num_threads());
  return BestRate(pool, n, 4.0, [&](int64_t t, int64_t lo, int64_t hi) {
    sums[t] = cpu::Dot(a.data() + lo, a.data() + lo, hi - lo);
  });
}

// What the floors are made of: the bandwidths (bytes / s) and the weight matrix bytes one
// decode step reads.
struct Floors {
  double bw = 0;       // copy bandwidth
  double read_bw = 0;  // read bandwidth
  double wbytes = 0;
};

// Decode: for each --decode-batches size, sequences prefilled with --context tokens, one
// warm-up step, then --decode-steps timed steps; one table row each.
absl::Status DecodeRows(Model& model, const Floors& fl) {
  const ModelConfig& c = model.config();
  std::vector<int32_t> batches;
  SAMBAY_ASSIGN_OR_RETURN(batches,
                          ParseIds(absl::GetFlag(FLAGS_decode_batches), "--decode-batches"));
  const int steps = absl::GetFlag(FLAGS_decode_steps);
  const int64_t ctx = absl::GetFlag(FLAGS_context);
  for (int32_t b : batches) {
    std::vector<std::unique_ptr<SequenceState>> states;
    std::vector<SequenceState*> ptrs;
    std::vector<float> logits;
    for (int32_t i = 0; i < b; ++i) {
      states.push_back(model.NewState());
      SAMBAY_RETURN_IF_ERROR(
          model.Prefill(*states.back(), SyntheticIds(ctx, c.vocab_size, i + 1), 0, &logits));
      ptrs.push_back(states.back().get());
    }
    std::vector<int32_t> toks(b, 1);
    SAMBAY_RETURN_IF_ERROR(model.DecodeStep(ptrs, toks, &logits));  // warm-up
    const auto t0 = Clock::now();
    for (int s = 0; s < steps; ++s) SAMBAY_RETURN_IF_ERROR(model.DecodeStep(ptrs, toks, &logits));
    const double per_step = Since(t0) / steps;
    double state_bytes = 0;
    for (auto* st : ptrs) state_bytes += static_cast<double>(st->memory_bytes());
    const double floor = (fl.wbytes + state_bytes) / fl.bw;
    const double rfloor = (fl.wbytes + state_bytes) / fl.read_bw;
    std::printf(
        "| decode | batch %d (context %lld) | %.2f | %.1f ms/step | %.1f ms | %.0f%% | "
        "%.1f ms | %.0f%% |\n",
        b, (long long)(ctx + 1), b / per_step, 1e3 * per_step, 1e3 * floor,
        100.0 * floor / per_step, 1e3 * rfloor, 100.0 * rfloor / per_step);
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

// Prefill: a short warm-up, then one sequence of each --prefill-lengths length, chunked; one
// table row each.
absl::Status PrefillRows(Model& model, const Floors& fl) {
  const ModelConfig& c = model.config();
  std::vector<int32_t> lens;
  SAMBAY_ASSIGN_OR_RETURN(lens,
                          ParseIds(absl::GetFlag(FLAGS_prefill_lengths), "--prefill-lengths"));
  const int64_t chunk = absl::GetFlag(FLAGS_prefill_chunk);
  {
    auto warm = model.NewState();
    std::vector<float> logits;
    SAMBAY_RETURN_IF_ERROR(model.Prefill(*warm, SyntheticIds(64, c.vocab_size, 9), 0, &logits));
  }
  for (int32_t n : lens) {
    auto st = model.NewState();
    std::vector<float> logits;
    const auto ids = SyntheticIds(n, c.vocab_size, 3);
    const auto t0 = Clock::now();
    SAMBAY_RETURN_IF_ERROR(model.Prefill(*st, ids, chunk, &logits));
    const double secs = Since(t0);
    const int64_t chunks = (n + chunk - 1) / chunk;
    const double floor = chunks * fl.wbytes / fl.bw;  // weights streamed once per chunk
    const double rfloor = chunks * fl.wbytes / fl.read_bw;
    std::printf(
        "| prefill | %d tokens (chunk %lld) | %.1f | %.2f s | %.2f s | %.0f%% | %.2f s | "
        "%.0f%% |\n",
        n, (long long)chunk, n / secs, secs, floor, 100.0 * floor / secs, rfloor,
        100.0 * rfloor / secs);
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

absl::Status Run() {
  ModelOptions mo;
  mo.num_threads = absl::GetFlag(FLAGS_threads);
  std::unique_ptr<Model> model;
  SAMBAY_ASSIGN_OR_RETURN(model, Model::Load(absl::GetFlag(FLAGS_model), mo));
  const ModelConfig& c = model->config();
  ThreadPool pool(model->num_threads());
  Floors fl;
  fl.bw = CopyBandwidth(pool);
  fl.read_bw = ReadBandwidth(pool);
  fl.wbytes = static_cast<double>(model->weights().matrix_bytes);
  std::printf(
      "model: %d layers, hidden %lld, vocab %lld; matrix bytes read per decode step "
      "%.3f GB; threads %d\ncopy bandwidth %.2f GB/s (floor per step %.1f ms); read "
      "bandwidth %.2f GB/s (floor per step %.1f ms)\n\n",
      c.num_layers, (long long)c.hidden_size, (long long)c.vocab_size, fl.wbytes / 1e9,
      model->num_threads(), fl.bw / 1e9, 1e3 * fl.wbytes / fl.bw, fl.read_bw / 1e9,
      1e3 * fl.wbytes / fl.read_bw);
  std::printf(
      "| phase | batch / prompt | tokens/s | time per step or prompt | copy-bw floor | "
      "%% of floor | read-bw floor | %% of floor |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  SAMBAY_RETURN_IF_ERROR(DecodeRows(*model, fl));
  return PrefillRows(*model, fl);
}

}  // namespace
}  // namespace sambay

int main(int argc, char** argv) {
  sambay::ParseFlags(argc, argv, "sambay-engine-bench --model DIR [flags]");
  absl::Status st = sambay::Run();
  if (!st.ok()) return sambay::ReportError("sambay-engine-bench", st);
  return 0;
}
