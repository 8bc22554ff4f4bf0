#include "coordinator/api/http/metrics.h"

#include <algorithm>

#include "coordinator/api/http/openai_convert.h"
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

// vLLM's finished_reason label values (OpenAI's names; an ended request always has one).
const char* ReasonLabel(engine::FinishReason reason) {
  const char* name = OpenAiFinishReason(reason);
  return name == nullptr ? "stop" : name;
}

}  // namespace

ServerMetrics::ServerMetrics(const std::string& model_name) : model_name_(model_name) {
  const prometheus::Labels labels = {{"model_name", model_name}};
  prometheus::Registry& r = *registry_;
  running_ = &BuildGauge()
                  .Name("vllm:num_requests_running")
                  .Help("Sequences in the running batch (a request with n completions runs n).")
                  .Register(r)
                  .Add(labels);
  waiting_ = &BuildGauge()
                  .Name("vllm:num_requests_waiting")
                  .Help("Sequences waiting to be scheduled (preempted ones included).")
                  .Register(r)
                  .Add(labels);
  cache_usage_ = &BuildGauge()
                      .Name("vllm:gpu_cache_usage_perc")
                      .Help(
                          "KV cache usage: fraction of the pool's blocks held by sequences (1 = "
                          "full; blocks kept only by the prefix cache count as free).")
                      .Register(r)
                      .Add(labels);
  ttft_ = &BuildHistogram()
               .Name("vllm:time_to_first_token_seconds")
               .Help("Time to first token in seconds.")
               .Register(r)
               .Add(labels, kTtftBuckets);
  tpot_ = &BuildHistogram()
               .Name("vllm:time_per_output_token_seconds")
               .Help("Time between two output tokens of a completion, in seconds.")
               .Register(r)
               .Add(labels, kTpotBuckets);
  itl_ = &BuildHistogram()
              .Name("vllm:inter_token_latency_seconds")
              .Help("Time between two output tokens of a completion, in seconds.")
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
  success_ = &BuildCounter()
                  .Name("vllm:request_success_total")
                  .Help("Requests that ended normally, by the finish reason of completion 0.")
                  .Register(r);
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
                      .Help("Sequences preempted (KV freed, recomputed later).")
                      .Register(r)
                      .Add(labels);
  prefix_queries_ = &BuildCounter()
                         .Name("vllm:prefix_cache_queries_total")
                         .Help("Prompt tokens looked up in the prefix cache at admission.")
                         .Register(r)
                         .Add(labels);
  prefix_hits_ = &BuildCounter()
                      .Name("vllm:prefix_cache_hits_total")
                      .Help("Of those, tokens served from cached KV blocks.")
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

void ServerMetrics::OnTokenGaps(std::span<const absl::Duration> gaps) {
  for (absl::Duration d : gaps) {
    const double seconds = absl::ToDoubleSeconds(d);
    tpot_->Observe(seconds);
    itl_->Observe(seconds);
  }
}

void ServerMetrics::OnRequestEnd(const engine::RequestRecord& r) {
  if (r.failed) return;
  if (r.time_to_first_token != absl::InfiniteDuration()) {
    ttft_->Observe(absl::ToDoubleSeconds(r.time_to_first_token));
  }
  e2e_->Observe(absl::ToDoubleSeconds(r.e2e));
  queue_->Observe(absl::ToDoubleSeconds(r.queue));
  success_->Add({{"model_name", model_name_}, {"finished_reason", ReasonLabel(r.finish_reason)}})
      .Increment();
}

std::string ServerMetrics::Scrape(const engine::Engine* engine, int64_t kv_blocks, int workers_up) {
  // Adds what the engine counted since the last scrape.
  auto advance = [](prometheus::Counter* c, int64_t now, int64_t& seen) {
    c->Increment(double(std::max<int64_t>(0, now - seen)));
    seen = std::max(seen, now);
  };
  {
    absl::MutexLock lock(&mu_);
    double usage = 0;
    if (engine != nullptr) {
      const engine::EngineStats s = engine->stats();
      advance(prompt_tokens_, s.prompt_tokens, seen_prompt_tokens_);
      advance(generation_tokens_, s.generated_tokens, seen_generation_tokens_);
      advance(steps_, s.steps, seen_steps_);
      advance(preemptions_, s.preemptions, seen_preemptions_);
      advance(prefix_queries_, s.blocks.prefix_query_tokens, seen_prefix_queries_);
      advance(prefix_hits_, s.prefix_hit_tokens, seen_prefix_hits_);
      step_seconds_->Set(s.last_step.total_us / 1e6);
      running_->Set(s.running);
      waiting_->Set(s.waiting);
      // Before the first step the pool figures are not known yet: the pool is all free.
      const int64_t total = s.blocks.total > 0 ? s.blocks.total : kv_blocks;
      usage = total > 0 ? std::min(1.0, double(s.blocks.used) / double(total)) : 0.0;
    }
    cache_usage_->Set(usage);
    workers_up_->Set(workers_up);
  }
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace tpserve::api::http
