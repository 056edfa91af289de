#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sambay {
namespace {

using ::testing::HasSubstr;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int32_t kBigVocab = 200064;

std::vector<float> RandomLogits(size_t n, uint64_t seed, float scale = 3.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

int32_t ReferenceArgmax(const std::vector<float>& l) {
  int32_t best = 0;
  for (size_t i = 1; i < l.size(); ++i) {
    if (l[i] > l[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

std::vector<double> Softmax(const std::vector<float>& l, double temperature) {
  double mx = *std::max_element(l.begin(), l.end());
  std::vector<double> p(l.size());
  double sum = 0;
  for (size_t i = 0; i < l.size(); ++i) sum += p[i] = std::exp((l[i] - mx) / temperature);
  for (double& x : p) x /= sum;
  return p;
}

SamplingParams Params(float temperature, uint64_t seed = 1) {
  SamplingParams p;
  p.temperature = temperature;
  p.seed = seed;
  return p;
}

std::vector<int> Histogram(Sampler& s, const std::vector<float>& logits, int draws,
                           const std::vector<int32_t>& history = {}) {
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) {
    const int32_t t = s.Sample(logits, history);
    EXPECT_GE(t, 0);
    EXPECT_LT(t, static_cast<int32_t>(logits.size()));
    if (t >= 0 && t < static_cast<int32_t>(logits.size())) counts[t]++;
  }
  return counts;
}

// Pearson chi-square of `counts` against `probs`; tokens with probability 0 must never appear.
double ChiSquare(const std::vector<int>& counts, const std::vector<double>& probs, int draws) {
  double chi2 = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has probability 0";
      continue;
    }
    const double expected = probs[i] * draws;
    chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
  }
  return chi2;
}

// Draws with a fixed seed (deterministic) and checks the empirical distribution: chi-square
// against the 0.999 quantile for the degrees of freedom, and every bucket within 5 sigma.
void ExpectDistribution(const SamplingParams& params, const std::vector<float>& logits,
                        const std::vector<double>& probs, int draws = 20000) {
  Sampler s(params);
  const std::vector<int> counts = Histogram(s, logits, draws);
  int dof = -1;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] > 0) {
      ++dof;
      const double expected = probs[i] * draws;
      const double sigma = std::sqrt(draws * probs[i] * (1 - probs[i]));
      EXPECT_NEAR(counts[i], expected, 5 * sigma + 1) << "token " << i;
    }
  }
  // 0.999 quantiles of chi-square for 1..10 degrees of freedom.
  const std::vector<double> kCritical = {10.83, 13.82, 16.27, 18.47, 20.52,
                                         22.46, 24.32, 26.12, 27.88, 29.59};
  ASSERT_GE(dof, 0);
  ASSERT_LE(dof, 10);
  if (dof > 0) {
    EXPECT_LT(ChiSquare(counts, probs, draws), kCritical.at(dof - 1));
  }
}

// Probabilities after top-k / top-p / min-p filtering and renormalization, by brute force.
std::vector<double> FilteredProbs(const std::vector<float>& logits, const SamplingParams& p) {
  std::vector<double> probs = Softmax(logits, p.temperature);
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return probs[a] > probs[b]; });
  std::vector<bool> keep(logits.size(), true);
  if (p.top_k > 0) {
    for (size_t r = p.top_k; r < order.size(); ++r) keep[order[r]] = false;
  }
  double kept = 0;
  for (size_t i = 0; i < probs.size(); ++i) kept += keep[i] ? probs[i] : 0;
  if (p.top_p < 1) {
    double cum = 0;
    bool reached = false;
    for (int32_t t : order) {
      if (!keep[t]) continue;
      if (reached) {
        keep[t] = false;
        continue;
      }
      cum += probs[t] / kept;
      if (cum >= p.top_p) reached = true;
    }
  }
  const double pmax = probs[order[0]];
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] < p.min_p * pmax) keep[i] = false;
  }
  double sum = 0;
  for (size_t i = 0; i < probs.size(); ++i) sum += keep[i] ? probs[i] : 0;
  for (size_t i = 0; i < probs.size(); ++i) probs[i] = keep[i] ? probs[i] / sum : 0;
  return probs;
}

