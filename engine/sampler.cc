// Sampler implementation. Hot paths for a 200k vocabulary:
//   greedy: one vectorized max pass plus a scan of one 64-token chunk;
//   top-k (k <= vocab / 16): bounded heap, skipping 64-token chunks that cannot enter;
//   full vocabulary: one vectorized pass computing weights (a polynomial exp with only basic
//     IEEE operations, so results do not depend on libm or the CPU), per-block sums and maxima;
//     the draw locates its block first; top-p gathers tokens in weight bands (skipping blocks
//     whose maximum is below the band) and quickselects inside the last band, never sorting the
//     vocabulary.
#include "engine/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"

namespace sambay {
namespace {

using sampler_internal::Candidate;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Weights are exp(x) with x = (logit - max_logit) / temperature <= 0. Below kMinExponent a token
// gets weight exactly 0 (relative probability < 2e-35, far below anything a draw can hit); the
// cut also keeps every computed weight a normal float (denormals are slow on x86).
constexpr float kMinExponent = -80.0f;

// Block size for the per-block weight sums used by the full-vocabulary draw.
constexpr size_t kBlock = 512;

// Top-k scans the logits in chunks of this size and skips a chunk whose maximum cannot enter.
constexpr size_t kSkipChunk = 64;

// Weight bands of the top-p search, relative to the largest weight (which is exactly 1): each
// round gathers only the tokens with weight in [band, previous band).
constexpr float kTopPBands[] = {0x1p-2f, 0x1p-7f, 0x1p-17f, 0x1p-40f,
                                std::numeric_limits<float>::denorm_min()};

inline uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

inline uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// 4-lane vectors (GCC/Clang vector extensions; SSE2 on x86-64, NEON on ARM). Comparisons give
// lane masks (-1 / 0) usable in `mask ? a : b`.
using F4 = float __attribute__((vector_size(16)));
using I4 = int32_t __attribute__((vector_size(16)));
using U4 = uint32_t __attribute__((vector_size(16)));

inline F4 Load4(const float* p) {
  F4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void Store4(float* p, F4 v) { std::memcpy(p, &v, sizeof(v)); }

// exp(x) for x in [kMinExponent, 0], for F = float or F4 (U = matching uint32 type): Cody-Waite
// range reduction and the Cephes expf polynomial (relative error < 2e-7); exp(0) == 1 exactly.
template <typename F, typename U>
inline F ExpNonPositive(F x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const F t = x * kLog2e + kShifter;
  const F n = t - kShifter;  // round(x * log2(e)), in [-116, 0]
  const F r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  F p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const F e = p * r * r + r + 1.0f;
  // 2^n from the exponent bits: t's low mantissa bits hold n (t stays in [2^23, 2^24)).
  const U biased = std::bit_cast<U>(t) - std::bit_cast<uint32_t>(kShifter) + 127u;
  return e * std::bit_cast<F>(biased << 23);
}

// Unnormalized probability of logit v given the row maximum `lmax` (finite) and 1/temperature.
// NaN and -inf -> 0; v == lmax -> 1.
inline float Weight(float v, float lmax, float inv_t) {
  const float x = (v - lmax) * inv_t;
  if (!(x >= kMinExponent)) return 0.0f;  // also NaN
  return ExpNonPositive<float, uint32_t>(x);
}

// Largest of l[0, n) (n > 0), NaN ignored; -inf if there is none.
inline float ChunkMax(const float* l, size_t n) {
  F4 m = F4{} - kInf;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const F4 v = Load4(l + i);
    m = v > m ? v : m;  // false for NaN
  }
  float r = std::max(std::max(m[0], m[1]), std::max(m[2], m[3]));
  for (; i < n; ++i) r = l[i] > r ? l[i] : r;
  return r;
}

// Index of the first maximum of l[0, n), NaN ignored, and the maximum; (0, -inf) if every
// value is NaN or -inf.
int32_t Argmax(const float* l, size_t n, float* max_out) {
  float best = -kInf;
  size_t best_chunk = 0;
  for (size_t c = 0; c < n; c += kSkipChunk) {
    const float m = ChunkMax(l + c, std::min(kSkipChunk, n - c));
    if (m > best) {  // strict: the first chunk holding the maximum wins
      best = m;
      best_chunk = c;
    }
  }
  *max_out = best;
  if (!(best > -kInf)) return 0;
  for (size_t i = best_chunk; i < n; ++i) {
    if (l[i] == best) return static_cast<int32_t>(i);
  }
  return 0;  // unreachable
}

// Strict total order: larger value first, then lower id.
inline bool Before(const Candidate& a, const Candidate& b) {
  return a.value > b.value || (a.value == b.value && a.id < b.id);
}

// The k largest finite-or-+inf logits (ties -> lower ids), in no particular order.
void TopK(const float* l, size_t n, size_t k, std::vector<Candidate>* out) {
  out->clear();
  if (k <= n / 16) {
    // Bounded heap whose front is the worst kept candidate. Ids arrive in increasing order, so
    // an equal logit never displaces a kept one; whole chunks below the front are skipped.
    out->reserve(k);
    for (size_t i = 0; i < n;) {
      const size_t end = std::min(n, i + kSkipChunk);
      if (out->size() == k && !(ChunkMax(l + i, end - i) > out->front().value)) {
        i = end;
        continue;
      }
      for (; i < end; ++i) {
        const float v = l[i];
        if (!(v > -kInf)) continue;
        if (out->size() < k) {
          out->push_back({v, static_cast<int32_t>(i)});
          std::push_heap(out->begin(), out->end(), Before);
        } else if (v > out->front().value) {
          std::pop_heap(out->begin(), out->end(), Before);
          out->back() = {v, static_cast<int32_t>(i)};
          std::push_heap(out->begin(), out->end(), Before);
        }
      }
    }
  } else {
    for (size_t i = 0; i < n; ++i) {
      if (l[i] > -kInf) out->push_back({l[i], static_cast<int32_t>(i)});
    }
    if (out->size() > k) {
      std::nth_element(out->begin(), out->begin() + (k - 1), out->end(), Before);
      out->resize(k);
    }
  }
}

// Reorders c[0, m) so that its shortest prefix in Before order whose weights sum to >= need
// comes first, and returns that prefix's length (m if the whole set falls short by rounding).
// Quickselect on halves: O(m) expected, no full sort.
size_t ShortestPrefix(Candidate* c, size_t m, double need) {
  size_t lo = 0, hi = m;  // the answer lies in (lo, hi]; c[0, lo) is in, c[hi, m) out
  double acc = 0.0;       // sum of c[0, lo)
  while (hi - lo > 32) {
    const size_t mid = lo + (hi - lo) / 2;
    std::nth_element(c + lo, c + mid, c + hi, Before);
    double s = 0.0;
    for (size_t i = lo; i <= mid; ++i) s += c[i].value;
    if (acc + s >= need) {
      hi = mid + 1;
    } else {
      acc += s;
      lo = mid + 1;
    }
  }
  std::sort(c + lo, c + hi, Before);
  for (size_t i = lo; i < hi; ++i) {
    acc += c[i].value;
    if (acc >= need) return i + 1;
  }
  return hi;
}

// Inverse-CDF draw among c[0, m) with weight >= min_w (> 0). -1 if none qualifies.
int32_t DrawCandidates(const Candidate* c, size_t m, float min_w, double u) {
  double total = 0.0;
  for (size_t i = 0; i < m; ++i) {
    if (c[i].value >= min_w) total += c[i].value;
  }
  if (!(total > 0.0)) return -1;
  const double target = u * total;
  double acc = 0.0;
  int32_t last = -1;
  for (size_t i = 0; i < m; ++i) {
    if (c[i].value >= min_w) {
      acc += c[i].value;
      last = c[i].id;
      if (acc > target) return c[i].id;
    }
  }
  return last;  // only through rounding (u * total rounded up to total)
}

// w[i] = Weight(l[i]), zeroed below min_w. Per block of kBlock tokens, the sum of the weights
// goes to *sums and the largest weight to *maxes. Returns the total.
double ComputeWeights(const float* l, float* w, size_t n, float lmax, float inv_t, float min_w,
                      std::vector<double>* sums, std::vector<float>* maxes) {
  const size_t blocks = (n + kBlock - 1) / kBlock;
  sums->resize(blocks);
  maxes->resize(blocks);
  const F4 vmin_x = F4{} + kMinExponent;
  double total = 0.0;
  for (size_t b = 0; b < blocks; ++b) {
    const size_t end = std::min(n, (b + 1) * kBlock);
    size_t i = b * kBlock;
    F4 vsum = {}, vmax = {};
    for (; i + 4 <= end; i += 4) {
      const F4 x = (Load4(l + i) - lmax) * inv_t;
      const I4 ok = x >= vmin_x;  // false for NaN
      F4 e = ExpNonPositive<F4, U4>(ok ? x : vmin_x);
      e = (ok & (e >= min_w)) ? e : F4{};
      Store4(w + i, e);
      vsum += e;
      vmax = e > vmax ? e : vmax;
    }
    double s = (static_cast<double>(vsum[0]) + vsum[1]) + (static_cast<double>(vsum[2]) + vsum[3]);
    float m = std::max(std::max(vmax[0], vmax[1]), std::max(vmax[2], vmax[3]));
    for (; i < end; ++i) {
      const float e = Weight(l[i], lmax, inv_t);
      w[i] = e >= min_w ? e : 0.0f;
      s += w[i];
      m = std::max(m, w[i]);
    }
    (*sums)[b] = s;
    (*maxes)[b] = m;
    total += s;
  }
  return total;
}

// Inverse-CDF draw over all of w (zero weights never chosen), finding the block first.
int32_t DrawFromWeights(const float* w, size_t n, const std::vector<double>& sums, double total,
                        double u) {
  const double target = u * total;
  double acc = 0.0;
  for (size_t b = 0; b < sums.size(); ++b) {
    if (acc + sums[b] > target) {
      double a = acc;
      for (size_t i = b * kBlock, end = std::min(n, i + kBlock); i < end; ++i) {
        a += w[i];
        if (w[i] > 0.0f && a > target) return static_cast<int32_t>(i);
      }
    }
    acc += sums[b];
  }
  for (size_t i = n; i-- > 0;) {  // rounding: the last token with positive weight
    if (w[i] > 0.0f) return static_cast<int32_t>(i);
  }
  return -1;
}

// Top-p over all of w: gathers tokens band by band (heaviest first) into *out until the gathered
// weight reaches `need`, then trims the last band with ShortestPrefix. Every token not yet
// gathered weighs less than every gathered one, so the result is the head of the full order.
size_t TopPFromWeights(const float* w, size_t n, const std::vector<float>& block_max, double need,
                       std::vector<Candidate>* out) {
  out->clear();
  double cum = 0.0;
  float hi = kInf;
  for (const float band : kTopPBands) {
    const size_t begin = out->size();
    double s = 0.0;
    for (size_t b = 0; b < block_max.size(); ++b) {
      if (block_max[b] < band) continue;  // nothing in this block reaches the band
      for (size_t i = b * kBlock, end = std::min(n, i + kBlock); i < end; ++i) {
        if (w[i] >= band && w[i] < hi) {
          out->push_back({w[i], static_cast<int32_t>(i)});
          s += w[i];
        }
      }
    }
    if (cum + s >= need) {
      return begin + ShortestPrefix(out->data() + begin, out->size() - begin, need - cum);
    }
    cum += s;
    hi = band;
  }
  return out->size();
}

// v - frequency * count, in double, then rounded to float. The product is exact in double
// (24 bits times fewer than 29), so a fused multiply-add (-march=native with -ffp-contract)
// gives the same value: every build and CPU penalizes identically.
inline float FrequencyPenalized(float v, float frequency, uint32_t count) {
  return static_cast<float>(static_cast<double>(v) -
                            static_cast<double>(frequency) * static_cast<double>(count));
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be finite and >= 0, got ", p.temperature));
  }
  if (p.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", p.top_k));
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", p.top_p));
  }
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("min_p must be in [0, 1], got ", p.min_p));
  }
  if (!std::isfinite(p.repetition_penalty) || !(p.repetition_penalty > 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("repetition_penalty must be finite and > 0, got ", p.repetition_penalty));
  }
  if (!std::isfinite(p.presence_penalty)) {
    return absl::InvalidArgumentError(
        absl::StrCat("presence_penalty must be finite, got ", p.presence_penalty));
  }
  if (!std::isfinite(p.frequency_penalty)) {
    return absl::InvalidArgumentError(
        absl::StrCat("frequency_penalty must be finite, got ", p.frequency_penalty));
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params) : params_(params) {
  uint64_t x = params.seed;
  for (uint64_t& s : rng_) s = SplitMix64(x);
}

