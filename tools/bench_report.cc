#include "tools/bench_report.h"

#include <algorithm>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tpserve::bench {
namespace {

// Mean of a per-step quantity over the steps between two snapshots.
double IntervalMean(double sum_before, double sum_after, int64_t steps) {
  return steps > 0 ? (sum_after - sum_before) / static_cast<double>(steps) : 0;
}

std::string Line(const std::string& label, const std::string& value) {
  return absl::StrFormat("%-34s %s\n", label, value);
}

std::string Latency(const Summary& s) {
  if (s.count == 0) return "-";
  return absl::StrFormat("p50 %.1f  p90 %.1f  p99 %.1f  mean %.1f  max %.1f", s.p50, s.p90, s.p99,
                         s.mean, s.max);
}

nlohmann::json SummaryJson(const Summary& s) {
  return {{"count", s.count}, {"mean", s.mean}, {"p50", s.p50},
          {"p90", s.p90},     {"p99", s.p99},   {"max", s.max}};
}

}  // namespace

std::string StatusCodeName(int code) {
  if (code < 0 || code > 16) return absl::StrCat("CODE_", code);
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

void FillReport(const std::vector<RequestRecord>& records, const std::vector<LoadSample>& samples,
                const ServerTotals& before, const ServerTotals& after, double duration_s,
                Report* r) {
  r->duration_s = duration_s;
  r->ok = r->failed = r->prompt_tokens = r->output_tokens = 0;
  r->failed_by_code.clear();
  std::vector<double> ttft, itl, e2e;
  for (const RequestRecord& rec : records) {
    if (rec.code != 0) {
      ++r->failed;
      ++r->failed_by_code[StatusCodeName(rec.code)];
      continue;
    }
    ++r->ok;
    r->prompt_tokens += rec.prompt_tokens;
    r->output_tokens += rec.output_tokens;
    if (rec.ttft_ms >= 0) ttft.push_back(rec.ttft_ms);
    e2e.push_back(rec.e2e_ms);
    itl.insert(itl.end(), rec.itl.begin(), rec.itl.end());
  }
  const double secs = duration_s > 0 ? duration_s : 1;
  r->request_throughput = r->ok / secs;
  r->output_throughput = r->output_tokens / secs;
  r->total_throughput = (r->prompt_tokens + r->output_tokens) / secs;
  r->ttft_ms = Summarize(ttft);
  r->itl_ms = Summarize(itl);
  r->e2e_ms = Summarize(e2e);

  r->stats_samples = static_cast<int64_t>(samples.size());
  r->kv_usage_mean = r->kv_usage_max = r->running_mean = 0;
  r->running_max = 0;
  for (const LoadSample& s : samples) {
    r->kv_usage_mean += s.kv_usage;
    r->kv_usage_max = std::max(r->kv_usage_max, s.kv_usage);
    r->running_mean += s.running;
    r->running_max = std::max<int64_t>(r->running_max, s.running);
  }
  if (!samples.empty()) {
    r->kv_usage_mean /= static_cast<double>(samples.size());
    r->running_mean /= static_cast<double>(samples.size());
  }

  r->preemptions = after.preemptions - before.preemptions;
  r->prefix_cache_hit_tokens = after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens;
  r->steps = after.steps - before.steps;
  r->mean_step_ms = IntervalMean(before.step_ms_sum, after.step_ms_sum, r->steps);
  r->mean_compute_ms = IntervalMean(before.compute_ms_sum, after.compute_ms_sum, r->steps);
  r->mean_collective_ms = IntervalMean(before.collective_ms_sum, after.collective_ms_sum, r->steps);
  r->generated_per_step =
      r->steps > 0
          ? static_cast<double>(after.generation_tokens - before.generation_tokens) / r->steps
          : 0;
}

std::string FormatReport(const Report& r) {
  std::string out = "============================ tpserve bench ============================\n";
  out += Line("server", absl::StrFormat("%s (%s, TP=%d)", r.server, r.model, r.tensor_parallel));
  out += Line("load", r.load);
  out += Line("input / output tokens", absl::StrCat(r.input_len, " / ", r.output_len));
  if (r.shared_prefix_ratio > 0) {
    out += Line("shared prefix",
                absl::StrFormat("%.0f%% of each prompt", 100 * r.shared_prefix_ratio));
  }
  std::string failed = absl::StrCat(r.failed);
  for (const auto& [code, n] : r.failed_by_code) absl::StrAppend(&failed, "  ", code, "=", n);
  out += Line("requests ok / failed", absl::StrCat(r.ok, " / ", failed));
  out += Line("duration (s)", absl::StrFormat("%.2f", r.duration_s));
  out += Line("request throughput (req/s)", absl::StrFormat("%.2f", r.request_throughput));
  out += Line("output throughput (tok/s)", absl::StrFormat("%.1f", r.output_throughput));
  out += Line("total throughput (tok/s)",
              absl::StrFormat("%.1f  (%d prompt + %d output tokens)", r.total_throughput,
                              r.prompt_tokens, r.output_tokens));
  out += Line("time to first token (ms)", Latency(r.ttft_ms));
  out += Line("inter-token latency (ms)", Latency(r.itl_ms));
  out += Line("end-to-end latency (ms)", Latency(r.e2e_ms));
  out += "---------------------------- server (GetServerStats) ------------------\n";
  out += Line("KV cache use mean / max",
              absl::StrFormat("%.1f%% / %.1f%%  (%d polls)", 100 * r.kv_usage_mean,
                              100 * r.kv_usage_max, r.stats_samples));
  out += Line("running sequences mean / max",
              absl::StrFormat("%.1f / %d", r.running_mean, r.running_max));
  out += Line("preemptions", absl::StrCat(r.preemptions));
  out += Line("prefix-cache hit tokens", absl::StrCat(r.prefix_cache_hit_tokens));
  out += Line("steps", absl::StrFormat("%d  (%.2f generated tokens per step)", r.steps,
                                       r.generated_per_step));
  out += Line("mean step time (ms)",
              absl::StrFormat("%.2f  = compute %.2f + collectives %.2f + control %.2f",
                              r.mean_step_ms, r.mean_compute_ms, r.mean_collective_ms,
                              r.mean_step_ms - r.mean_compute_ms - r.mean_collective_ms));
  out += Line("client CPU (% of one core)", absl::StrFormat("%.1f", r.client_cpu_percent));
  out += "=======================================================================\n";
  return out;
}

nlohmann::json ReportToJson(const Report& r) {
  nlohmann::json failed = nlohmann::json::object();
  for (const auto& [code, n] : r.failed_by_code) failed[code] = n;
  return {
      {"server", r.server},
      {"model", r.model},
      {"tensor_parallel", r.tensor_parallel},
      {"load", r.load},
      {"input_len", r.input_len},
      {"output_len", r.output_len},
      {"shared_prefix_ratio", r.shared_prefix_ratio},
      {"requests_ok", r.ok},
      {"requests_failed", r.failed},
      {"failed_by_code", failed},
      {"duration_s", r.duration_s},
      {"prompt_tokens", r.prompt_tokens},
      {"output_tokens", r.output_tokens},
      {"request_throughput", r.request_throughput},
      {"output_throughput", r.output_throughput},
      {"total_throughput", r.total_throughput},
      {"ttft_ms", SummaryJson(r.ttft_ms)},
      {"itl_ms", SummaryJson(r.itl_ms)},
      {"e2e_ms", SummaryJson(r.e2e_ms)},
      {"stats_samples", r.stats_samples},
      {"kv_usage_mean", r.kv_usage_mean},
      {"kv_usage_max", r.kv_usage_max},
      {"running_mean", r.running_mean},
      {"running_max", r.running_max},
      {"preemptions", r.preemptions},
      {"prefix_cache_hit_tokens", r.prefix_cache_hit_tokens},
      {"steps", r.steps},
      {"generated_per_step", r.generated_per_step},
      {"mean_step_ms", r.mean_step_ms},
      {"mean_compute_ms", r.mean_compute_ms},
      {"mean_collective_ms", r.mean_collective_ms},
      {"client_cpu_percent", r.client_cpu_percent},
  };
}

}  // namespace tpserve::bench
