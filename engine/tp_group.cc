#include "engine/tp_group.h"

#include <algorithm>
#include <utility>

#include "common/check.h"
#include "engine/forward.h"
#include "engine/tp_weights.h"

namespace sambay {

TpGroup::TpGroup(const ModelConfig& config, const ModelWeights& logical, TpPlan plan,
                 int num_threads)
    : config_(config), logical_(logical), plan_(std::move(plan)) {
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
  job_status_.resize(plan_.tp);
  for (int r = 1; r < plan_.tp; ++r) threads_.emplace_back([this, r] { RankLoop(r); });
}

TpGroup::~TpGroup() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

absl::Status TpGroup::RunRank(int rank) {
  const TpRankSlice& slice = plan_.ranks[rank];
  std::vector<ForwardSegment> segs(job_segments_.begin(), job_segments_.end());
  for (ForwardSegment& s : segs) s.state = &s.state->shards[rank];
  TpRank tp;
  tp.comm = ranks_[rank].comm.get();
  tp.logical = &logical_;
  tp.vocab0 = slice.vocab0;
  return ForwardPass(slice.config, ranks_[rank].weights, *ranks_[rank].pool, segs, job_logits_,
                     &tp);
}

void TpGroup::RankLoop(int rank) {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    job_status_[rank] = RunRank(rank);
    std::lock_guard<std::mutex> lock(mu_);
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

absl::Status TpGroup::Forward(absl::Span<const ForwardSegment> segments, float* logits) {
  for (const ForwardSegment& s : segments) {
    SAMBAY_CHECK(s.state != nullptr && s.state->tp_size() == plan_.tp);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_segments_ = segments;
    job_logits_ = logits;
    pending_ = plan_.tp - 1;
    ++generation_;
  }
  start_cv_.notify_all();
  job_status_[0] = RunRank(0);
  {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return pending_ == 0; });
  }
  for (const ForwardSegment& s : segments) s.state->num_tokens += s.tokens.size();
  for (const absl::Status& s : job_status_) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace sambay