std::vector<float> LogitsFromProbs(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

// ---------------------------------------------------------------------------------------------
// Greedy.

TEST(SamplerTest, GreedyIsArgmax) {
  Sampler s(Params(0.0f));
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const std::vector<float> l = RandomLogits(1000 + seed, seed);
    EXPECT_EQ(s.Sample(l, {}), ReferenceArgmax(l)) << seed;
  }
  const std::vector<float> big = RandomLogits(kBigVocab, 99);
  EXPECT_EQ(s.Sample(big, {}), ReferenceArgmax(big));
}

TEST(SamplerTest, GreedyTiesPickLowestId) {
  Sampler s(Params(0.0f));
  EXPECT_EQ(s.Sample(std::vector<float>{1, 3, 3, 2}, {}), 1);
  EXPECT_EQ(s.Sample(std::vector<float>{5, 5, 5}, {}), 0);
  EXPECT_EQ(s.Sample(std::vector<float>{-kInf, kInf, 2, kInf}, {}), 1);
}

TEST(SamplerTest, GreedyNeverPicksNaN) {
  Sampler s(Params(0.0f));
  EXPECT_EQ(s.Sample(std::vector<float>{kNaN, 1, kNaN, 5, kNaN}, {}), 3);
  EXPECT_EQ(s.Sample(std::vector<float>{kNaN, -100, kNaN}, {}), 1);
  EXPECT_EQ(s.Sample(std::vector<float>{kNaN, kNaN, kNaN}, {}), 0);
  EXPECT_EQ(s.Sample(std::vector<float>{-kInf, -kInf}, {}), 0);
  EXPECT_EQ(s.Sample(std::vector<float>{kNaN, -kInf, kNaN}, {}), 0);
  EXPECT_EQ(s.Sample(std::vector<float>{}, {}), 0);
}

// GreedyToken (the worker's greedy rows on a device backend) is Sample at temperature 0.
TEST(SamplerTest, GreedyTokenIsGreedySample) {
  Sampler s(Params(0.0f));
  std::vector<std::vector<float>> rows = {{1, 3, 3, 2},       {kNaN, 1, kNaN, 5, kNaN},
                                          {kNaN, kNaN, kNaN}, {-kInf, kInf, 2, kInf},
                                          {-kInf, -kInf},     {}};
  for (uint64_t seed = 0; seed < 10; ++seed) rows.push_back(RandomLogits(3000 + seed, seed));
  rows.push_back(RandomLogits(kBigVocab, 98));
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(GreedyToken(rows[i]), s.Sample(rows[i], {})) << "row " << i;
  }
}

TEST(SamplerTest, SamplingNeverPicksNaN) {
  for (int32_t top_k : {0, 2}) {
    for (float top_p : {1.0f, 0.99f}) {
      SamplingParams p = Params(1.0f, 3);
      p.top_k = top_k;
      p.top_p = top_p;
      Sampler s(p);
      const std::vector<float> l = {kNaN, 0.0f, kNaN, 0.5f, kNaN, -kInf};
      const std::vector<int> counts = Histogram(s, l, 2000);
      EXPECT_EQ(counts[0] + counts[2] + counts[4] + counts[5], 0);
      EXPECT_GT(counts[1], 0);
      EXPECT_GT(counts[3], 0);
      EXPECT_EQ(s.Sample(std::vector<float>{kNaN, kNaN}, {}), 0);
      EXPECT_EQ(s.Sample(std::vector<float>{-kInf, kNaN, -kInf}, {}), 0);
      EXPECT_EQ(s.Sample(std::vector<float>{}, {}), 0);
    }
  }
}

TEST(SamplerTest, SamplingWithInfiniteLogitsIsUniformOverThem) {
  Sampler s(Params(1.0f, 11));
  const std::vector<float> l = {0.0f, kInf, 100.0f, kInf, kNaN};
  const std::vector<int> counts = Histogram(s, l, 2000);
  EXPECT_EQ(counts[0] + counts[2] + counts[4], 0);
  EXPECT_GT(counts[1], 800);
  EXPECT_GT(counts[3], 800);
}

// ---------------------------------------------------------------------------------------------
// RNG streams.

std::vector<int32_t> Draws(Sampler& s, const std::vector<float>& l, int n) {
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) out.push_back(s.Sample(l, {}));
  return out;
}

