// The results of a `tpserve bench` run: per-request records and server-stats snapshots in, the
// summary table and its JSON out. Pure data (no gRPC), tested in tests/tools/bench_report_test.cc.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "tools/bench_stats.h"

namespace tpserve::bench {

// What the client saw of one request. Times in milliseconds from the moment the call started.
struct RequestRecord {
  int code = 0;             // gRPC status code (0: OK), same numbering as absl::StatusCode
  double ttft_ms = -1;      // first response carrying a token; -1 when none came
  double e2e_ms = 0;        // until the call ended
  std::vector<double> itl;  // gaps between successive token-carrying responses, ms
  int64_t prompt_tokens = 0;
  int64_t output_tokens = 0;  // tokens streamed to the client
};

// Cumulative counters of the server (tpserve.v1.ServerStats) at one moment; the report shows
// the difference between the end and the start of the measured phase.
struct ServerTotals {
  int64_t preemptions = 0;
  int64_t prefix_cache_hit_tokens = 0;
  int64_t prompt_tokens = 0;
  int64_t generation_tokens = 0;
  int64_t steps = 0;
  // mean_*_ms x steps, so that the means over an interval can be taken from two snapshots.
  double step_ms_sum = 0, compute_ms_sum = 0, collective_ms_sum = 0;
};

// One poll of the server's load during the measured phase.
struct LoadSample {
  int running = 0, waiting = 0;
  double kv_usage = 0;  // [0, 1]
};

struct Report {
  // What was run.
  std::string server, model, load, input_len, output_len;
  int tensor_parallel = 0;
  double shared_prefix_ratio = 0;
  // Outcome.
  double duration_s = 0;
  int64_t ok = 0, failed = 0;
  std::map<std::string, int64_t> failed_by_code;  // "UNAVAILABLE" -> count
  int64_t prompt_tokens = 0, output_tokens = 0;   // of the requests that ended OK
  double request_throughput = 0;                  // OK requests / s
  double output_throughput = 0;                   // tokens / s (OK requests)
  double total_throughput = 0;                    // (prompt + output) tokens / s (OK requests)
  Summary ttft_ms, itl_ms, e2e_ms;
  // Server side, from GetServerStats.
  int64_t stats_samples = 0;
  double kv_usage_mean = 0, kv_usage_max = 0;
  double running_mean = 0;
  int64_t running_max = 0;
  int64_t preemptions = 0, prefix_cache_hit_tokens = 0;
  int64_t steps = 0;
  double mean_step_ms = 0, mean_compute_ms = 0, mean_collective_ms = 0;
  double generated_per_step = 0;  // decode batch size, on average
  // The client's own CPU use, in % of one core over the measured phase.
  double client_cpu_percent = 0;
};

// Fills the outcome fields of `report` (what was run is the caller's) from the records of the
// measured phase, the polled load samples and the server totals before and after it.
void FillReport(const std::vector<RequestRecord>& records, const std::vector<LoadSample>& samples,
                const ServerTotals& before, const ServerTotals& after, double duration_s,
                Report* report);

// "INVALID_ARGUMENT" for 3, "CODE_42" for an unknown code.
std::string StatusCodeName(int code);

// The human-readable table (one "label  value" line per figure).
std::string FormatReport(const Report& r);
// The same figures as JSON (keys as in FormatReport, snake_case; times in ms).
nlohmann::json ReportToJson(const Report& r);

}  // namespace tpserve::bench
