#include "tools/bench_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/grpc_status.h"

namespace sambay::bench {
namespace {

constexpr const char* kTool = "sambay-bench";

std::string Ms(double seconds) { return absl::StrFormat("%.3f", seconds * 1e3); }

// The result table's rows for the --router-pid / --worker-pid processes.
void PrintCpuRows(const std::vector<ProcCpu>& procs, const Summary& s) {
  for (const ProcCpu& p : procs) {
    if (!p.before) continue;
    const double cpu = *p.before;
    std::printf("| %s CPU s (pid %lld) | %.3f |\n", p.name.c_str(), static_cast<long long>(p.pid),
                cpu);
    std::printf("| %s CPU utilisation (cores) | %.3f |\n", p.name.c_str(),
                s.wall > 0 ? cpu / s.wall : 0);
    std::printf("| tokens per %s CPU-second | %s |\n", p.name.c_str(),
                cpu > 0 ? absl::StrFormat("%.0f", static_cast<double>(s.all_tokens) / cpu).c_str()
                        : "n/a (under one clock tick)");
    std::printf("| %s CPU us per token | %.2f |\n", p.name.c_str(),
                s.all_tokens > 0 ? cpu * 1e6 / static_cast<double>(s.all_tokens) : 0.0);
  }
}

}  // namespace

// Nearest-rank percentiles.
Stats Summarize(std::vector<double> v) {
  Stats s;
  s.n = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto pct = [&](double p) {
    size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
    rank = std::clamp<size_t>(rank, 1, v.size());
    return v[rank - 1];
  };
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / static_cast<double>(v.size());
  s.p50 = pct(50);
  s.p90 = pct(90);
  s.p99 = pct(99);
  s.max = v.back();
  return s;
}

nlohmann::json StatsJson(const Stats& s) {
  return {{"n", s.n},     {"mean", s.mean}, {"p50", s.p50},
          {"p90", s.p90}, {"p99", s.p99},   {"max", s.max}};
}

Summary Aggregate(const ReportSettings& f, const std::vector<Result>& results, double wall,
                  double self_cpu) {
  Summary s;
  s.requests = results.size();
  std::vector<double> ttft, itl, e2e, e2e_per_token, mean_itl;
  for (const Result& r : results) {
    s.all_tokens += r.tokens;
    if (r.code != grpc::StatusCode::OK) {
      const std::string name = GrpcCodeName(r.code);
      ++s.errors[name];
      s.first_error.emplace(name, r.error);
      continue;
    }
    ++s.ok;
    s.tokens += r.tokens;
    s.messages += r.messages;
    if (r.tokens < r.requested_tokens) ++s.short_gens;
    e2e.push_back(r.e2e);
    if (r.tokens > 0) e2e_per_token.push_back(r.e2e / static_cast<double>(r.tokens));
    if (r.got_token) ttft.push_back(r.ttft);
    itl.insert(itl.end(), r.itl.begin(), r.itl.end());
    const double m = r.tokens > 1 ? r.first_to_last / static_cast<double>(r.tokens - 1) : 0.0;
    if (r.tokens > 1) mean_itl.push_back(m);
    const bool ttft_ok = f.slo_ttft <= 0 || (r.got_token && r.ttft <= f.slo_ttft);
    const bool itl_ok = f.slo_itl <= 0 || m <= f.slo_itl;
    if (ttft_ok && itl_ok) ++s.good;
  }
  s.ttft = Summarize(ttft);
  s.itl = Summarize(itl);
  s.e2e = Summarize(e2e);
  s.e2e_tok = Summarize(e2e_per_token);
  s.mean_itl = Summarize(mean_itl);
  s.wall = wall;
  s.self_cpu = self_cpu;
  s.rps = wall > 0 ? static_cast<double>(s.ok) / wall : 0;
  s.tps = wall > 0 ? static_cast<double>(s.tokens) / wall : 0;
  s.goodput = wall > 0 ? static_cast<double>(s.good) / wall : 0;
  s.slo = f.slo_ttft > 0 || f.slo_itl > 0;
  return s;
}

// "closed loop, concurrency N" or "open loop, Poisson R req/s".
std::string LoadText(const ReportSettings& f) {
  return f.concurrency > 0 ? absl::StrCat("closed loop, concurrency ", f.concurrency)
                           : absl::StrFormat("open loop, Poisson %g req/s", f.rate);
}

// The report's title, the run's description and the latency table.
void PrintLatencies(const ReportSettings& f, const std::string& load, int64_t sent,
                    const Summary& s) {
  std::printf("### sambay-bench: %s%s %s\n\n", f.target.c_str(),
              f.api == "http" ? " (HTTP/SSE)" : "", f.address.c_str());
  std::printf(
      "%s; prompt %s tokens, gen %s tokens; %s; %lld requests sent", load.c_str(),
      f.prompt_text.c_str(), f.gen_text.c_str(),
      f.temperature > 0 ? absl::StrFormat("temperature %g", f.temperature).c_str() : "greedy",
      static_cast<long long>(sent));
  if (f.warmup > 0) std::printf(" (+%lld warm-up)", static_cast<long long>(f.warmup));
  std::printf("\n\n");
  std::printf("| latency (ms) | n | mean | p50 | p90 | p99 | max |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
  auto row = [](const char* name, const Stats& s) {
    std::printf("| %s | %zu | %s | %s | %s | %s | %s |\n", name, s.n, Ms(s.mean).c_str(),
                Ms(s.p50).c_str(), Ms(s.p90).c_str(), Ms(s.p99).c_str(), Ms(s.max).c_str());
  };
  row("TTFT", s.ttft);
  row("ITL (per token)", s.itl);
  row("mean ITL per request", s.mean_itl);
  row("end-to-end", s.e2e);
  row("end-to-end / tokens", s.e2e_tok);
}

// The result table, then the first error of each kind on stderr.
void PrintResults(const ReportSettings& f, const std::vector<ProcCpu>& procs, const Summary& s) {
  std::printf("\n| result | value |\n|---|---:|\n");
  std::printf("| wall time (s) | %.3f |\n", s.wall);
  std::printf("| requests ok | %lld |\n", static_cast<long long>(s.ok));
  std::printf("| requests failed | %zu |\n", s.failed());
  std::printf("| ok requests with fewer tokens than asked | %lld |\n",
              static_cast<long long>(s.short_gens));
  std::printf("| requests/s | %.3f |\n", s.rps);
  std::printf("| output tokens | %lld |\n", static_cast<long long>(s.tokens));
  std::printf("| output tokens/s | %.1f |\n", s.tps);
  std::printf(
      "| tokens per stream message | %.2f |\n",
      s.messages > 0 ? static_cast<double>(s.tokens) / static_cast<double>(s.messages) : 0.0);
  if (s.slo) {
    std::printf("| goodput (req/s, TTFT <= %g s, mean ITL <= %g s) | %.3f (%lld of %lld ok) |\n",
                f.slo_ttft, f.slo_itl, s.goodput, static_cast<long long>(s.good),
                static_cast<long long>(s.ok));
  }
  std::printf("| loadgen CPU s (this process) | %.3f |\n", s.self_cpu);
  PrintCpuRows(procs, s);
  for (const auto& [code, n] : s.errors) {
    std::printf("| errors %s | %lld |\n", code.c_str(), static_cast<long long>(n));
  }
  for (const auto& [code, msg] : s.first_error) {
    std::fprintf(stderr, "%s: first %s error: %s\n", kTool, code.c_str(), msg.c_str());
  }
}

// Writes the results and the config as JSON to --json; false (error on stderr) if it cannot.
bool WriteJson(const nlohmann::json& config, const ReportSettings& f, const std::string& load,
               int64_t sent, const std::vector<ProcCpu>& procs, const Summary& s) {
  nlohmann::json j;
  j["config"] = config;
  j["config"]["load"] = load;
  j["sent"] = sent;
  j["wall_seconds"] = s.wall;
  j["requests_ok"] = s.ok;
  j["requests_failed"] = s.failed();
  j["short_generations"] = s.short_gens;
  j["requests_per_second"] = s.rps;
  j["output_tokens"] = s.tokens;
  j["output_tokens_per_second"] = s.tps;
  j["token_messages"] = s.messages;
  j["seconds"] = {{"ttft", StatsJson(s.ttft)},
                  {"itl", StatsJson(s.itl)},
                  {"mean_itl_per_request", StatsJson(s.mean_itl)},
                  {"e2e", StatsJson(s.e2e)},
                  {"e2e_per_token", StatsJson(s.e2e_tok)}};
  if (s.slo) {
    j["goodput"] = {{"slo_ttft", f.slo_ttft},
                    {"slo_itl_mean", f.slo_itl},
                    {"requests", s.good},
                    {"requests_per_second", s.goodput}};
  }
  j["errors"] = s.errors;
  j["loadgen_cpu_seconds"] = s.self_cpu;
  for (const ProcCpu& p : procs) {
    if (!p.before) continue;
    j[p.name + "_cpu"] = {{"pid", p.pid},
                          {"cpu_seconds", *p.before},
                          {"tokens_streamed", s.all_tokens},
                          {"tokens_per_cpu_second",
                           *p.before > 0 ? static_cast<double>(s.all_tokens) / *p.before : 0.0}};
  }
  std::ofstream file(f.json);
  file << j.dump(2) << "\n";
  if (!file) {
    std::fprintf(stderr, "%s: error: cannot write %s\n", kTool, f.json.c_str());
    return false;
  }
  return true;
}

}  // namespace sambay::bench
