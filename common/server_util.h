// Start-up and shutdown pieces shared by the server binaries (sambay-worker, sambay-router):
// termination signals taken by sigwait, the port file, and flag parsing with the usual exits.
// Call from main() only (process-wide effects); not thread-safe.
#ifndef SAMBAY_COMMON_SERVER_UTIL_H_
#define SAMBAY_COMMON_SERVER_UTIL_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "common/flags.h"

namespace sambay {

// Blocks SIGTERM and SIGINT in this thread (and every thread started later) and ignores
// SIGPIPE. Call first thing in main().
void BlockTerminationSignals();
// Waits for SIGTERM or SIGINT; returns its name.
std::string WaitForTerminationSignal();

// Keeps freed large buffers (state chunks, K/V blocks) in the heap for reuse instead of returning
// them to the kernel, so a steady stream of state transfers does not page-fault on every
// megabyte. Call once at start-up.
void TuneMallocForLargeBuffers();

// Writes {"grpc_port":N,"metrics_port":M,"pid":P} to `path` atomically (temp file + rename).
absl::Status WritePortFile(const std::string& path, int grpc_port, int metrics_port);

// Parses flags; on --help prints the usage and returns 0, on a bad flag prints
// "<program>: error: ..." and returns 2; otherwise nullopt (go on).
std::optional<int> ParseServerFlags(FlagSet& flags, const char* program, int argc, char** argv);

}  // namespace sambay

#endif  // SAMBAY_COMMON_SERVER_UTIL_H_