uint64_t Sampler::NextU64() {
  // xoshiro256** (Blackman & Vigna).
  const uint64_t result = Rotl(rng_[1] * 5, 7) * 9;
  const uint64_t t = rng_[1] << 17;
  rng_[2] ^= rng_[0];
  rng_[3] ^= rng_[1];
  rng_[1] ^= rng_[2];
  rng_[0] ^= rng_[3];
  rng_[2] ^= t;
  rng_[3] = Rotl(rng_[3], 45);
  return result;
}

int32_t GreedyToken(absl::Span<const float> logits) {
  float lmax;
  return logits.empty() ? 0 : Argmax(logits.data(), logits.size(), &lmax);
}

double Sampler::NextUniform() { return static_cast<double>(NextU64() >> 11) * 0x1.0p-53; }

void Sampler::CountHistory(size_t n, absl::Span<const int32_t> history) {
  counts_.resize(n);  // allocates once; every entry is zero here
  for (const int32_t t : history) {
    if (t >= 0 && static_cast<size_t>(t) < n) ++counts_[t];
  }
}

const float* Sampler::Penalize(absl::Span<const float> logits, absl::Span<const int32_t> history) {
  // Penalties, on a copy (`logits` is not modified). Each token's value is computed once from
  // its original logit: repetition and presence apply once per distinct token, frequency once
  // per occurrence (counts_, reset to zero as each token is written).
  const size_t n = logits.size();
  const float rep = params_.repetition_penalty;
  const float presence = params_.presence_penalty;
  const float frequency = params_.frequency_penalty;
  if ((rep == 1.0f && presence == 0.0f && frequency == 0.0f) || history.empty()) {
    return logits.data();
  }
  scratch_.assign(logits.begin(), logits.end());
  if (frequency != 0.0f) CountHistory(n, history);
  for (const int32_t t : history) {
    if (t < 0 || static_cast<size_t>(t) >= n) continue;  // not a token of this vocabulary
    float v = logits[t];
    if (rep != 1.0f) v = v > 0.0f ? v / rep : v * rep;
    if (frequency != 0.0f) {
      const uint32_t count = counts_[t];
      if (count == 0) continue;  // an earlier occurrence wrote this token
      counts_[t] = 0;
      v = FrequencyPenalized(v, frequency, count);
    }
    scratch_[t] = v - presence;
  }
  return scratch_.data();
}

