// Iteration-level (continuous) batching policy. Pure data in, pure data out: no gRPC, no threads,
// no clock, not thread-safe (the engine loop's thread makes every call); the loop drives it as
//
//   Add / Abort / Fork (any time, from the engine thread)
//   loop: out = Schedule();  run out on the workers;  Update({sampled tokens})
//
// One Schedule() is a chain of small steps (each one a private member below):
//   1. ReapAborted     aborted / stop-string sequences leave, their blocks are freed
//   2. ScheduleRunning decodes of running sequences, oldest first, one token each
//   3. ScheduleRunning chunks of running sequences whose prompt is not fully prefilled yet
//   4. AdmitWaiting    FCFS admission from the waiting queue (preempted ones are at its front),
//                      prefix-cache hits counted as already computed; skipped in a step that had
//                      to preempt
// all under a token budget (max_num_batched_tokens) and a sequence limit (max_num_seqs). When a
// running sequence needs a block and none is free, the newest running sequence is preempted by
// recompute: its blocks are freed and it goes back to the front of the waiting queue, to re-prefill
// prompt + the output tokens it already has (its cached blocks usually come back as prefix hits).
#pragma once

#include <deque>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/scheduler/block_manager.h"
#include "coordinator/scheduler/scheduler_config.h"
#include "coordinator/scheduler/scheduler_output.h"
#include "coordinator/scheduler/sequence.h"

namespace tpserve::scheduler {

// Queue contents in order (for tests, logs and metrics).
struct QueueSnapshot {
  std::vector<SeqId> running;    // admission order, newest last
  std::vector<SeqId> waiting;    // never ran (or lost their KV in RecoverFromFailedStep)
  std::vector<SeqId> preempted;  // waiting to re-prefill; they go before `waiting`
};

struct SchedulerCounters {
  int64_t steps = 0;
  int64_t preemptions = 0;
  int64_t finished = 0;                 // by stop conditions
  int64_t aborted = 0;                  // by Abort (stop strings included)
  int64_t prompt_tokens_scheduled = 0;  // tokens fed by prefills (recompute included)
  int64_t decode_tokens_scheduled = 0;
};

class Scheduler {
 public:
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(const SchedulerConfig& config);

  // Queues a new sequence. INVALID_ARGUMENT names the bad field; RESOURCE_EXHAUSTED when
  // the queue would pass max_waiting sequences, counting the forks of n > 1 ones (shed load);
  // ALREADY_EXISTS for a live id.
  absl::Status Add(SequenceSpec spec);

  // n > 1 completions: `child` becomes a copy of `parent` that shares the parent's full blocks
  // (reference counted) and recomputes only the partial last block. Call it between the Schedule
  // that samples `parent` (typically the end of its prefill) and the matching Update. A parent
  // added with fan_out = n holds n places in the running set from admission, and each child
  // takes one of them, so forking never passes max_num_seqs (forking more than fan_out - 1
  // times is allowed, and then does). How the child gets its first token:
  //   kFromParentStep  the caller samples it from the parent's logits and gives it to the child
  //                    in that Update (needs an executor that samples one position twice).
  //   kOwnStep         the child is not sampled in the pending step: it shares one block fewer
  //                    when the prompt ends on a block boundary, so at least one prompt token is
  //                    left to recompute, and its own next step feeds that tail and samples its
  //                    first token (with its own seed, step counter 0). The engine uses this: a
  //                    step plan samples each sequence once.
  enum class ForkFirstToken { kFromParentStep, kOwnStep };
  absl::Status Fork(SeqId parent, SeqId child,
                    ForkFirstToken first_token = ForkFirstToken::kFromParentStep);

  // Client went away, called Abort, or the engine matched a stop string (reason kStopString).
  // The sequence leaves at the next Schedule, which frees its blocks and lists it as finished.
  // A token sampled for it in the pending step is dropped.
  absl::Status Abort(SeqId id, FinishReason reason = FinishReason::kAborted);

  // Plans the next step. FAILED_PRECONDITION if the previous step's Update is missing.
  absl::StatusOr<SchedulerOutput> Schedule();

  // Delivers the tokens sampled in the step planned by the last Schedule: exactly one for each
  // sequence scheduled with sample == true (and each child forked from one). Registers the blocks
  // filled by that step in the prefix cache, appends the tokens, and finishes sequences whose stop
  // conditions hold (their blocks are freed now). INVALID_ARGUMENT, changing nothing, when tokens
  // are missing, duplicated, or given to a sequence that was not sampled.
  absl::StatusOr<UpdateResult> Update(const StepResult& result);

  // After a failed step (the workers' KV is gone, DESIGN §7): every running sequence is put back
  // at the front of the queue to be recomputed from its prompt + outputs, the prefix cache is
  // dropped, and a pending Update is no longer expected.
  void RecoverFromFailedStep();

  const Sequence* Find(SeqId id) const;
  QueueSnapshot Queues() const;
  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  // Sequences the waiting queue / running set stand for once every pending fork is made
  // (what max_waiting / max_num_seqs bound).
  int waiting_demand() const;
  int running_demand() const;
  bool HasUnfinished() const { return !seqs_.empty(); }
  const BlockManager& block_manager() const { return blocks_; }
  const SchedulerConfig& config() const { return config_; }
  const SchedulerCounters& counters() const { return counters_; }
  // Longest sequence (prompt + output) that can run: the context length, or the whole pool if
  // that is smaller.
  int max_seq_len() const { return max_seq_len_; }

  // Scheduler and block-manager invariants (tests): every running sequence holds blocks for its
  // computed tokens, waiting ones hold none, blocks only written by one owner, see BlockManager.
  absl::Status CheckInvariants() const;

 private:
  explicit Scheduler(const SchedulerConfig& config);

  struct StepState {
    int budget = 0;  // tokens left to schedule this step
    SchedulerOutput out;
  };

  void ReapAborted(StepState& step);
  void ScheduleRunning(bool decodes, StepState& step);
  void AdmitWaiting(StepState& step);
  void Finalize(StepState& step);

  // Tokens of `seq` to feed now, given `budget` tokens left (0: not this step).
  int ChunkSize(int uncomputed, int budget) const;
  // Grows the table of running_[index] for `num_tokens` tokens, preempting the newest running
  // sequences as needed. False when the sequence preempted itself.
  bool GrowOrPreempt(size_t index, int num_tokens, StepState& step);
  void PreemptNewest(StepState& step);
  void Retire(SeqId id, FinishReason reason);

  SchedulerConfig config_;
  int max_seq_len_;
  BlockManager blocks_;
  absl::flat_hash_map<SeqId, std::unique_ptr<Sequence>> seqs_;  // every live sequence
  std::vector<SeqId> running_;                                  // admission order
  std::deque<SeqId> waiting_;                                   // preempted ones at the front
  std::vector<SeqId> last_scheduled_;                           // to commit in Update
  std::vector<FinishedSequence> pending_finished_;              // reported by the next Schedule
  int num_awaiting_ = 0;  // sequences owed a token by the pending Update
  SchedulerCounters counters_;
};

}  // namespace tpserve::scheduler
