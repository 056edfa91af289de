#include "router/registry.h"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/log.h"

namespace sambay {
namespace {

namespace pb = sambay::v1;

const char* RoleName(bool prefill, bool decode) {
  return prefill && decode ? "both" : prefill ? "prefill" : decode ? "decode" : "none";
}

// "name:port" -> every address the name resolves to, as "ip:port" / "[ip6]:port".
std::vector<std::string> Resolve(const std::string& name_port) {
  std::vector<std::string> out;
  const size_t colon = name_port.rfind(':');
  if (colon == std::string::npos) return out;
  const std::string host = name_port.substr(0, colon), port = name_port.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0) return out;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    char ip[NI_MAXHOST];
    if (getnameinfo(a->ai_addr, a->ai_addrlen, ip, sizeof(ip), nullptr, 0, NI_NUMERICHOST) != 0) {
      continue;
    }
    const std::string addr =
        a->ai_family == AF_INET6 ? absl::StrCat("[", ip, "]:", port) : absl::StrCat(ip, ":", port);
    if (std::find(out.begin(), out.end(), addr) == out.end()) out.push_back(addr);
  }
  freeaddrinfo(res);
  return out;
}

}  // namespace

WorkerRegistry::WorkerRegistry(RegistryOptions options, RouterMetrics* metrics)
    : options_(std::move(options)), metrics_(metrics), fingerprint_(options_.fingerprint) {
  MutexLock lock(&mu_);
  for (const auto& a : options_.prefill) AddLocked(a, DeclaredRole::kPrefill, false);
  for (const auto& a : options_.decode) AddLocked(a, DeclaredRole::kDecode, false);
  for (const auto& a : options_.any) AddLocked(a, DeclaredRole::kAny, false);
}

WorkerRegistry::~WorkerRegistry() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  cv_.SignalAll();
  if (thread_.joinable()) thread_.join();
}

void WorkerRegistry::Start() {
  ResolveDns();
  ProbeAll();
  thread_ = std::thread([this] { Loop(); });
}

void WorkerRegistry::AddLocked(const std::string& address, DeclaredRole role, bool from_dns) {
  if (workers_.count(address) != 0) return;
  Entry e;
  e.address = address;
  e.declared = role;
  e.from_dns = from_dns;
  e.stub = pb::Worker::NewStub(MakeChannel(address, options_.limits));
  workers_.emplace(address, std::move(e));
  Log(LogLevel::kInfo, "registry", "worker added",
      {{"worker", address}, {"source", from_dns ? "dns" : "static"}});
}

