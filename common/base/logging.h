// Process-wide logging setup shared by tpserve-coordinator, tpserve-worker and the tpserve tool:
// human-readable lines by default, one JSON object per line with --log-format json (for log
// collectors: Loki, Elasticsearch, Cloud Logging), and --log-level.
//
//   text:  [coordinator] 12:00:01.234 info serving SmolLM2 with 2 rank(s)
//   json:  {"ts":"2026-11-28T12:00:01.234567Z","level":"info","process":"coordinator","msg":"..."}
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace CLI {
class App;
}

namespace tpserve {

struct LogOptions {
  std::string format = "text";  // "text" or "json"
  std::string level = "info";   // trace, debug, info, warn, error, critical, off
};

// Adds --log-format and --log-level (with their defaults in --help) to `app`.
void AddLogFlags(CLI::App& app, LogOptions& options);

// Sets spdlog's default logger pattern and level. `process` names the process in every line
// ("coordinator", "rank 1", ...). INVALID_ARGUMENT for an unknown format or level.
absl::Status ConfigureLogging(const LogOptions& options, std::string_view process);

// `s` as the inside of a JSON string literal (quotes, backslashes, control characters escaped;
// UTF-8 passed through).
std::string JsonEscape(std::string_view s);

}  // namespace tpserve
