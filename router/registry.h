// WorkerRegistry: the router's view of its workers. Workers come from static lists (per role,
// or "any": the role is read from GetInfo) and from DNS names re-resolved periodically (a
// Kubernetes headless Service gives one address per pod). A probe thread calls GetInfo once per
// worker (model fingerprint and roles) and GetLoad every health interval; the probes that are
// due run concurrently (a thread each), so a hung worker delays no other worker's probe, and a
// worker whose probe failed gets a fresh channel (not one stuck on a dead connection). A worker is
// healthy after a successful probe; after `fail_threshold` failed probes in a row (or a connection
// failure reported by a request) it is taken out, probed with exponential backoff, and
// re-admitted by the first successful probe. Every worker must serve the same model: the first
// fingerprint seen (or --fingerprint) is the cluster's; a worker with another is refused and
// logged as an error on every probe.
//
// Loads are refreshed by the probes and adjusted locally between refreshes (Adjust), so that a
// burst of requests does not all land on the worker that looked idlest at the last probe.
//
// Ownership: owns the stubs and the probe thread; borrows metrics.
// Thread-safety: all public methods are thread-safe. mu_ guards the worker table (every Entry),
// the cluster fingerprint, the ready callback and its last value, and stop_; probes (RPCs), DNS
// look-ups and the ready callback run with mu_ released. next_dns_ belongs to the probe thread.
#ifndef SAMBAY_ROUTER_REGISTRY_H_
#define SAMBAY_ROUTER_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/grpc_channel.h"
#include "common/mutex.h"
#include "router/metrics.h"
#include "sambay/v1/worker.grpc.pb.h"

namespace sambay {

enum class DeclaredRole { kPrefill, kDecode, kAny };

struct RegistryOptions {
  std::vector<std::string> prefill, decode, any;              // static host:port lists
  std::vector<std::string> prefill_dns, decode_dns, any_dns;  // name:port, re-resolved
  absl::Duration health_interval = absl::Seconds(1);
  absl::Duration probe_timeout = absl::Seconds(1);
  absl::Duration dns_refresh = absl::Seconds(10);
  absl::Duration max_backoff = absl::Seconds(30);
  int fail_threshold = 3;
  std::string fingerprint;  // required fingerprint; empty = adopt the first seen
  RpcLimits limits;
};

// A healthy worker as placement sees it.
struct WorkerSnapshot {
  std::string address;
  bool prefill = false;
  bool decode = false;
  int64_t free_slots = 0;
  int64_t queued_prefill_tokens = 0;
  int64_t running = 0;
  int64_t waiting = 0;
  uint32_t max_context = 0;
};

class WorkerRegistry {
 public:
  WorkerRegistry(RegistryOptions options, RouterMetrics* metrics);
  ~WorkerRegistry();

  // Starts the probe thread (the first round of probes runs before this returns).
  void Start();

  std::vector<WorkerSnapshot> Healthy() const ABSL_LOCKS_EXCLUDED(mu_);
  // At least one healthy prefill-capable and one healthy decode-capable worker.
  bool Ready() const ABSL_LOCKS_EXCLUDED(mu_);
  std::shared_ptr<sambay::v1::Worker::Stub> Stub(const std::string& address)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The cluster's model fingerprint ("" until a worker answered).
  std::string fingerprint() const ABSL_LOCKS_EXCLUDED(mu_);

  // Local load adjustments until the next probe of that worker.
  void Adjust(const std::string& address, int64_t slots_delta, int64_t prefill_tokens_delta)
      ABSL_LOCKS_EXCLUDED(mu_);
  // A request saw this worker fail at the connection level: take it out until a probe succeeds.
  void ReportFailure(const std::string& address, const absl::Status& status)
      ABSL_LOCKS_EXCLUDED(mu_);
  // In the registry, healthy, and serving the cluster's model (what Healthy() lists).
  bool IsHealthy(const std::string& address) const ABSL_LOCKS_EXCLUDED(mu_);
  // The worker refused a sequence for lack of room: no free slot until its next probe.
  void MarkFull(const std::string& address) ABSL_LOCKS_EXCLUDED(mu_);

  // Called at once with Ready(), then (from the probe thread) whenever it changes.
  void SetReadyCallback(std::function<void(bool)> cb) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry {
    std::string address;
    DeclaredRole declared = DeclaredRole::kAny;
    bool from_dns = false;
    bool info_known = false;  // GetInfo answered since the last connection failure
    bool role_known = false;  // GetInfo ever answered (roles for the metrics label)
    bool refused = false;
    bool prefill = false, decode = false;
    bool healthy = false;
    int failures = 0;
    absl::Time next_probe = absl::InfinitePast();
    sambay::v1::WorkerLoad load;
    int64_t slots_adjust = 0, prefill_adjust = 0;
    uint32_t max_context = 0;
    std::shared_ptr<sambay::v1::Worker::Stub> stub;
  };

  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  void ProbeAll() ABSL_LOCKS_EXCLUDED(mu_);
  void Probe(const std::string& address) ABSL_LOCKS_EXCLUDED(mu_);
  void ResolveDns() ABSL_LOCKS_EXCLUDED(mu_);
  void AddLocked(const std::string& address, DeclaredRole role, bool from_dns)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `e` is an entry of workers_.
  void SetUpLocked(Entry& e, bool up) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool ReadyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RegistryOptions options_;
  RouterMetrics* metrics_;
  mutable Mutex mu_;
  CondVar cv_;  // signalled when stop_ is set
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, Entry> workers_ ABSL_GUARDED_BY(mu_);
  std::string fingerprint_ ABSL_GUARDED_BY(mu_);
  std::function<void(bool)> ready_cb_ ABSL_GUARDED_BY(mu_);
  bool last_ready_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time next_dns_ = absl::InfinitePast();  // the probe thread's (Start, then Loop)
  std::thread thread_;
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_REGISTRY_H_