void WorkerRegistry::ResolveDns() {
  struct Name {
    const std::vector<std::string>* names;
    DeclaredRole role;
  };
  const Name all[] = {{&options_.prefill_dns, DeclaredRole::kPrefill},
                      {&options_.decode_dns, DeclaredRole::kDecode},
                      {&options_.any_dns, DeclaredRole::kAny}};
  std::map<std::string, DeclaredRole> found;
  bool any_names = false;
  for (const Name& n : all) {
    for (const std::string& name : *n.names) {
      any_names = true;
      for (const std::string& a : Resolve(name)) found.emplace(a, n.role);
    }
  }
  if (!any_names) return;
  MutexLock lock(&mu_);
  for (const auto& [a, role] : found) AddLocked(a, role, true);
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (it->second.from_dns && found.count(it->first) == 0) {
      Log(LogLevel::kInfo, "registry", "worker removed (no longer in DNS)",
          {{"worker", it->first}});
      if (metrics_) metrics_->WorkerRemoved(it->first);
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
}

void WorkerRegistry::SetUpLocked(Entry& e, bool up) {
  if (e.healthy != up) {
    Log(up ? LogLevel::kInfo : LogLevel::kWarning, "registry",
        up ? "worker healthy" : "worker taken out",
        {{"worker", e.address}, {"failures", e.failures}});
  }
  e.healthy = up;
  if (metrics_ && e.role_known) {
    metrics_->WorkerUp(e.address, RoleName(e.prefill, e.decode), up && !e.refused);
  }
}

void WorkerRegistry::Probe(const std::string& address) {
  std::shared_ptr<pb::Worker::Stub> stub;
  bool need_info;
  {
    MutexLock lock(&mu_);
    auto it = workers_.find(address);
    if (it == workers_.end()) return;
    stub = it->second.stub;
    need_info = !it->second.info_known;
  }
  pb::WorkerInfo info;
  grpc::Status st;
  if (need_info) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.probe_timeout));
    st = stub->GetInfo(&ctx, pb::GetInfoRequest(), &info);
  }
  pb::WorkerLoad load;
  if (st.ok()) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.probe_timeout));
    st = stub->GetLoad(&ctx, pb::GetLoadRequest(), &load);
  }
  MutexLock lock(&mu_);
  auto it = workers_.find(address);
  if (it == workers_.end()) return;
  Entry& e = it->second;
  const absl::Time now = absl::Now();
  if (st.ok() && need_info) {
    const bool p = std::count(info.roles().begin(), info.roles().end(), "prefill") > 0;
    const bool d = std::count(info.roles().begin(), info.roles().end(), "decode") > 0;
    if (fingerprint_.empty()) {
      fingerprint_ = info.fingerprint();
      Log(LogLevel::kInfo, "registry", "cluster model fingerprint adopted",
          {{"fingerprint", fingerprint_}, {"worker", address}});
    }
    std::string why;
    if (info.fingerprint() != fingerprint_) {
      why =
          absl::StrCat("serves model ", info.fingerprint(), ", the cluster serves ", fingerprint_);
    } else if (e.declared == DeclaredRole::kPrefill && !p) {
      why = "listed as a prefill worker but does not serve role prefill";
    } else if (e.declared == DeclaredRole::kDecode && !d) {
      why = "listed as a decode worker but does not serve role decode";
    }
    e.info_known = true;
    e.role_known = true;
    e.prefill = p && e.declared != DeclaredRole::kDecode;
    e.decode = d && e.declared != DeclaredRole::kPrefill;
    e.max_context = info.max_context_tokens();
    e.refused = !why.empty();
    if (e.refused) {
      Log(LogLevel::kError, "registry", "worker refused", {{"worker", address}, {"reason", why}});
    }
  }
  if (e.refused) {
    // Re-read its info later: the worker may be replaced by a correct one at this address.
    e.info_known = false;
    e.next_probe = now + options_.max_backoff;
    SetUpLocked(e, false);
    return;
  }
  if (st.ok()) {
    e.failures = 0;
    e.load = load;
    e.slots_adjust = e.prefill_adjust = 0;
    e.next_probe = now + options_.health_interval;
    SetUpLocked(e, !load.draining());
    return;
  }
  ++e.failures;
  if (e.failures >= options_.fail_threshold || !e.healthy) SetUpLocked(e, false);
  // The worker may have restarted with another model or role: ask again when it is back.
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE) e.info_known = false;
  // A fresh channel for the next probe: the old one may sit in its reconnect backoff, or on a
  // connection a partition or a stopped process left half-open (calls already made keep theirs).
  e.stub = pb::Worker::NewStub(MakeChannel(address, options_.limits));
  const int shift = std::min(e.failures - 1, 16);
  e.next_probe = now + std::min(options_.max_backoff, options_.health_interval * (1 << shift));
}

void WorkerRegistry::ProbeAll() {
  std::vector<std::string> due;
  {
    MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    for (const auto& [a, e] : workers_) {
      if (e.next_probe <= now) due.push_back(a);
    }
  }
  // Concurrently: a hung worker costs one probe timeout, not one per worker behind it.
  std::vector<std::thread> probes;
  probes.reserve(due.size());
  for (const std::string& a : due) probes.emplace_back([this, a] { Probe(a); });
  for (std::thread& t : probes) t.join();
  std::function<void(bool)> cb;
  bool ready;
  {
    MutexLock lock(&mu_);
    ready = ReadyLocked();
    if (ready == last_ready_ && ready_cb_) return;
    last_ready_ = ready;
    cb = ready_cb_;
  }
  if (cb) cb(ready);
}