TEST(SamplerTest, SameSeedSameSequence) {
  const std::vector<float> l = RandomLogits(1000, 5, 0.5f);
  for (int32_t top_k : {0, 40}) {
    SamplingParams p = Params(1.0f, 1234);
    p.top_k = top_k;
    p.top_p = 0.95f;
    Sampler a(p), b(p);
    EXPECT_EQ(Draws(a, l, 200), Draws(b, l, 200));
  }
}

TEST(SamplerTest, DifferentSeedsDiffer) {
  const std::vector<float> l = RandomLogits(1000, 5, 0.5f);
  Sampler a(Params(1.0f, 1)), b(Params(1.0f, 2));
  EXPECT_NE(a.rng_state(), b.rng_state());
  EXPECT_NE(Draws(a, l, 100), Draws(b, l, 100));
  Sampler zero(Params(1.0f, 0));
  for (uint64_t word : zero.rng_state()) EXPECT_NE(word, 0u);  // seed 0 is a valid seed
}

TEST(SamplerTest, RngStateRoundTripContinuesTheStream) {
  const std::vector<float> l = RandomLogits(1000, 8, 0.5f);
  SamplingParams p = Params(0.8f, 77);
  p.top_p = 0.9f;
  Sampler a(p);
  Draws(a, l, 10);
  const RngState saved = a.rng_state();
  const std::vector<int32_t> expected = Draws(a, l, 10);

  Sampler b(p);
  b.set_rng_state(saved);
  EXPECT_EQ(Draws(b, l, 10), expected);
  EXPECT_EQ(b.rng_state(), a.rng_state());
}

TEST(SamplerTest, OneDrawPerCallGreedyIncluded) {
  const std::vector<float> l = RandomLogits(500, 9, 0.5f);
  Sampler greedy(Params(0.0f, 42));
  Sampler sampling(Params(1.0f, 42));
  SamplingParams filtered = Params(0.7f, 42);
  filtered.top_k = 5;
  filtered.top_p = 0.5f;
  filtered.min_p = 0.1f;
  filtered.repetition_penalty = 1.3f;
  Sampler filtering(filtered);
  for (int i = 0; i < 7; ++i) {
    greedy.Sample(l, {1, 2});
    sampling.Sample(l, {});
    filtering.Sample(l, {3});
    ASSERT_EQ(greedy.rng_state(), sampling.rng_state()) << i;
    ASSERT_EQ(filtering.rng_state(), sampling.rng_state()) << i;
  }
  // Degenerate rows still consume their draw.
  greedy.Sample(std::vector<float>{kNaN}, {});
  sampling.Sample(std::vector<float>{}, {});
  EXPECT_EQ(greedy.rng_state(), sampling.rng_state());

  // Switching from greedy to sampling mid-stream continues the sampling stream.
  Sampler reference(Params(1.0f, 42));
  Draws(reference, l, 3);
  const std::vector<int32_t> expected = Draws(reference, l, 10);
  Sampler g(Params(0.0f, 42));
  Draws(g, l, 3);
  Sampler switched(Params(1.0f, 42));
  switched.set_rng_state(g.rng_state());
  EXPECT_EQ(Draws(switched, l, 10), expected);
}

// ---------------------------------------------------------------------------------------------
// Filters.

TEST(SamplerTest, TopK1IsGreedy) {
  for (int32_t vocab : {100, kBigVocab}) {
    const std::vector<float> l = RandomLogits(vocab, vocab, 1.0f);
    SamplingParams p = Params(1.5f, 3);
    p.top_k = 1;
    Sampler s(p);
    for (int i = 0; i < 50; ++i) ASSERT_EQ(s.Sample(l, {}), ReferenceArgmax(l));
  }
}

TEST(SamplerTest, TopKNeverSamplesOutsideTopK) {
  // k small relative to the vocab uses the heap, large uses nth_element: cover both.
  for (auto [vocab, k] : std::vector<std::pair<int32_t, int32_t>>{
           {1000, 10}, {1000, 300}, {kBigVocab, 50}, {kBigVocab, 20000}}) {
    const std::vector<float> l = RandomLogits(vocab, vocab + k, 0.05f);  // nearly flat
    std::vector<float> sorted = l;
    std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<>());
    const float kth = sorted[k - 1];
    SamplingParams p = Params(1.0f, 17);
    p.top_k = k;
    Sampler s(p);
    std::set<int32_t> seen;
    const int draws = vocab == kBigVocab ? 100 : 5000;
    for (int i = 0; i < draws; ++i) {
      const int32_t t = s.Sample(l, {});
      ASSERT_GE(l[t], kth) << "vocab " << vocab << " k " << k;
      seen.insert(t);
    }
    if (k == 10) {
      EXPECT_EQ(seen.size(), 10u);
    }
  }
}

