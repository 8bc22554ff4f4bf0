#include "coordinator/api/http/metrics.h"

#include <algorithm>

#include "prometheus/text_serializer.h"

namespace tpserve::api::http {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

// vLLM's bucket boundaries (vllm/engine/metrics.py), seconds.
const Histogram::BucketBoundaries kTtftBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
                                                  0.1,   0.25,  0.5,  0.75, 1.0,  2.5,  5.0,
                                                  7.5,   10.0,  20.0, 40.0, 80.0, 160.0};
const Histogram::BucketBoundaries kTpotBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                                  0.3,  0.4,   0.5,  0.75,  1.0, 2.5,  5.0,
                                                  7.5,  10.0,  20.0, 40.0,  80.0};
const Histogram::BucketBoundaries kLatencyBuckets = {0.3,  0.5,   0.8,   1.0,   1.5,  2.0,  2.5,
                                                     5.0,  10.0,  15.0,  20.0,  30.0, 40.0, 50.0,
                                                     60.0, 120.0, 240.0, 480.0, 960.0};

}  // namespace

ServerMetrics::ServerMetrics(const std::string& model_name) {
  const prometheus::Labels labels = {{"model_name", model_name}};
  prometheus::Registry& r = *registry_;
  running_ = &BuildGauge()
                  .Name("vllm:num_requests_running")
                  .Help("Number of requests in the running batch.")
                  .Register(r)
                  .Add(labels);
  waiting_ = &BuildGauge()
                  .Name("vllm:num_requests_waiting")
                  .Help("Number of requests waiting to be scheduled.")
                  .Register(r)
                  .Add(labels);
  cache_usage_ = &BuildGauge()
                      .Name("vllm:gpu_cache_usage_perc")
                      .Help(
                          "KV cache usage (fraction of blocks, 1 = full; estimated from the "
                          "HTTP requests in flight).")
                      .Register(r)
                      .Add(labels);
  ttft_ = &BuildHistogram()
               .Name("vllm:time_to_first_token_seconds")
               .Help("Time to first token in seconds.")
               .Register(r)
               .Add(labels, kTtftBuckets);
  tpot_ = &BuildHistogram()
               .Name("vllm:time_per_output_token_seconds")
               .Help("Mean time per output token after the first, per request, in seconds.")
               .Register(r)
               .Add(labels, kTpotBuckets);
  e2e_ = &BuildHistogram()
              .Name("vllm:e2e_request_latency_seconds")
              .Help("End-to-end request latency in seconds.")
              .Register(r)
              .Add(labels, kLatencyBuckets);
  queue_ = &BuildHistogram()
                .Name("vllm:request_queue_time_seconds")
                .Help("Time a request waited before its first step, in seconds.")
                .Register(r)
                .Add(labels, kLatencyBuckets);
  // prometheus-cpp appends no suffix: the _total names are spelled out.
  prompt_tokens_ = &BuildCounter()
                        .Name("vllm:prompt_tokens_total")
                        .Help("Prefill tokens processed.")
                        .Register(r)
                        .Add(labels);
  generation_tokens_ = &BuildCounter()
                            .Name("vllm:generation_tokens_total")
                            .Help("Generated tokens.")
                            .Register(r)
                            .Add(labels);
  preemptions_ = &BuildCounter()
                      .Name("vllm:num_preemptions_total")
                      .Help("Recomputations (preemptions) of finished HTTP requests.")
                      .Register(r)
                      .Add(labels);
  step_seconds_ = &BuildGauge()
                       .Name("tpserve_step_seconds")
                       .Help("Coordinator-side wall time of the last engine step, in seconds.")
                       .Register(r)
                       .Add(labels);
  steps_ =
      &BuildCounter().Name("tpserve_steps_total").Help("Engine steps run.").Register(r).Add(labels);
  workers_up_ = &BuildGauge()
                     .Name("tpserve_workers_up")
                     .Help("Worker ranks registered with the coordinator.")
                     .Register(r)
                     .Add(labels);
}

void ServerMetrics::ObserveFinished(const engine::Usage& u) {
  ttft_->Observe(u.time_to_first_token_ms / 1e3);
  e2e_->Observe(u.total_time_ms / 1e3);
  queue_->Observe(u.queue_time_ms / 1e3);
  if (u.completion_tokens > 1) {
    tpot_->Observe((u.total_time_ms - u.time_to_first_token_ms) / 1e3 / (u.completion_tokens - 1));
  }
  if (u.recomputations > 0) preemptions_->Increment(u.recomputations);
}

void ServerMetrics::AddRequests(int delta_waiting, int delta_running) {
  absl::MutexLock lock(&mu_);
  http_waiting_ += delta_waiting;
  http_running_ += delta_running;
}

void ServerMetrics::AddKvTokens(int64_t delta_blocks) {
  absl::MutexLock lock(&mu_);
  kv_blocks_held_ += delta_blocks;
}

std::string ServerMetrics::Scrape(const engine::Engine* engine, int64_t kv_blocks, int workers_up) {
  {
    absl::MutexLock lock(&mu_);
    if (engine != nullptr) {
      const engine::EngineStats s = engine->stats();
      // Counters only move forward: add what the engine counted since the last scrape.
      prompt_tokens_->Increment(
          double(std::max<int64_t>(0, s.prompt_tokens - seen_prompt_tokens_)));
      generation_tokens_->Increment(
          double(std::max<int64_t>(0, s.generated_tokens - seen_generation_tokens_)));
      steps_->Increment(double(std::max<int64_t>(0, s.steps - seen_steps_)));
      seen_prompt_tokens_ = std::max(seen_prompt_tokens_, s.prompt_tokens);
      seen_generation_tokens_ = std::max(seen_generation_tokens_, s.generated_tokens);
      seen_steps_ = std::max(seen_steps_, s.steps);
      step_seconds_->Set(s.last_step.total_us / 1e6);
    }
    running_->Set(http_running_);
    waiting_->Set(http_waiting_);
    cache_usage_->Set(kv_blocks > 0 ? std::min(1.0, double(kv_blocks_held_) / kv_blocks) : 0.0);
    workers_up_->Set(workers_up);
  }
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace tpserve::api::http
