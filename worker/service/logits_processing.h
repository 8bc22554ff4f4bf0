// What rank 0 does to one row of logits before it samples, beyond the runtime's SamplingParams:
// penalties over the tokens the coordinator sends, logit bias, suppressed ids (worker.proto
// StepSampling), and the log-probabilities it reports. Plain C++ (no proto): the service converts.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace tpserve {

struct LogitsAdjustments {
  // HF-style: a seen token's logit is divided by the penalty when positive, multiplied when
  // negative. 1: off.
  float repetition_penalty = 1.0f;
  // OpenAI-style: logit -= presence * [count > 0] + frequency * count. 0: off.
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  // Tokens the penalties count (prompt and generated so far, as the coordinator decides).
  std::vector<int32_t> penalty_tokens;
  // Added to the logit of each token.
  std::vector<std::pair<int32_t, float>> logit_bias;
  // Set to -inf.
  std::vector<int32_t> suppressed_token_ids;

  bool penalties_active() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
  bool active() const {
    return penalties_active() || !logit_bias.empty() || !suppressed_token_ids.empty();
  }
};

// INVALID_ARGUMENT naming the field when a token id is outside [0, vocab_size) or a penalty is
// not finite / repetition_penalty <= 0.
absl::Status ValidateAdjustments(const LogitsAdjustments& adj, int64_t vocab_size);

// Applies `adj` to `logits` ([V], in place). `adj` must have been validated for V.
void ApplyAdjustments(const LogitsAdjustments& adj, std::span<float> logits);

struct TokenLogprobs {
  float logprob = 0.0f;          // natural log of softmax(logits)[token]
  std::vector<int32_t> top_ids;  // the `top_n` most likely tokens, most likely first
  std::vector<float> top_logprobs;
};

// log_softmax of `logits` ([V]) at `token`, plus the top `top_n` alternatives (ties: lower id
// first). Computed in double so that a -inf (suppressed) entry contributes exactly 0.
TokenLogprobs ComputeLogprobs(std::span<const float> logits, int32_t token, int top_n);

}  // namespace tpserve
