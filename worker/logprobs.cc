#include "worker/logprobs.h"

#include <algorithm>
#include <cmath>

namespace sambay {

TokenLogprobs ComputeLogprobs(absl::Span<const float> row, int32_t token, int top_n) {
  float max = -INFINITY;
  for (float v : row) max = std::max(max, v);
  double sum = 0;
  for (float v : row) sum += std::exp(static_cast<double>(v) - max);
  const double log_z = max + std::log(sum);
  TokenLogprobs out;
  out.token = token;
  out.logprob = static_cast<float>(row[token] - log_z);
  if (top_n > 0) {
    std::vector<int32_t> ids(row.size());
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
    const size_t n = std::min<size_t>(top_n, ids.size());
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
      return row[a] > row[b] || (row[a] == row[b] && a < b);
    });
    for (size_t i = 0; i < n; ++i) {
      out.top.emplace_back(ids[i], static_cast<float>(row[ids[i]] - log_z));
    }
  }
  return out;
}

}  // namespace sambay
