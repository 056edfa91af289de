#include "router/placement.h"

#include <tuple>

#include "absl/strings/str_cat.h"

namespace sambay {
namespace {

// Candidates for a role: dedicated workers first; role-both workers only if none qualifies.
std::vector<int> Candidates(const std::vector<WorkerSnapshot>& w, const std::set<std::string>& ex,
                            bool want_prefill) {
  std::vector<int> dedicated, both;
  for (int i = 0; i < static_cast<int>(w.size()); ++i) {
    if (ex.count(w[i].address) != 0) continue;
    const bool has = want_prefill ? w[i].prefill : w[i].decode;
    const bool other = want_prefill ? w[i].decode : w[i].prefill;
    if (!has || w[i].free_slots <= 0) continue;
    (other ? both : dedicated).push_back(i);
  }
  return dedicated.empty() ? both : dedicated;
}

class LeastLoaded : public PlacementPolicy {
 public:
  std::string name() const override { return "least-loaded"; }
  int PickPrefill(const std::vector<WorkerSnapshot>& w, const std::set<std::string>& ex) override {
    int best = -1;
    for (int i : Candidates(w, ex, true)) {
      auto key = [&](int j) {
        return std::make_tuple(w[j].queued_prefill_tokens, w[j].running + w[j].waiting,
                               w[j].address);
      };
      if (best < 0 || key(i) < key(best)) best = i;
    }
    return best;
  }
  int PickDecode(const std::vector<WorkerSnapshot>& w, const std::set<std::string>& ex) override {
    int best = -1;
    for (int i : Candidates(w, ex, false)) {
      auto key = [&](int j) {
        return std::make_tuple(-w[j].free_slots, w[j].running, w[j].address);
      };
      if (best < 0 || key(i) < key(best)) best = i;
    }
    return best;
  }
};

class RoundRobin : public PlacementPolicy {
 public:
  std::string name() const override { return "round-robin"; }
  int PickPrefill(const std::vector<WorkerSnapshot>& w, const std::set<std::string>& ex) override {
    return Next(Candidates(w, ex, true), prefill_counter_);
  }
  int PickDecode(const std::vector<WorkerSnapshot>& w, const std::set<std::string>& ex) override {
    return Next(Candidates(w, ex, false), decode_counter_);
  }

 private:
  // One counter per role: with a shared one, every placement (a decode pick, then a prefill
  // pick) advanced it twice, and with an even number of decode candidates the prefill picks
  // never reached half of the prefill workers.
  static int Next(const std::vector<int>& c, std::atomic<uint64_t>& counter) {
    if (c.empty()) return -1;
    return c[counter.fetch_add(1) % c.size()];
  }
  std::atomic<uint64_t> prefill_counter_{0}, decode_counter_{0};
};

}  // namespace

absl::StatusOr<std::unique_ptr<PlacementPolicy>> MakePlacementPolicy(const std::string& name) {
  if (name == "least-loaded") return std::make_unique<LeastLoaded>();
  if (name == "round-robin") return std::make_unique<RoundRobin>();
  return absl::InvalidArgumentError(
      absl::StrCat("--placement: must be least-loaded or round-robin, got \"", name, "\""));
}

}  // namespace sambay
