// The placement policies, in process.
#include "router/placement.h"

#include <map>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sambay {
namespace {

WorkerSnapshot W(const std::string& address, bool prefill, bool decode) {
  WorkerSnapshot w;
  w.address = address;
  w.prefill = prefill;
  w.decode = decode;
  w.free_slots = 4;
  return w;
}

// Each placement picks a decode worker, then a prefill worker: both roles must rotate over all
// of their workers (a counter shared by the roles skipped every other prefill worker).
TEST(PlacementTest, RoundRobinRotatesEachRoleOverAllItsWorkers) {
  auto policy = MakePlacementPolicy("round-robin");
  ASSERT_TRUE(policy.ok()) << policy.status();
  const std::vector<WorkerSnapshot> workers = {W("p0", true, false), W("p1", true, false),
                                               W("d0", false, true), W("d1", false, true)};
  std::map<std::string, int> picks;
  for (int i = 0; i < 8; ++i) {
    const int d = (*policy)->PickDecode(workers, {});
    const int p = (*policy)->PickPrefill(workers, {});
    ASSERT_GE(d, 0);
    ASSERT_GE(p, 0);
    ++picks[workers[d].address];
    ++picks[workers[p].address];
  }
  EXPECT_EQ(picks["p0"], 4);
  EXPECT_EQ(picks["p1"], 4);
  EXPECT_EQ(picks["d0"], 4);
  EXPECT_EQ(picks["d1"], 4);
}

TEST(PlacementTest, FullAndExcludedWorkersAreNotPicked) {
  for (const char* name : {"least-loaded", "round-robin"}) {
    auto policy = MakePlacementPolicy(name);
    ASSERT_TRUE(policy.ok()) << policy.status();
    std::vector<WorkerSnapshot> workers = {W("d0", false, true), W("d1", false, true)};
    workers[0].free_slots = 0;
    for (int i = 0; i < 4; ++i) EXPECT_EQ((*policy)->PickDecode(workers, {}), 1) << name;
    EXPECT_EQ((*policy)->PickDecode(workers, {"d1"}), -1) << name;
  }
}

}  // namespace
}  // namespace sambay
