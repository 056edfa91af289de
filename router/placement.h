// Placement policies: which healthy worker runs a request's prefill, and which decodes it.
//
//   least-loaded (default): prefill -> the prefill-capable worker with the fewest queued prefill
//     tokens (ties: fewer running + waiting sequences, then address); decode -> the
//     decode-capable worker with the most free slots (ties: fewer running, then address).
//   round-robin: rotates over the capable workers, skipping ones with no free slot.
// Both prefer a split: dedicated prefill workers for prefill and dedicated decode workers for
// decode; workers with role both are used when no dedicated worker of that role is available.
// The caller runs prefill and decode in place when both picks are the same role-both worker.
//
// Ownership: value types. Thread-safety: a policy may be called from many threads (round-robin
// keeps an atomic counter).
#ifndef SAMBAY_ROUTER_PLACEMENT_H_
#define SAMBAY_ROUTER_PLACEMENT_H_

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "router/registry.h"

namespace sambay {

class PlacementPolicy {
 public:
  virtual ~PlacementPolicy() = default;
  virtual std::string name() const = 0;
  // Index into `workers`, or -1 when no worker qualifies (excluded ones never do).
  virtual int PickPrefill(const std::vector<WorkerSnapshot>& workers,
                          const std::set<std::string>& exclude) = 0;
  virtual int PickDecode(const std::vector<WorkerSnapshot>& workers,
                         const std::set<std::string>& exclude) = 0;
};

// "least-loaded" or "round-robin"; InvalidArgument naming --placement otherwise.
absl::StatusOr<std::unique_ptr<PlacementPolicy>> MakePlacementPolicy(const std::string& name);

}  // namespace sambay

#endif  // SAMBAY_ROUTER_PLACEMENT_H_
