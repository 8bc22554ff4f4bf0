// The engine loop (DESIGN.md §2): one thread that owns the Scheduler and drives
//
//   take new requests and aborts  ->  Scheduler::Schedule  ->  one StepPlan
//   ->  StepExecutor::Execute (all ranks)  ->  Scheduler::Update(sampled tokens)
//   ->  per request: text delta (IncrementalDetokenizer), stop strings, finish, usage -> sink
//
// Other threads (the API's reactors) only call Submit / Abort, which queue work and wake the loop;
// sinks are called on the loop thread and must not block. A failed step (a rank died or missed the
// step deadline) ends every request in flight with UNAVAILABLE; the executor's owner re-forms the
// group and the engine serves again once the executor is ready.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/engine/request.h"
#include "coordinator/engine/step_executor.h"
#include "coordinator/scheduler/scheduler.h"

namespace tpserve {
class Tokenizer;
}

namespace tpserve::engine {

struct EngineConfig {
  scheduler::SchedulerConfig scheduler;
  int vocab_size = 0;  // token ids must be in [0, vocab_size)
  // Longest wait of the idle loop before it looks at its queues again.
  absl::Duration idle_wait = absl::Milliseconds(100);
};

// Totals since start (for metrics, health and benchmarks).
struct EngineStats {
  int64_t steps = 0;
  int64_t failed_steps = 0;
  int64_t generated_tokens = 0;
  int64_t prompt_tokens = 0;
  int64_t requests_finished = 0;
  int64_t requests_failed = 0;
  int running = 0;
  int waiting = 0;
  // KV pool after the last step (used = held by sequences; cached-but-free blocks count as free)
  // and scheduler totals.
  scheduler::BlockUsage blocks;
  int64_t preemptions = 0;
  int64_t prefix_hit_tokens = 0;
  StepTiming last_step;
  // Sums over steps, in microseconds: coordinator-side wall time, and the slowest rank's own
  // time split into compute and collectives. wall - worker = control plane (plan fan-out,
  // result, gRPC), the figure DESIGN §2 wants small.
  double step_us_sum = 0;
  double worker_us_sum = 0;
  double compute_us_sum = 0;
  double collective_us_sum = 0;
};

class Engine {
 public:
  // `executor` and `tokenizer` (may be null: token ids only, no text) must outlive the engine.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineConfig& config,
                                                        StepExecutor& executor,
                                                        const Tokenizer* tokenizer);
  ~Engine();  // Stop()

  // Queues a request; its outputs go to `sink` (the last one has finish_reason or an error).
  // Returns the request id (`request_id`, or one the engine made up when empty). Errors:
  //   INVALID_ARGUMENT    bad option (the message names the field) or prompt past the context
  //   RESOURCE_EXHAUSTED  the queue is full, or the prompt needs more KV blocks than exist
  //   ALREADY_EXISTS      a running request has this id
  //   UNAVAILABLE         the worker group is not ready (the reason says why)
  absl::StatusOr<std::string> Submit(std::string request_id, RequestOptions options,
                                     RequestSink sink);
  // The request ends with FinishReason::kAborted at the next step boundary. NOT_FOUND for an id
  // that is not running.
  absl::Status Abort(const std::string& request_id);

  // Ends every request (UNAVAILABLE "server shutting down") and joins the loop thread.
  void Stop();

  EngineStats stats() const;
  const EngineConfig& config() const { return config_; }
  // Longest sequence (prompt + output) that can run.
  int max_seq_len() const { return max_seq_len_; }

 private:
  struct Request;

  Engine(const EngineConfig& config, StepExecutor& executor, const Tokenizer* tokenizer,
         std::unique_ptr<scheduler::Scheduler> scheduler);

  void Loop();
  // Moves new requests and aborts into the scheduler (loop thread).
  void TakeInbox();
  // One schedule -> execute -> update round; false when there was nothing to run.
  bool RunStep();
  // running / waiting / queued as the scheduler holds them now (metrics, load shedding).
  void RefreshQueueStats();
  StepPlan BuildPlan(const scheduler::SchedulerOutput& out);
  void DeliverTokens(const StepOutput& result, const scheduler::UpdateResult& update);
  void Finish(Request& r, FinishReason reason, RequestOutput out);
  void Fail(Request& r, absl::Status error);
  void FailAll(const absl::Status& error);
  void Deliver(Request& r, RequestOutput out, int64_t EngineStats::*counter);
  bool HasInput() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return stop_ || !inbox_.empty() || !aborts_.empty();
  }

  const EngineConfig config_;
  StepExecutor& executor_;
  const Tokenizer* tokenizer_;
  std::unique_ptr<scheduler::Scheduler> scheduler_;  // loop thread only
  const int max_seq_len_;

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Request>> inbox_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> aborts_ ABSL_GUARDED_BY(mu_);
  // Ids of requests submitted and not finished (inbox or scheduler).
  absl::flat_hash_map<std::string, scheduler::SeqId> live_ids_ ABSL_GUARDED_BY(mu_);
  int queued_ ABSL_GUARDED_BY(mu_) = 0;  // inbox + scheduler waiting queue
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  EngineStats stats_ ABSL_GUARDED_BY(mu_);
  int64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;

  // Loop thread only.
  absl::flat_hash_map<scheduler::SeqId, std::unique_ptr<Request>> requests_;
  uint64_t next_step_id_ = 1;

  std::thread thread_;
};

}  // namespace tpserve::engine
