// Prometheus metrics of the coordinator with vLLM's names (so vLLM dashboards work), served as
// text by the HTTP server's GET /metrics. Request-level histograms come from each finished
// request's Usage, and the running / waiting gauges from the HTTP requests in flight (HTTP only:
// the gRPC service has no hook, and EngineStats::running/waiting are only refreshed when the
// engine schedules, so they stay stale once it goes idle). Token and step counters come from
// Engine::stats() at scrape time, so they count gRPC traffic too.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "coordinator/engine/engine.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace tpserve::api::http {

class ServerMetrics {
 public:
  explicit ServerMetrics(const std::string& model_name);

  // A request finished normally (not failed): latency histograms and preemptions.
  void ObserveFinished(const engine::Usage& usage);

  // HTTP requests entering / leaving the waiting (no output yet) and running states.
  void AddRequests(int delta_waiting, int delta_running);

  // KV blocks the HTTP requests in flight hold (an estimate: ceil(tokens / block_size) each,
  // prefix sharing ignored), for vllm:gpu_cache_usage_perc.
  void AddKvTokens(int64_t delta_blocks);

  // The exposition text (format 0.0.4) with the engine's current stats folded in. `engine` may be
  // null (not serving yet); `kv_blocks` is the pool size; `workers_up` the ranks registered.
  std::string Scrape(const engine::Engine* engine, int64_t kv_blocks, int workers_up);

 private:
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Gauge* running_;
  prometheus::Gauge* waiting_;
  prometheus::Gauge* cache_usage_;
  prometheus::Histogram* ttft_;
  prometheus::Histogram* tpot_;
  prometheus::Histogram* e2e_;
  prometheus::Histogram* queue_;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generation_tokens_;
  prometheus::Counter* preemptions_;
  prometheus::Gauge* step_seconds_;
  prometheus::Counter* steps_;
  prometheus::Gauge* workers_up_;

  absl::Mutex mu_;  // scrape deltas
  int64_t seen_prompt_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t seen_generation_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t seen_steps_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t kv_blocks_held_ ABSL_GUARDED_BY(mu_) = 0;
  int http_waiting_ ABSL_GUARDED_BY(mu_) = 0;
  int http_running_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tpserve::api::http
