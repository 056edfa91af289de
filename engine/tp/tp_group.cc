#include "engine/tp/tp_group.h"

#include <algorithm>
#include <utility>

#include "common/check.h"
#include "engine/forward.h"
#include "engine/tp/tp_weights.h"

namespace sambay {

TpGroup::TpGroup(const ModelConfig& config, const ModelWeights& logical, TpPlan plan,
                 int num_threads)
    : config_(config), logical_(logical), plan_(std::move(plan)), threads_(plan_.tp) {
  SAMBAY_CHECK(plan_.tp >= 1 && static_cast<int>(plan_.ranks.size()) == plan_.tp);
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  threads_per_rank_ = std::max(1, num_threads / plan_.tp);
  auto comms = CreateCpuCommunicators(plan_.tp);
  SAMBAY_CHECK(comms.ok());
  ranks_.resize(plan_.tp);
  for (int r = 0; r < plan_.tp; ++r) {
    ranks_[r].weights = ShardWeights(config_, logical_, plan_, r);
    ranks_[r].pool = std::make_unique<ThreadPool>(threads_per_rank_);
    ranks_[r].comm = std::move((*comms)[r]);
  }
}

TpGroup::~TpGroup() = default;

absl::Status TpGroup::RunRank(int rank, absl::Span<const ForwardSegment> segments, float* logits) {
  const TpRankSlice& slice = plan_.ranks[rank];
  std::vector<ForwardSegment> segs(segments.begin(), segments.end());
  for (ForwardSegment& s : segs) s.state = &s.state->shards[rank];
  TpRank tp;
  tp.comm = ranks_[rank].comm.get();
  tp.logical = &logical_;
  tp.vocab0 = slice.vocab0;
  return ForwardPass(slice.config, ranks_[rank].weights, *ranks_[rank].pool, segs, logits, &tp);
}

absl::Status TpGroup::Forward(absl::Span<const ForwardSegment> segments, float* logits) {
  for (const ForwardSegment& s : segments) {
    SAMBAY_CHECK(s.state != nullptr && s.state->tp_size() == plan_.tp);
  }
  const std::vector<absl::Status> status =
      threads_.Run([&](int rank) { return RunRank(rank, segments, logits); });
  for (const ForwardSegment& s : segments) s.state->num_tokens += s.tokens.size();
  for (const absl::Status& s : status) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace sambay
