// Rank 0's sampling extras: penalties (HF repetition, OpenAI presence/frequency), bias,
// suppression, and log-probs, against their definitions.
#include "worker/service/logits_processing.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

namespace tpserve {
namespace {

using ::testing::HasSubstr;

TEST(LogitsProcessing, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  std::vector<float> logits = {2.0f, -2.0f, 2.0f, 1.0f};
  LogitsAdjustments adj;
  adj.repetition_penalty = 2.0f;
  adj.penalty_tokens = {0, 1, 1};  // counted once each, whatever the count
  ApplyAdjustments(adj, logits);
  EXPECT_EQ(logits, (std::vector<float>{1.0f, -4.0f, 2.0f, 1.0f}));
}

TEST(LogitsProcessing, PresenceAndFrequencyPenaltiesFollowCounts) {
  std::vector<float> logits = {1.0f, 1.0f, 1.0f};
  LogitsAdjustments adj;
  adj.presence_penalty = 0.5f;
  adj.frequency_penalty = 0.25f;
  adj.penalty_tokens = {2, 0, 2, 2};
  ApplyAdjustments(adj, logits);
  EXPECT_FLOAT_EQ(logits[0], 1.0f - 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(logits[1], 1.0f);
  EXPECT_FLOAT_EQ(logits[2], 1.0f - 0.5f - 3 * 0.25f);
}

TEST(LogitsProcessing, BiasAddsAndSuppressionRemoves) {
  std::vector<float> logits = {0.0f, 1.0f, 2.0f};
  LogitsAdjustments adj;
  adj.logit_bias = {{0, 5.0f}};
  adj.suppressed_token_ids = {2};
  EXPECT_TRUE(adj.active());
  ApplyAdjustments(adj, logits);
  EXPECT_EQ(logits[0], 5.0f);
  EXPECT_EQ(logits[1], 1.0f);
  EXPECT_EQ(logits[2], -std::numeric_limits<float>::infinity());
}

TEST(LogitsProcessing, ValidationNamesTheField) {
  LogitsAdjustments adj;
  EXPECT_FALSE(adj.active());
  EXPECT_TRUE(ValidateAdjustments(adj, 10).ok());
  adj.logit_bias = {{10, 1.0f}};
  EXPECT_THAT(ValidateAdjustments(adj, 10).message(),
              HasSubstr("logit_bias: token 10 is outside the vocabulary [0, 10)"));
  adj = {};
  adj.suppressed_token_ids = {-1};
  EXPECT_THAT(ValidateAdjustments(adj, 10).message(), HasSubstr("suppressed_token_ids"));
  adj = {};
  adj.penalty_tokens = {99};
  EXPECT_THAT(ValidateAdjustments(adj, 10).message(), HasSubstr("penalty_tokens"));
  adj = {};
  adj.repetition_penalty = 0.0f;
  EXPECT_THAT(ValidateAdjustments(adj, 10).message(), HasSubstr("repetition_penalty"));
}

// Log-probs are a normalised distribution whose ratios are the exponentiated logit gaps.
TEST(LogitsProcessing, LogprobsAreLogSoftmax) {
  const std::vector<float> logits = {0.5f, 3.0f, -1.0f, 3.0f, 2.0f};
  double total = 0.0;
  for (int32_t t = 0; t < 5; ++t) total += std::exp(ComputeLogprobs(logits, t, 0).logprob);
  EXPECT_NEAR(total, 1.0, 1e-6);
  const TokenLogprobs lp = ComputeLogprobs(logits, 4, 3);
  EXPECT_NEAR(lp.logprob - ComputeLogprobs(logits, 0, 0).logprob, 2.0f - 0.5f, 1e-6);
  EXPECT_EQ(lp.top_ids, (std::vector<int32_t>{1, 3, 4}));  // tie 1 / 3: lower id first
  ASSERT_EQ(lp.top_logprobs.size(), 3u);
  EXPECT_FLOAT_EQ(lp.top_logprobs[2], lp.logprob);
  EXPECT_EQ(ComputeLogprobs(logits, 0, 99).top_ids.size(), 5u);  // capped at the vocabulary
}

TEST(LogitsProcessing, SuppressedTokensHaveNoMass) {
  std::vector<float> logits = {1.0f, 2.0f, 3.0f};
  const float without = ComputeLogprobs(std::vector<float>{1.0f, 2.0f}, 1, 0).logprob;
  logits[2] = -std::numeric_limits<float>::infinity();
  const TokenLogprobs lp = ComputeLogprobs(logits, 1, 0);
  EXPECT_FLOAT_EQ(lp.logprob, without);
  EXPECT_EQ(ComputeLogprobs(logits, 2, 0).logprob, -std::numeric_limits<float>::infinity());
}

// A whole vocabulary (vector passes and tails), with ties and suppressed tokens: log-probs
// within fp32 rounding of the double-precision definition, top-n equal to a full sort's.
TEST(LogitsProcessing, LogprobsOfAFullVocabularyMatchTheDefinition) {
  std::mt19937 rng(5);
  for (int v : {7, 49152, 49157}) {
    for (int shape = 0; shape < 3; ++shape) {
      std::vector<float> logits(v);
      std::normal_distribution<float> n(0.0f, 4.0f);
      std::uniform_int_distribution<int> small(-3, 3);
      for (float& l : logits) l = shape == 1 ? static_cast<float>(small(rng)) : n(rng);
      if (shape == 2) {
        for (int i = 0; i < v; i += 5) logits[i] = -std::numeric_limits<float>::infinity();
      }
      double max = -INFINITY, sum = 0.0;
      for (float l : logits) max = std::max(max, static_cast<double>(l));
      for (float l : logits) sum += std::exp(static_cast<double>(l) - max);
      const double log_z = max + std::log(sum);
      std::vector<int32_t> order(v);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
      for (int top_n : {0, 1, 5, 20}) {
        const int32_t token = static_cast<int32_t>(rng() % v);
        const TokenLogprobs lp = ComputeLogprobs(logits, token, top_n);
        if (std::isinf(logits[token])) {
          EXPECT_EQ(lp.logprob, -std::numeric_limits<float>::infinity());
        } else {
          EXPECT_NEAR(lp.logprob, logits[token] - log_z, 1e-5) << "v " << v << " shape " << shape;
        }
        const std::vector<int32_t> want(order.begin(), order.begin() + std::min(top_n, v));
        EXPECT_EQ(lp.top_ids, want) << "v " << v << " shape " << shape << " top " << top_n;
      }
    }
  }
}

}  // namespace
}  // namespace tpserve