TEST(SamplerTest, TopKTiesAtTheBoundaryKeepLowestIds) {
  for (int32_t vocab : {8, 4096}) {
    const std::vector<float> l(vocab, 1.0f);
    SamplingParams p = Params(1.0f, 5);
    p.top_k = 3;
    Sampler s(p);
    const std::vector<int> counts = Histogram(s, l, 3000);
    EXPECT_GT(counts[0], 800);
    EXPECT_GT(counts[1], 800);
    EXPECT_GT(counts[2], 800);
    EXPECT_EQ(counts[0] + counts[1] + counts[2], 3000);
  }
}

TEST(SamplerTest, TinyTopPIsArgmax) {
  for (int32_t top_k : {0, 100}) {
    for (int32_t vocab : {50, kBigVocab}) {
      const std::vector<float> l = RandomLogits(vocab, vocab + 1, 2.0f);
      SamplingParams p = Params(1.0f, 8);
      p.top_p = 1e-6f;
      p.top_k = top_k;
      Sampler s(p);
      for (int i = 0; i < 30; ++i) ASSERT_EQ(s.Sample(l, {}), ReferenceArgmax(l));
    }
  }
}

TEST(SamplerTest, TopPKeepsSmallestSetReachingP) {
  const std::vector<float> l = LogitsFromProbs({0.05, 0.5, 0.15, 0.3});
  for (auto [top_p, allowed] : std::vector<std::pair<float, std::set<int32_t>>>{
           {0.4f, {1}}, {0.75f, {1, 3}}, {0.85f, {1, 2, 3}}, {1.0f, {0, 1, 2, 3}}}) {
    SamplingParams p = Params(1.0f, 21);
    p.top_p = top_p;
    Sampler s(p);
    const std::vector<int> counts = Histogram(s, l, 4000);
    for (int32_t t = 0; t < 4; ++t) {
      if (allowed.count(t)) {
        EXPECT_GT(counts[t], 0) << top_p << " " << t;
      } else {
        EXPECT_EQ(counts[t], 0) << top_p << " " << t;
      }
    }
  }
}

TEST(SamplerTest, MinPFilters) {
  const std::vector<float> l = LogitsFromProbs({0.05, 0.5, 0.15, 0.3});
  for (auto [min_p, allowed] : std::vector<std::pair<float, std::set<int32_t>>>{
           {0.0f, {0, 1, 2, 3}}, {0.2f, {1, 2, 3}}, {0.5f, {1, 3}}, {0.9f, {1}}, {1.0f, {1}}}) {
    SamplingParams p = Params(1.0f, 23);
    p.min_p = min_p;
    Sampler s(p);
    const std::vector<int> counts = Histogram(s, l, 4000);
    for (int32_t t = 0; t < 4; ++t) {
      if (allowed.count(t)) {
        EXPECT_GT(counts[t], 0) << min_p << " " << t;
      } else {
        EXPECT_EQ(counts[t], 0) << min_p << " " << t;
      }
    }
  }
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  Sampler s(Params(0.0f));
  const std::vector<float> pos = {2.0f, 1.5f, -1.0f};
  EXPECT_EQ(s.Sample(pos, {}), 0);
  SamplingParams p = Params(0.0f);
  p.repetition_penalty = 2.0f;
  Sampler rep(p);
  EXPECT_EQ(rep.Sample(pos, {0}), 1);                       // 2.0 / 2 = 1.0 < 1.5
  EXPECT_EQ(rep.Sample(pos, {2}), 0);                       // unrelated token penalized
  EXPECT_EQ(pos, (std::vector<float>{2.0f, 1.5f, -1.0f}));  // input untouched

  const std::vector<float> neg = {-1.0f, -1.5f};
  EXPECT_EQ(rep.Sample(neg, {}), 0);
  EXPECT_EQ(rep.Sample(neg, {0}), 1);  // -1.0 * 2 = -2.0 < -1.5

  // A penalty < 1 boosts: 1.0 / 0.5 = 2.0 > 1.5.
  p.repetition_penalty = 0.5f;
  Sampler boost(p);
  EXPECT_EQ(boost.Sample(std::vector<float>{1.5f, 1.0f}, {1}), 1);

  // Repeats in history penalize once: 3.0 / 1.5 = 2.0 > 1.9 (twice would give 1.33).
  p.repetition_penalty = 1.5f;
  Sampler once(p);
  EXPECT_EQ(once.Sample(std::vector<float>{3.0f, 1.9f}, {0, 0, 0}), 0);
  // Out-of-vocab ids in history are ignored.
  EXPECT_EQ(once.Sample(std::vector<float>{3.0f, 1.9f}, {-1, 2, 1000000}), 0);
}