void WorkerRegistry::Loop() {
  for (;;) {
    {
      MutexLock lock(&mu_);
      const absl::Time deadline = absl::Now() + absl::Milliseconds(100);
      while (!stop_) {
        if (cv_.WaitWithDeadline(&mu_, deadline)) break;
      }
      if (stop_) return;
    }
    if (absl::Now() >= next_dns_) {
      ResolveDns();
      next_dns_ = absl::Now() + options_.dns_refresh;
    }
    ProbeAll();
  }
}

std::vector<WorkerSnapshot> WorkerRegistry::Healthy() const {
  MutexLock lock(&mu_);
  std::vector<WorkerSnapshot> out;
  for (const auto& [a, e] : workers_) {
    if (!e.healthy || e.refused || !e.info_known) continue;
    WorkerSnapshot s;
    s.address = a;
    s.prefill = e.prefill;
    s.decode = e.decode;
    s.free_slots = static_cast<int64_t>(e.load.free_slots()) + e.slots_adjust;
    s.queued_prefill_tokens =
        static_cast<int64_t>(e.load.queued_prefill_tokens()) + e.prefill_adjust;
    s.running = e.load.running();
    s.waiting = e.load.waiting();
    s.max_context = e.max_context;
    out.push_back(s);
  }
  return out;
}

bool WorkerRegistry::ReadyLocked() const {
  bool p = false, d = false;
  for (const auto& [a, e] : workers_) {
    if (!e.healthy || e.refused || !e.info_known) continue;
    p = p || e.prefill;
    d = d || e.decode;
  }
  return p && d;
}

bool WorkerRegistry::Ready() const {
  MutexLock lock(&mu_);
  return ReadyLocked();
}

std::shared_ptr<pb::Worker::Stub> WorkerRegistry::Stub(const std::string& address) {
  MutexLock lock(&mu_);
  auto it = workers_.find(address);
  return it == workers_.end() ? nullptr : it->second.stub;
}

std::string WorkerRegistry::fingerprint() const {
  MutexLock lock(&mu_);
  return fingerprint_;
}

void WorkerRegistry::Adjust(const std::string& address, int64_t slots_delta,
                            int64_t prefill_tokens_delta) {
  MutexLock lock(&mu_);
  auto it = workers_.find(address);
  if (it == workers_.end()) return;
  it->second.slots_adjust += slots_delta;
  it->second.prefill_adjust += prefill_tokens_delta;
}

bool WorkerRegistry::IsHealthy(const std::string& address) const {
  MutexLock lock(&mu_);
  auto it = workers_.find(address);
  return it != workers_.end() && it->second.healthy && !it->second.refused && it->second.info_known;
}

void WorkerRegistry::MarkFull(const std::string& address) {
  MutexLock lock(&mu_);
  auto it = workers_.find(address);
  if (it == workers_.end()) return;
  Entry& e = it->second;
  e.slots_adjust = -static_cast<int64_t>(e.load.free_slots());
}

void WorkerRegistry::ReportFailure(const std::string& address, const absl::Status& status) {
  MutexLock lock(&mu_);
  auto it = workers_.find(address);
  if (it == workers_.end()) return;
  Log(LogLevel::kWarning, "registry", "request saw a worker fail",
      {{"worker", address}, {"error", status.ToString()}});
  Entry& e = it->second;
  ++e.failures;
  SetUpLocked(e, false);
  e.info_known = false;  // re-read when it answers again (it may have restarted)
  e.next_probe = absl::Now() + options_.health_interval;
}

void WorkerRegistry::SetReadyCallback(std::function<void(bool)> cb) {
  bool ready;
  {
    MutexLock lock(&mu_);
    ready_cb_ = cb;
    ready = last_ready_ = ReadyLocked();
  }
  cb(ready);  // the current state now; later only changes
}

}  // namespace sambay
