// The engine loop (DESIGN.md §2): one thread that owns the Scheduler and drives
//
//   take new requests and aborts  ->  Scheduler::Schedule  ->  one StepPlan
//   ->  StepExecutor::Execute (all ranks)  ->  Scheduler::Update(sampled tokens)
//   ->  per completion: text delta (IncrementalDetokenizer), stop strings, finish, usage -> sink
//
// A request with n > 1 completions runs as n sequences (ids seq .. seq + n - 1): completion 0
// prefills the prompt, and when that prefill samples its first token the others are forked from
// it (Scheduler::Fork, kOwnStep): they share the prompt's full blocks and each recomputes only the
// prompt's tail before sampling its own first token with its own seed.
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
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/engine/engine_observer.h"
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
  // After a failed step (a worker lost, DESIGN §7): how long the requests in flight wait for the
  // worker group to re-form; they then continue where their streams stopped, by recomputing
  // prompt + output so far (no token lost or repeated). Zero: they fail at once (UNAVAILABLE).
  absl::Duration resume_window = absl::ZeroDuration();
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
  // Failed steps after which the requests in flight were kept to resume (resume_window > 0), and
  // resumptions that completed a step on the re-formed group.
  int64_t recoveries = 0;
  int64_t resumed = 0;
  StepTiming last_step;
  // For health (a stuck loop): whether requests are queued or running, and the last time a step
  // completed (failed steps included) or the loop was idle. busy && now - last_progress growing
  // past the step deadline means no step is completing.
  bool busy = false;
  absl::Time last_progress = absl::InfinitePast();
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
  // `executor`, `tokenizer` (may be null: token ids only, no text) and `observer` (may be null)
  // must outlive the engine.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineConfig& config,
                                                        StepExecutor& executor,
                                                        const Tokenizer* tokenizer,
                                                        EngineObserver* observer = nullptr);
  ~Engine();  // Stop()

  // Queues a request; its outputs go to `sink` (the last one has finish_reason or an error).
  // Returns the request id (`request_id`, or one the engine made up when empty). Errors:
  //   INVALID_ARGUMENT    bad option (the message names the field) or prompt past the context
  //   RESOURCE_EXHAUSTED  the queue is full, or the prompt needs more KV blocks than exist
  //   ALREADY_EXISTS      a running request has this id
  //   UNAVAILABLE         the worker group is not ready (the reason says why)
  absl::StatusOr<std::string> Submit(std::string request_id, RequestOptions options,
                                     RequestSink sink);
  // Every completion of the request ends with FinishReason::kAborted at the next step boundary.
  // NOT_FOUND for an id that is not running.
  absl::Status Abort(const std::string& request_id);

  // Ends every request (UNAVAILABLE "server shutting down") and joins the loop thread.
  void Stop();

  EngineStats stats() const;
  const EngineConfig& config() const { return config_; }
  // Longest sequence (prompt + output) that can run.
  int max_seq_len() const { return max_seq_len_; }

 private:
  struct Completion;
  struct Request;

  Engine(const EngineConfig& config, StepExecutor& executor, const Tokenizer* tokenizer,
         EngineObserver* observer, std::unique_ptr<scheduler::Scheduler> scheduler);

  void Loop();
  // Moves new requests and aborts into the scheduler (loop thread).
  void TakeInbox();
  // One schedule -> execute -> update round; false when there was nothing to run.
  bool RunStep();
  // running / waiting / queued as the scheduler holds them now (metrics, load shedding).
  void RefreshQueueStats();
  // Forks the other completions of requests whose first completion samples its first token in
  // the step just scheduled.
  void ForkCompletions(const scheduler::SchedulerOutput& out);
  StepPlan BuildPlan(const scheduler::SchedulerOutput& out);
  // The request and completion a sequence belongs to; nulls when it already ended.
  std::pair<Request*, Completion*> Owner(scheduler::SeqId seq);
  void DeliverTokens(const StepOutput& result, const scheduler::UpdateResult& update);
  void DeliverToken(const SampledToken& t, scheduler::FinishReason reason);
  // Ends one completion (and, before the fork, the completions that never started).
  void Finish(Request& r, Completion& c, FinishReason reason, RequestOutput out);
  void EndCompletion(Request& r, Completion& c, FinishReason reason, absl::Time now,
                     RequestOutput& out);
  // Hands `out` to the sink; when no completion is left, releases the request first.
  void Emit(Request& r, RequestOutput out);
  void Fail(Request& r, absl::Status error);
  void FailAll(const absl::Status& error);
  // Forgets the request (id, sequences) and reports it; returns it to keep it alive for the sink.
  std::unique_ptr<Request> Release(Request& r, bool failed);
  bool HasInput() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return stop_ || !inbox_.empty() || !aborts_.empty();
  }

  const EngineConfig config_;
  StepExecutor& executor_;
  const Tokenizer* tokenizer_;
  EngineObserver* const observer_;
  std::unique_ptr<scheduler::Scheduler> scheduler_;  // loop thread only
  const int max_seq_len_;

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Request>> inbox_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> aborts_ ABSL_GUARDED_BY(mu_);
  // Ids of requests submitted and not finished (inbox or scheduler).
  absl::flat_hash_map<std::string, scheduler::SeqId> live_ids_ ABSL_GUARDED_BY(mu_);
  // Sequences in the inbox + the scheduler's waiting queue, n > 1 requests counting n.
  int queued_ ABSL_GUARDED_BY(mu_) = 0;
  int QueuedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  EngineStats stats_ ABSL_GUARDED_BY(mu_);
  int64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;

  // Loop thread only. Requests by their first sequence id, and every live sequence's request.
  absl::flat_hash_map<scheduler::SeqId, std::unique_ptr<Request>> requests_;
  absl::flat_hash_map<scheduler::SeqId, Request*> owners_;
  uint64_t next_step_id_ = 1;
  // Set by the first failed step of a recovery (resume_window > 0), cleared by the next step
  // that completes; the window counts from here.
  absl::Time recovering_since_ = absl::InfinitePast();
  absl::Status recovery_cause_;
  std::vector<absl::Duration> gaps_;  // inter-token gaps of the step being delivered (reused)

  std::thread thread_;
};

}  // namespace tpserve::engine
