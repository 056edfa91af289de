// The report of sambay-bench (tools/sambay_bench.cc): what each request measured, their
// aggregate, the Markdown tables it prints and the --json file it writes.
//
// Plain functions and value types; not thread-safe (used from the bench's main thread).
#ifndef SAMBAY_TOOLS_BENCH_REPORT_H_
#define SAMBAY_TOOLS_BENCH_REPORT_H_

#include <grpcpp/support/status.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace sambay::bench {

// What one finished request measured.
struct Result {
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string error;
  bool got_token = false;
  double ttft = 0;  // seconds
  double e2e = 0;
  double first_to_last = 0;
  int64_t tokens = 0;
  int64_t messages = 0;  // stream messages that carried tokens
  int64_t prompt_tokens = 0;
  int64_t requested_tokens = 0;
  std::vector<double> itl;
};

struct Stats {
  size_t n = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};

// Nearest-rank percentiles.
Stats Summarize(std::vector<double> v);
nlohmann::json StatsJson(const Stats& s);

// A --router-pid / --worker-pid process. `before` holds its CPU seconds before the run, then
// (ReadCpuAfter) the CPU seconds it used over the run, or nothing if that could not be read.
struct ProcCpu {
  std::string name;
  int64_t pid = 0;
  std::optional<double> before;
};

// What the report needs of the run's settings (sambay-bench's flags).
struct ReportSettings {
  std::string target, api, address;
  std::string prompt_text, gen_text;  // --prompt-len, --gen-len as given
  double temperature = 0;
  int64_t warmup = 0;
  int64_t concurrency = 0;
  double rate = 0;
  double slo_ttft = 0, slo_itl = 0;
  std::string json;  // --json
};

// The aggregate of the measured run's requests: what the report prints.
struct Summary {
  size_t requests = 0;  // finished, ok or not
  int64_t ok = 0, tokens = 0, all_tokens = 0, messages = 0, good = 0, short_gens = 0;
  std::map<std::string, int64_t> errors;           // failed requests per gRPC code name
  std::map<std::string, std::string> first_error;  // the first message per gRPC code name
  Stats ttft, itl, e2e, e2e_tok, mean_itl;
  double wall = 0, self_cpu = 0;  // seconds
  double rps = 0, tps = 0, goodput = 0;
  bool slo = false;  // --slo-ttft or --slo-itl given
  size_t failed() const { return requests - static_cast<size_t>(ok); }
};

Summary Aggregate(const ReportSettings& f, const std::vector<Result>& results, double wall,
                  double self_cpu);
// "closed loop, concurrency N" or "open loop, Poisson R req/s".
std::string LoadText(const ReportSettings& f);
// The report's title, the run's description and the latency table.
void PrintLatencies(const ReportSettings& f, const std::string& load, int64_t sent,
                    const Summary& s);
// The result table, then the first error of each kind on stderr.
void PrintResults(const ReportSettings& f, const std::vector<ProcCpu>& procs, const Summary& s);
// Writes the results and `config` as JSON to f.json; false (error on stderr) if it cannot.
bool WriteJson(const nlohmann::json& config, const ReportSettings& f, const std::string& load,
               int64_t sent, const std::vector<ProcCpu>& procs, const Summary& s);

}  // namespace sambay::bench

#endif  // SAMBAY_TOOLS_BENCH_REPORT_H_
