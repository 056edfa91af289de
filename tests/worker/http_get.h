// Test support: a minimal HTTP/1.0 client (GET, or raw request bytes) (to scrape /metrics of a live
// process) and a reader of Prometheus text-format samples.
//
// Stateless functions; thread-safe.
#ifndef SAMBAY_TESTS_WORKER_HTTP_GET_H_
#define SAMBAY_TESTS_WORKER_HTTP_GET_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sambay::testing {

struct HttpResponse {
  int status = 0;  // e.g. 200
  std::string headers;
  std::string body;
};

// GET http://host:port<path> with HTTP/1.0 (the server closes the connection after the reply).
// The whole exchange is bounded by `timeout`.
absl::StatusOr<HttpResponse> HttpGet(const std::string& host, int port, const std::string& path,
                                     absl::Duration timeout = absl::Seconds(5));

// Sends `request` (raw bytes: any method, malformed on purpose) and reads until the server
// closes the connection, bounded by `timeout`; the first response of what came back (a body that
// follows is kept whole in `body`). DATA_LOSS when the bytes are not an HTTP response.
absl::StatusOr<HttpResponse> HttpExchange(const std::string& host, int port,
                                          const std::string& request,
                                          absl::Duration timeout = absl::Seconds(5));

// The body of http://127.0.0.1:port/metrics (error unless the status is 200).
absl::StatusOr<std::string> ScrapeMetrics(int port, absl::Duration timeout = absl::Seconds(5));

// One sample line of the Prometheus text format.
struct MetricSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Every sample of a text-format exposition (comments and blank lines skipped; a malformed line
// is skipped too).
std::vector<MetricSample> ParseMetrics(const std::string& text);

// The value of the sample with exactly this name and exactly these labels (order-insensitive),
// or nullopt when absent.
std::optional<double> MetricValue(const std::string& text, const std::string& name,
                                  const std::map<std::string, std::string>& labels = {});
// Same, with the series written as in the exposition: name{a="x",b="y"} or just name.
std::optional<double> SeriesValue(const std::string& text, const std::string& series);

// Sum of the values of every sample named `name` whose labels include all of `labels` (other
// labels may be present); 0 when none.
double MetricSum(const std::string& text, const std::string& name,
                 const std::map<std::string, std::string>& labels = {});

}  // namespace sambay::testing

#endif  // SAMBAY_TESTS_WORKER_HTTP_GET_H_
