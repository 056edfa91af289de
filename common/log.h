// Log: one JSON object per line on stderr (time in UTC RFC 3339 with milliseconds, level,
// component, message, then any extra fields such as request_id).
//
//   Log(LogLevel::kInfo, "worker", "listening", {{"port", 50051}});
//
// Lines below the global level (SetLogLevel; default info) are dropped. Thread-safe: a line is
// formatted first and written with one fwrite under a mutex, so lines never interleave.
#ifndef SAMBAY_COMMON_LOG_H_
#define SAMBAY_COMMON_LOG_H_

#include <string>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace sambay {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// "debug", "info", "warning" (or "warn"), "error".
absl::Status SetLogLevel(const std::string& name);
bool LogEnabled(LogLevel level);

void Log(LogLevel level, const std::string& component, const std::string& message,
         const nlohmann::json& fields = nlohmann::json::object());

}  // namespace sambay

#endif  // SAMBAY_COMMON_LOG_H_
