// Prometheus metrics of the coordinator with vLLM's names (so vLLM dashboards work), served as
// text by the HTTP server's GET /metrics. Every request counts, whatever API it came through: the
// request histograms (time to first token, inter-token latency, end-to-end, queue time) are fed
// by the engine's EngineObserver reports, and the gauges and counters (running / waiting, KV
// cache usage, tokens, preemptions, prefix-cache hits, steps) come from Engine::stats() at scrape
// time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/engine/engine.h"
#include "coordinator/engine/engine_observer.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace tpserve::api::http {

class ServerMetrics final : public engine::EngineObserver {
 public:
  explicit ServerMetrics(const std::string& model_name);

  // EngineObserver (engine thread; histogram updates only).
  void OnTokenGaps(std::span<const absl::Duration> gaps) override;
  void OnRequestEnd(const engine::RequestRecord& record) override;

  // The exposition text (format 0.0.4) with the engine's current stats folded in. `engine` may be
  // null (not serving yet); `kv_blocks` is the pool size; `workers_up` the ranks registered.
  std::string Scrape(const engine::Engine* engine, int64_t kv_blocks, int workers_up);

 private:
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Gauge* running_;
  prometheus::Gauge* waiting_;
  prometheus::Gauge* cache_usage_;
  prometheus::Histogram* ttft_;
  prometheus::Histogram* tpot_;  // per token, as vLLM V1 observes it
  prometheus::Histogram* itl_;
  prometheus::Histogram* e2e_;
  prometheus::Histogram* queue_;
  prometheus::Family<prometheus::Counter>* success_;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generation_tokens_;
  prometheus::Counter* preemptions_;
  prometheus::Counter* prefix_queries_;
  prometheus::Counter* prefix_hits_;
  prometheus::Gauge* step_seconds_;
  prometheus::Counter* steps_;
  prometheus::Gauge* workers_up_;
  const std::string model_name_;

  absl::Mutex mu_;  // scrape deltas: counters only move forward
  int64_t seen_prompt_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t seen_generation_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t seen_steps_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t seen_preemptions_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t seen_prefix_queries_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t seen_prefix_hits_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tpserve::api::http
