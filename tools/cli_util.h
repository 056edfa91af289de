// Small helpers shared by the command-line tools: id list parsing and one-line error exits.
// Stateless; thread-safe.
#ifndef SAMBAY_TOOLS_CLI_UTIL_H_
#define SAMBAY_TOOLS_CLI_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sambay {

// "3,14,15" or "3 14 15" -> ids. `flag` names the flag in errors.
absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text, const std::string& flag);

// Reads a file of ids separated by commas and/or whitespace.
absl::StatusOr<std::vector<int32_t>> ReadIdsFile(const std::string& path);

// Rewrites "--max-new-tokens[=v]" into "--max_new_tokens[=v]" (Abseil flag names use
// underscores; the documented CLI uses dashes). Stops at a bare "--". Returns new argv storage.
std::vector<std::string> DashesToUnderscores(int argc, char** argv);

// Parses Abseil flags (dashes accepted, see above) after setting the usage text; returns the
// positional arguments, argv[0] included.
std::vector<std::string> ParseFlags(int argc, char** argv, const char* usage);

// Prints "<tool>: error: <message>" on one line to stderr; returns the exit code (1).
int ReportError(const char* tool, const absl::Status& status);

}  // namespace sambay

#endif  // SAMBAY_TOOLS_CLI_UTIL_H_
