// Step plans for the worker service tests: the greedy continuation of golden cases, batched
// (every case is one sequence of every step), as the coordinator would send them.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tests/worker/model/golden.h"
#include "tpserve/v1/worker.pb.h"

namespace tpserve::testing {

inline constexpr int32_t kBlockSize = 16;

// Sequence i of a batch owns blocks [i * blocks_per_seq, (i + 1) * blocks_per_seq).
inline v1::SequenceStep SequenceOf(uint64_t id, const std::vector<int32_t>& tokens, int32_t start,
                                   int32_t blocks_per_seq) {
  v1::SequenceStep s;
  s.set_sequence_id(id);
  s.mutable_tokens()->Add(tokens.begin(), tokens.end());
  s.set_start_position(start);
  for (int32_t b = 0; b < blocks_per_seq; ++b) {
    s.add_block_table(static_cast<int32_t>(id) * blocks_per_seq + b);
  }
  s.set_sample(true);
  s.mutable_sampling()->set_top_p(1.0f);
  s.mutable_sampling()->set_repetition_penalty(1.0f);
  return s;
}

// Blocks each sequence needs for its prompt plus its greedy tokens.
inline int32_t BlocksPerSequence(const std::vector<GoldenCase>& cases) {
  size_t longest = 0;
  for (const GoldenCase& c : cases)
    longest = std::max(longest, c.input_ids.size() + c.greedy.size());
  return static_cast<int32_t>((longest + kBlockSize - 1) / kBlockSize);
}

// Drives greedy decoding of all `cases` at once through `run` (plan -> rank 0's result), one
// prefill step and then decode steps, and returns each case's tokens.
template <typename RunStep>
std::vector<std::vector<int32_t>> DecodeGreedy(const std::vector<GoldenCase>& cases,
                                               int64_t generation, RunStep&& run) {
  const int32_t blocks = BlocksPerSequence(cases);
  std::vector<std::vector<int32_t>> tokens(cases.size());
  std::vector<int32_t> position(cases.size(), 0);
  uint64_t step_id = 0;
  size_t steps = cases.empty() ? 0 : cases[0].greedy.size();
  for (size_t s = 0; s < steps; ++s) {
    v1::StepPlan plan;
    plan.set_step_id(step_id++);
    plan.set_generation(generation);
    for (size_t i = 0; i < cases.size(); ++i) {
      const std::vector<int32_t> feed =
          s == 0 ? cases[i].input_ids : std::vector<int32_t>{tokens[i].back()};
      *plan.add_sequences() = SequenceOf(i, feed, position[i], blocks);
      position[i] += static_cast<int32_t>(feed.size());
    }
    const v1::StepResult result = run(plan);
    EXPECT_EQ(result.step_id(), plan.step_id());
    EXPECT_EQ(result.tokens_size(), static_cast<int>(cases.size()));
    if (result.tokens_size() != static_cast<int>(cases.size())) return tokens;
    for (size_t i = 0; i < cases.size(); ++i) {
      EXPECT_EQ(result.tokens(i).sequence_id(), i);
      tokens[i].push_back(result.tokens(i).token_id());
    }
  }
  return tokens;
}

}  // namespace tpserve::testing
