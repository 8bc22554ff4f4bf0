// The plain-data contract between the scheduler and the engine loop (one step plan per
// iteration, DESIGN §2). Prefill, chunked prefill and decode are all "feed these tokens of this
// sequence starting at this position"; the workers write their KV through the block table and
// attend over positions [0, start_position + tokens.size()).
#pragma once

#include <vector>

#include "coordinator/scheduler/block_manager.h"
#include "coordinator/scheduler/sequence.h"

namespace tpserve::scheduler {

struct ScheduledSequence {
  SeqId seq_id = 0;
  // Tokens fed this step: a whole prompt, a prefill chunk, or one decode token. After a
  // preemption the re-prefill covers prompt + output tokens so far.
  std::vector<TokenId> tokens;
  // Position of tokens[0]; tokens[i] is at position start_position + i and its KV goes to
  // block_table[p / block_size] at offset p % block_size.
  int start_position = 0;
  // Every block of the sequence, in position order; covers start_position + tokens.size().
  std::vector<BlockId> block_table;
  // True when this step reaches the end of the sequence's tokens: sample from the logits of the
  // last fed position and return one token for it in StepResult. False for a non-final chunk.
  bool sample = false;
  // Output tokens generated so far: the per-request sampling step counter (seeded sampling stays
  // reproducible across batching and preemption).
  int num_output_tokens = 0;
};

struct FinishedSequence {
  SeqId seq_id = 0;
  FinishReason reason = FinishReason::kNone;
  bool operator==(const FinishedSequence&) const = default;
};

struct SchedulerOutput {
  std::vector<ScheduledSequence> scheduled;  // running order: decodes first, then prefills
  // Preempted in this step (KV freed; they wait at the front of the queue to re-prefill).
  std::vector<SeqId> preempted;
  // Sequences that left since the previous output: finished in Update, aborted or stopped by
  // Abort. Their blocks are already freed.
  std::vector<FinishedSequence> finished;
  int num_batched_tokens = 0;  // sum of tokens.size() over scheduled
  int num_prefill_tokens = 0;  // of those, prompt tokens (prefill, chunks, recompute)
  BlockUsage blocks;           // pool figures after this step's allocation
  int num_running = 0;
  int num_waiting = 0;  // including preempted ones

  bool empty() const { return scheduled.empty(); }
};

// What the engine hands back after executing a step: one sampled token per scheduled sequence
// with sample == true (and per child forked from one of them, see Scheduler::Fork).
struct SampledToken {
  SeqId seq_id = 0;
  TokenId token = 0;
};
struct StepResult {
  std::vector<SampledToken> tokens;
};

struct UpdateResult {
  std::vector<FinishedSequence> finished;  // finished by this update; blocks already freed
};

}  // namespace tpserve::scheduler
