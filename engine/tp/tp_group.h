// TpGroup: the ranks of a tensor-parallel CPU model (docs/design.md "Tensor parallelism"): one
// thread per rank, each with its own shard of the weights (engine/tp/tp_weights.h), its own thread
// pool (its share of the model's threads) and its CpuCommunicator. A forward pass runs ForwardPass
// on every rank at once (rank 0 on the calling thread, ranks 1..N-1 on their own threads) over the
// ranks' shards of the sequence states; the ranks meet in the communicator's all-reduces.
//
// Ownership: owns the rank threads (joined by the destructor), pools, communicators and shard
// weights; borrows the logical ModelWeights (the checkpoint mapping and the biases), which must
// outlive the group.
// Thread-safety: Forward is called by one thread at a time (Model serializes it).
#ifndef SAMBAY_ENGINE_TP_TP_GROUP_H_
#define SAMBAY_ENGINE_TP_TP_GROUP_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/rank_threads.h"
#include "common/thread_pool.h"
#include "engine/config.h"
#include "engine/model.h"
#include "engine/tp/cpu_communicator.h"
#include "engine/tp/tp_plan.h"
#include "engine/weights.h"

namespace sambay {

class TpGroup {
 public:
  // plan.tp ranks sharing `num_threads` compute threads (each rank gets max(1, num_threads /
  // plan.tp), its own thread included). REQUIRES: plan == MakeTpPlan(config, plan.tp).
  TpGroup(const ModelConfig& config, const ModelWeights& logical, TpPlan plan, int num_threads);
  ~TpGroup();
  TpGroup(const TpGroup&) = delete;
  TpGroup& operator=(const TpGroup&) = delete;

  const TpPlan& plan() const { return plan_; }
  int threads_per_rank() const { return threads_per_rank_; }

  // One forward pass. REQUIRES: the segments are valid (Model::Validate) and every state is
  // sharded by plan() (SequenceState::shards). Writes OutputRows(segments) logits rows
  // [*, vocab] at `logits`, and advances each state's num_tokens (and its shards').
  absl::Status Forward(absl::Span<const ForwardSegment> segments, float* logits);

 private:
  struct Rank {
    ModelWeights weights;
    std::unique_ptr<ThreadPool> pool;
    std::unique_ptr<CpuCommunicator> comm;
  };
  absl::Status RunRank(int rank, absl::Span<const ForwardSegment> segments, float* logits);

  // Immutable after construction.
  const ModelConfig config_;
  const ModelWeights& logical_;
  const TpPlan plan_;
  int threads_per_rank_ = 1;
  std::vector<Rank> ranks_;
  RankThreads threads_;  // after ranks_: joined before the ranks are destroyed
};

}  // namespace sambay

#endif  // SAMBAY_ENGINE_TP_TP_GROUP_H_