int32_t Sampler::SampleInfinite(const float* l, size_t n, float min_w, double u) {
  // +inf logits: the limit distribution is uniform over them (lowest ids first for top-k).
  const auto top_k = static_cast<size_t>(params_.top_k);
  candidates_.clear();
  for (size_t i = 0; i < n; ++i) {
    if (l[i] == kInf) candidates_.push_back({1.0f, static_cast<int32_t>(i)});
  }
  if (top_k > 0 && candidates_.size() > top_k) candidates_.resize(top_k);
  size_t m = candidates_.size();
  if (params_.top_p < 1.0f) {
    m = ShortestPrefix(candidates_.data(), m, params_.top_p * static_cast<double>(m));
  }
  return DrawCandidates(candidates_.data(), m, min_w, u);
}

int32_t Sampler::Sample(absl::Span<const float> logits, absl::Span<const int32_t> history) {
  const double u = NextUniform();  // exactly one draw per call, whatever the mode
  const size_t n = logits.size();
  if (n == 0) return 0;

  // ---- Penalties, on a copy in scratch_ when any apply.
  const float* l = Penalize(logits, history);

  // ---- Greedy: first index of the maximum; NaN never wins; 0 if all are NaN / -inf.
  float lmax;
  const int32_t best = Argmax(l, n, &lmax);
  if (params_.temperature == 0.0f) return best;
  if (!(lmax > -kInf)) return 0;

  const float min_w = std::max(params_.min_p, std::numeric_limits<float>::denorm_min());
  const bool use_top_p = params_.top_p < 1.0f;
  const auto top_k = static_cast<size_t>(params_.top_k);
  int32_t id = -1;

  if (lmax == kInf) {
    id = SampleInfinite(l, n, min_w, u);
    return id >= 0 ? id : best;
  }

  // 1/temperature, capped so that (lmax - lmax) * inv_t stays 0 for a denormal temperature.
  const auto inv_t =
      static_cast<float>(std::min(1.0 / static_cast<double>(params_.temperature),
                                  static_cast<double>(std::numeric_limits<float>::max())));

  if (top_k > 0 && top_k < n) {
    // ---- Top-k candidates, their weights, then top-p / min-p among them.
    TopK(l, n, top_k, &candidates_);
    double total = 0.0;
    for (Candidate& c : candidates_) {
      c.value = Weight(c.value, lmax, inv_t);
      total += c.value;
    }
    size_t m = candidates_.size();
    if (use_top_p) m = ShortestPrefix(candidates_.data(), m, params_.top_p * total);
    id = DrawCandidates(candidates_.data(), m, min_w, u);
  } else {
    // ---- Full vocabulary: weights into scratch_ (in place over penalized logits).
    scratch_.resize(n);
    float* w = scratch_.data();
    // Without top-p, min-p is a plain threshold folded into the weights; with top-p it must
    // wait until the top-p set (computed from the unfiltered distribution) is known.
    const double total =
        ComputeWeights(l, w, n, lmax, inv_t, use_top_p ? 0.0f : min_w, &block_sums_, &block_max_);
    if (use_top_p) {
      const size_t m = TopPFromWeights(w, n, block_max_, params_.top_p * total, &selected_);
      id = DrawCandidates(selected_.data(), m, min_w, u);
    } else {
      id = DrawFromWeights(w, n, block_sums_, total, u);
    }
    // The maximum has weight exactly 1 >= min_p, so a draw always succeeds.
  }
  return id >= 0 ? id : best;
}

}  // namespace sambay
