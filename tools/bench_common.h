// Small helpers shared by the benchmark tools (sambay-engine-bench, sambay-gpu-bench,
// sambay-handoff-bench): elapsed seconds and the deterministic synthetic prompts.
// Stateless; thread-safe.
#ifndef SAMBAY_TOOLS_BENCH_COMMON_H_
#define SAMBAY_TOOLS_BENCH_COMMON_H_

#include <chrono>
#include <cstdint>
#include <vector>

namespace sambay {

// Seconds on the steady clock from t0 to now.
double Since(std::chrono::steady_clock::time_point t0);

// n token ids in [0, vocab) following a fixed pattern that `seed` shifts: the same prompts in
// every run and in every benchmark.
std::vector<int32_t> SyntheticIds(int64_t n, int64_t vocab, uint64_t seed);

}  // namespace sambay

#endif  // SAMBAY_TOOLS_BENCH_COMMON_H_