TEST(SamplerTest, PresencePenaltySubtractsOncePerDistinctToken) {
  SamplingParams p = Params(0.0f);
  p.presence_penalty = 0.5f;
  Sampler s(p);
  const std::vector<float> l = {1.0f, 0.3f, 0.6f};
  EXPECT_EQ(s.Sample(l, {}), 0);
  EXPECT_EQ(s.Sample(l, {0, 0, 0}), 2);  // 0.5 < 0.6; subtracted once (not 3 times)
  EXPECT_EQ(s.Sample(l, {0, 2}), 0);     // 0.5 > 0.3 and 0.1
  // Negative presence penalty rewards.
  p.presence_penalty = -1.0f;
  Sampler reward(p);
  EXPECT_EQ(reward.Sample(l, {1}), 1);
}

TEST(SamplerTest, PenaltiesCombineRepetitionThenPresence) {
  SamplingParams p = Params(0.0f);
  p.repetition_penalty = 2.0f;
  p.presence_penalty = 0.25f;
  Sampler s(p);
  // Token 0: 2.0 / 2 - 0.25 = 0.75 < 0.8. Presence first would give (2.0 - 0.25) / 2 = 0.875.
  EXPECT_EQ(s.Sample(std::vector<float>{2.0f, 0.8f}, {0}), 1);
}

TEST(SamplerTest, PenaltiesApplyWhenSampling) {
  SamplingParams p = Params(1.0f, 31);
  p.repetition_penalty = 100.0f;
  Sampler s(p);
  // Token 0 goes from 10 to 0.1: far below token 1.
  const std::vector<int> counts = Histogram(s, {10.0f, 5.0f, -20.0f}, 1000, {0, 2});
  EXPECT_LT(counts[0], 30);  // p ~= 0.007
  EXPECT_EQ(counts[2], 0);
}

// ---------------------------------------------------------------------------------------------
// Distributions.

TEST(SamplerTest, FrequencyPenaltySubtractsOncePerOccurrence) {
  SamplingParams p = Params(0.0f);
  p.frequency_penalty = 0.25f;
  Sampler s(p);
  const std::vector<float> l = {0.5f, 1.0f};
  EXPECT_EQ(s.Sample(l, {}), 1);
  EXPECT_EQ(s.Sample(l, {1}), 1);        // 1.0 - 0.25 = 0.75 > 0.5
  EXPECT_EQ(s.Sample(l, {1, 1}), 0);     // 1.0 - 2 * 0.25 = 0.5: a tie, lowest id wins
  EXPECT_EQ(s.Sample(l, {1, 0, 1}), 1);  // 0.5 > 0.5 - 0.25
  EXPECT_EQ(s.Sample(l, {1}), 1);        // counts start from zero on every call
  EXPECT_EQ(s.Sample(l, {1, 1}), 0);
  // Out-of-vocabulary ids in history are not counted.
  EXPECT_EQ(s.Sample(l, {1, -1, 2, 1000000}), 1);
  // Negative values reward per occurrence: 0.2 + 2 * 0.5 = 1.2 > 1.0, but 0.7 < 1.0.
  p.frequency_penalty = -0.5f;
  Sampler reward(p);
  EXPECT_EQ(reward.Sample(std::vector<float>{1.0f, 0.2f}, {1}), 0);
  EXPECT_EQ(reward.Sample(std::vector<float>{1.0f, 0.2f}, {1, 1}), 1);
}

