// The contract between the engine loop (policy) and whatever runs a step (DESIGN.md §2, §8): one
// plan for the whole group in, rank 0's sampled tokens out. Plain structs, no gRPC: WorkerGroup
// (coordinator/cluster) turns them into worker.proto messages; tests use a fake.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/scheduler/sequence.h"

namespace tpserve::engine {

using scheduler::BlockId;
using scheduler::SeqId;
using scheduler::TokenId;

// Sampling options with every default resolved (worker.proto StepSampling).
struct StepSamplingOptions {
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  bool logprobs = false;
  int top_logprobs = 0;
  std::vector<std::pair<TokenId, float>> logit_bias;
  bool penalties_active() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
};

// "n tokens for this sequence" (a prompt, a prefill chunk or one decode token).
struct PlanSequence {
  SeqId seq_id = 0;
  std::vector<TokenId> tokens;
  int start_position = 0;            // position of tokens[0]
  std::vector<BlockId> block_table;  // covers start_position + tokens.size()
  bool sample = false;               // sample a token after the last fed one
  StepSamplingOptions sampling;
  int step_index = 0;                         // output tokens so far: the RNG counter
  std::vector<TokenId> suppressed_token_ids;  // EOS / stop ids before min_tokens
  std::vector<TokenId> penalty_tokens;        // prompt + output, when a penalty is active
};

struct StepPlan {
  uint64_t step_id = 0;  // increases by one per plan
  std::vector<PlanSequence> sequences;
};

struct SampledToken {
  SeqId seq_id = 0;
  TokenId token = 0;
  float logprob = 0.0f;
  std::vector<TokenId> top_ids;  // most likely first
  std::vector<float> top_logprobs;
};

// Where the slowest rank's time went (microseconds), for metrics and benchmarks.
struct StepTiming {
  int64_t total_us = 0;  // fan-out to last result, seen by the coordinator
  int64_t worker_total_us = 0;
  int64_t collective_us = 0;
  int64_t compute_us = 0;
  int64_t sampling_us = 0;
};

struct StepOutput {
  // One per sequence with sample == true, in plan order.
  std::vector<SampledToken> tokens;
  StepTiming timing;
};

class StepExecutor {
 public:
  virtual ~StepExecutor() = default;
  // Runs `plan` on every rank. An error (UNAVAILABLE: a rank died; DEADLINE_EXCEEDED: the step
  // deadline passed) means the workers' KV state is gone; the engine fails or recomputes the
  // sequences it had in flight. Never blocks past the step deadline.
  virtual absl::StatusOr<StepOutput> Execute(const StepPlan& plan) = 0;
  // Whether steps can run now (all ranks loaded). While false, Execute fails with UNAVAILABLE and
  // `not_ready_reason` says why.
  virtual bool ready() const = 0;
  virtual std::string not_ready_reason() const { return ""; }
};

}  // namespace tpserve::engine
