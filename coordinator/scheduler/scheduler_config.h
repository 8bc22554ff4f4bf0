// Knobs of the scheduler and the KV pool. Validate() says which field is wrong and why.
#pragma once

#include <vector>

#include "absl/status/status.h"
#include "coordinator/scheduler/sequence.h"

namespace tpserve::scheduler {

struct SchedulerConfig {
  // KV pool: the minimum over ranks of what each worker reported at registration (DESIGN §4).
  int num_blocks = 1024;
  int block_size = 16;  // tokens per block
  bool enable_prefix_caching = true;

  // Per step: at most this many tokens fed in total (decode tokens + prefill chunks) ...
  int max_num_batched_tokens = 512;
  // ... and at most this many running sequences (each running one is scheduled every step while
  // the token budget lasts). A sequence with n > 1 completions holds n places from admission.
  int max_num_seqs = 64;
  // Long prompts are prefilled in chunks of what the budget leaves. When false a prompt is only
  // admitted if it fits the remaining budget whole.
  bool enable_chunked_prefill = true;
  // Cap on one sequence's prefill chunk (0: no cap beyond the budget), so one long prompt cannot
  // take the whole step from the others waiting behind it.
  int max_prefill_chunk = 0;

  // Sequences allowed to wait (new plus preempted, one with n > 1 completions counting n); Add
  // answers RESOURCE_EXHAUSTED past it.
  int max_waiting = 1024;
  // Context length of the model: prompt + output never exceeds it.
  int max_model_len = 8192;
  // The model's end-of-sequence tokens (a sequence with ignore_eos keeps going past them).
  std::vector<TokenId> eos_token_ids;

  absl::Status Validate() const;
};

}  // namespace tpserve::scheduler