TEST(SamplerTest, PenaltiesCombineRepetitionThenFrequencyThenPresence) {
  SamplingParams p = Params(0.0f);
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 0.25f;
  p.presence_penalty = 0.25f;
  Sampler s(p);
  // Token 1: 2.0 / 2 - 2 * 0.25 - 0.25 = 0.25 exactly. Frequency before repetition would give
  // 0.5, presence before repetition 0.375, one frequency step instead of two 0.5.
  EXPECT_EQ(s.Sample(std::vector<float>{0.24f, 2.0f}, {1, 1}), 1);
  EXPECT_EQ(s.Sample(std::vector<float>{0.25f, 2.0f}, {1, 1}), 0);  // tie: lowest id
  EXPECT_EQ(s.Sample(std::vector<float>{0.26f, 2.0f}, {1, 1}), 0);
}

// Sampling `logits` with penalties == sampling `want` (the logits penalized by hand) without
// any, draw for draw from the same seed, at temperature 1 and with top-k.
void ExpectSameDraws(const SamplingParams& penalized, const std::vector<float>& logits,
                     const std::vector<int32_t>& history, const std::vector<float>& want) {
  for (const int32_t top_k : {0, 50}) {
    SamplingParams a = penalized;
    a.temperature = 1.0f;
    a.top_k = top_k;
    SamplingParams b = Params(1.0f, a.seed);
    b.top_k = top_k;
    Sampler with(a), by_hand(b);
    for (int i = 0; i < 300; ++i) {
      ASSERT_EQ(with.Sample(logits, history), by_hand.Sample(want, {})) << "draw " << i;
    }
  }
}

// logit - f * count, in double (the product is exact there), then rounded to float.
float PenalizedByCount(float logit, float f, int count) {
  return static_cast<float>(static_cast<double>(logit) - static_cast<double>(f) * count);
}

TEST(SamplerTest, FrequencyPenaltyIsExactlyPenaltyTimesCount) {
  const std::vector<float> l = RandomLogits(1000, 8, 2.0f);
  // A prompt-like history: repeats, ids spread over the vocabulary, ids outside it.
  std::vector<int32_t> history = {7, 7, 7, 3, 999, 3, -4, 1000, 7, 0};
  std::mt19937_64 rng(3);
  for (int i = 0; i < 200; ++i) history.push_back(static_cast<int32_t>(rng() % 40));
  std::vector<int> count(l.size(), 0);
  for (const int32_t t : history) {
    if (t >= 0 && t < static_cast<int32_t>(l.size())) ++count[t];
  }
  for (const float f : {0.3f, -0.7f, 2.0f}) {
    SCOPED_TRACE(absl::StrCat("frequency_penalty ", f));
    SamplingParams p = Params(1.0f, 21);
    p.frequency_penalty = f;
    std::vector<float> want = l;
    for (size_t t = 0; t < l.size(); ++t) {
      if (count[t] > 0) want[t] = PenalizedByCount(l[t], f, count[t]);
    }
    ExpectSameDraws(p, l, history, want);
    // With the repetition and presence penalties: repetition, frequency, presence.
    p.repetition_penalty = 1.3f;
    p.presence_penalty = 0.4f;
    for (size_t t = 0; t < l.size(); ++t) {
      if (count[t] == 0) continue;
      float v = l[t] > 0.0f ? l[t] / 1.3f : l[t] * 1.3f;
      want[t] = PenalizedByCount(v, f, count[t]) - 0.4f;
    }
    ExpectSameDraws(p, l, history, want);
  }
}

TEST(SamplerTest, ZeroFrequencyPenaltyChangesNothing) {
  const std::vector<float> l = RandomLogits(1000, 9, 2.0f);
  const std::vector<int32_t> history = {5, 5, 5, 6, 17, 5};
  SamplingParams p = Params(1.0f, 4);
  p.frequency_penalty = 0.0f;
  ExpectSameDraws(p, l, history, l);
  // And with presence alone, it is presence's result.
  p.presence_penalty = 0.5f;
  std::vector<float> want = l;
  for (const int32_t t : {5, 6, 17}) want[t] = l[t] - 0.5f;
  ExpectSameDraws(p, l, history, want);
}

TEST(SamplerTest, FrequencyPenaltyReadsTheHistoryPresenceReads) {
  // Over a history of distinct tokens (the prompt and generated tokens, plus ids outside the
  // vocabulary, which both ignore), frequency f == presence f; the order of history is
  // irrelevant.
  const std::vector<float> l = RandomLogits(500, 10, 2.0f);
  std::vector<int32_t> history = {499, 0, 17, 250, -1, 500, 3, 42};
  SamplingParams freq = Params(1.0f, 77), presence = Params(1.0f, 77);
  freq.frequency_penalty = 0.8f;
  presence.presence_penalty = 0.8f;
  Sampler a(freq), b(presence), c(freq);
  std::vector<int32_t> reversed(history.rbegin(), history.rend());
  for (int i = 0; i < 300; ++i) {
    const int32_t want = b.Sample(l, history);
    ASSERT_EQ(a.Sample(l, history), want) << "draw " << i;
    ASSERT_EQ(c.Sample(l, reversed), want) << "draw " << i;
  }
}

TEST(SamplerTest, EmpiricalDistributionMatchesSoftmax) {
  const std::vector<float> l = {1.0f, 2.0f, 0.5f, -1.0f, 1.7f, 0.0f, 2.2f, -0.3f};
  ExpectDistribution(Params(1.0f, 2024), l, Softmax(l, 1.0));
}

TEST(SamplerTest, EmpiricalDistributionAtOtherTemperatures) {
  const std::vector<float> l = {1.0f, 2.0f, 0.5f, -1.0f, 1.7f, 0.0f, 2.2f, -0.3f};
  ExpectDistribution(Params(0.5f, 7), l, Softmax(l, 0.5));
  ExpectDistribution(Params(2.0f, 8), l, Softmax(l, 2.0));
}

TEST(SamplerTest, EmpiricalDistributionAfterFilters) {
  const std::vector<float> l = {1.0f, 2.0f, 0.5f, -1.0f, 1.7f, 0.0f, 2.2f, -0.3f};
  SamplingParams p = Params(1.0f, 99);
  p.top_k = 5;
  p.top_p = 0.8f;
  ExpectDistribution(p, l, FilteredProbs(l, p));
  p = Params(0.9f, 100);
  p.min_p = 0.3f;
  ExpectDistribution(p, l, FilteredProbs(l, p));
  p = Params(1.2f, 101);
  p.top_p = 0.6f;
  p.min_p = 0.5f;
  ExpectDistribution(p, l, FilteredProbs(l, p));
}

// Big vocabulary with a handful of strong tokens over a long flat tail: the filtered set and the
// renormalized distribution match brute force (exercises the banded top-p search).
TEST(SamplerTest, BigVocabFiltersMatchBruteForce) {
  std::vector<float> l = RandomLogits(kBigVocab, 123, 1.0f);
  const std::vector<int32_t> strong = {7, 150000, 42, 200063, 99999, 3};
  const std::vector<float> strong_logits = {16.0f, 15.5f, 15.0f, 14.6f, 14.0f, 13.0f};
  for (size_t i = 0; i < strong.size(); ++i) l[strong[i]] = strong_logits[i];
  struct Case {
    int32_t top_k;
    float top_p;
    float min_p;
  };
  for (const Case& c : {Case{0, 0.7f, 0.0f}, Case{50, 0.7f, 0.0f}, Case{0, 1.0f, 0.2f},
                        Case{0, 0.75f, 0.1f}, Case{1000, 0.9f, 0.05f}}) {
    SamplingParams p = Params(1.0f, 55);
    p.top_k = c.top_k;
    p.top_p = c.top_p;
    p.min_p = c.min_p;
    const std::vector<double> probs = FilteredProbs(l, p);
    int support = 0;
    for (double x : probs) support += x > 0;
    ASSERT_LE(support, 6) << c.top_k << " " << c.top_p << " " << c.min_p;
    ExpectDistribution(p, l, probs, 1000);
  }
}

TEST(SamplerTest, BigVocabTopPWithWideSupport) {
  // Flat logits: top_p = 0.5 keeps about half the vocabulary (many search rounds).
  const std::vector<float> l = RandomLogits(kBigVocab, 321, 0.01f);
  SamplingParams p = Params(1.0f, 66);
  p.top_p = 0.5f;
  const std::vector<double> probs = FilteredProbs(l, p);
  Sampler s(p);
  for (int i = 0; i < 50; ++i) {
    const int32_t t = s.Sample(l, {});
    ASSERT_GT(probs[t], 0) << t;
  }
}

TEST(SamplerTest, TemperatureSharpens) {
  const std::vector<float> l = {1.0f, 2.0f, 0.5f, 1.5f};
  int prev = 0;
  for (float t : {4.0f, 1.0f, 0.5f, 0.05f}) {
    Sampler s(Params(t, 13));
    const int top = Histogram(s, l, 4000)[1];
    EXPECT_GT(top, prev) << t;
    prev = top;
  }
  EXPECT_GT(prev, 3990);
  // A tiny positive temperature behaves like greedy (and does not overflow).
  Sampler tiny(Params(std::numeric_limits<float>::denorm_min(), 1));
  for (int i = 0; i < 20; ++i) EXPECT_EQ(tiny.Sample(l, {}), 1);
}

// ---------------------------------------------------------------------------------------------
// Validation.

void ExpectInvalid(const SamplingParams& p, const std::string& field, const std::string& value) {
  const absl::Status st = ValidateSamplingParams(p);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << field << " " << value;
  EXPECT_THAT(std::string(st.message()), HasSubstr(field));
  EXPECT_THAT(std::string(st.message()), HasSubstr(absl::StrCat("got ", value)));
}

TEST(SamplerTest, ValidationAcceptsDefaultsAndEdges) {
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams{}).ok());
  SamplingParams p;
  p.temperature = 100.0f;
  p.top_k = 200064;
  p.top_p = 1e-9f;
  p.min_p = 1.0f;
  p.repetition_penalty = 1e-3f;
  p.presence_penalty = -2.0f;
  p.frequency_penalty = 2.0f;
  EXPECT_TRUE(ValidateSamplingParams(p).ok());
  p.frequency_penalty = -5.0f;  // finite, as presence_penalty: the API layer checks [-2, 2]
  EXPECT_TRUE(ValidateSamplingParams(p).ok());
}

TEST(SamplerTest, ValidationErrorsNameTheField) {
  SamplingParams p;
  p.temperature = kNaN;
  ExpectInvalid(p, "temperature", "nan");
  p.temperature = kInf;
  ExpectInvalid(p, "temperature", "inf");
  p.temperature = -0.5f;
  ExpectInvalid(p, "temperature", "-0.5");

  p = SamplingParams{};
  p.top_k = -1;
  ExpectInvalid(p, "top_k", "-1");

  p = SamplingParams{};
  p.top_p = 0.0f;
  ExpectInvalid(p, "top_p", "0");
  p.top_p = 1.5f;
  ExpectInvalid(p, "top_p", "1.5");
  p.top_p = -0.1f;
  ExpectInvalid(p, "top_p", "-0.1");
  p.top_p = kNaN;
  ExpectInvalid(p, "top_p", "nan");

  p = SamplingParams{};
  p.min_p = -0.1f;
  ExpectInvalid(p, "min_p", "-0.1");
  p.min_p = 1.25f;
  ExpectInvalid(p, "min_p", "1.25");
  p.min_p = kNaN;
  ExpectInvalid(p, "min_p", "nan");

  p = SamplingParams{};
  p.repetition_penalty = 0.0f;
  ExpectInvalid(p, "repetition_penalty", "0");
  p.repetition_penalty = -1.0f;
  ExpectInvalid(p, "repetition_penalty", "-1");
  p.repetition_penalty = kNaN;
  ExpectInvalid(p, "repetition_penalty", "nan");
  p.repetition_penalty = kInf;
  ExpectInvalid(p, "repetition_penalty", "inf");

  p = SamplingParams{};
  p.presence_penalty = kInf;
  ExpectInvalid(p, "presence_penalty", "inf");
  p.presence_penalty = -kInf;
  ExpectInvalid(p, "presence_penalty", "-inf");
  p.presence_penalty = kNaN;
  ExpectInvalid(p, "presence_penalty", "nan");

  p = SamplingParams{};
  p.frequency_penalty = kInf;
  ExpectInvalid(p, "frequency_penalty", "inf");
  p.frequency_penalty = -kInf;
  ExpectInvalid(p, "frequency_penalty", "-inf");
  p.frequency_penalty = kNaN;
  ExpectInvalid(p, "frequency_penalty", "nan");
}

}  // namespace
}  // namespace sambay
