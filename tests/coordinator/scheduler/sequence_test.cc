// Stop conditions, one row per rule: feed tokens one by one, expect where and why it finishes.
#include "coordinator/scheduler/sequence.h"

#include <string>

#include "gtest/gtest.h"

namespace tpserve::scheduler {
namespace {

constexpr TokenId kEos = 2;

struct StopCase {
  std::string name;
  int prompt_len;
  StopConditions stop;
  int max_model_len;
  std::vector<TokenId> outputs;  // fed in order until the sequence finishes
  int finishes_after;            // number of outputs consumed when it finishes (0: never)
  FinishReason reason;
};

TEST(SequenceTest, StopConditionsTable) {
  const std::vector<StopCase> cases = {
      {"max_tokens", 3, {.max_tokens = 2}, 100, {5, 6, 7}, 2, FinishReason::kLength},
      {"eos", 3, {.max_tokens = 9}, 100, {5, kEos, 7}, 2, FinishReason::kEos},
      {"ignore_eos",
       3,
       {.max_tokens = 3, .ignore_eos = true},
       100,
       {kEos, kEos, kEos},
       3,
       FinishReason::kLength},
      {"stop_token",
       3,
       {.max_tokens = 9, .stop_token_ids = {7, 8}},
       100,
       {5, 8},
       2,
       FinishReason::kStopToken},
      {"stop_token_beats_length_on_last",
       3,
       {.max_tokens = 2, .stop_token_ids = {7}},
       100,
       {5, 7},
       2,
       FinishReason::kStopToken},
      {"min_tokens_holds_eos_and_stop",
       3,
       {.max_tokens = 9, .min_tokens = 3, .stop_token_ids = {7}},
       100,
       {kEos, 7, 7},
       3,
       FinishReason::kStopToken},
      {"min_tokens_then_eos",
       3,
       {.max_tokens = 9, .min_tokens = 2},
       100,
       {kEos, 5, kEos},
       3,
       FinishReason::kEos},
      {"context_length", 6, {.max_tokens = 9}, 8, {5, 6, 7}, 2, FinishReason::kContextLength},
      {"max_tokens_beats_context_length",
       6,
       {.max_tokens = 2},
       8,
       {5, 6},
       2,
       FinishReason::kLength},
      {"not_yet", 3, {.max_tokens = 9}, 100, {5, 6, 7}, 0, FinishReason::kNone},
  };
  const std::vector<TokenId> eos = {kEos};
  for (const StopCase& c : cases) {
    SCOPED_TRACE(c.name);
    Sequence seq(1, std::vector<TokenId>(c.prompt_len, 9), c.stop);
    int consumed = 0;
    FinishReason reason = FinishReason::kNone;
    for (TokenId t : c.outputs) {
      reason = seq.AppendToken(t, c.max_model_len, eos);
      ++consumed;
      if (reason != FinishReason::kNone) break;
    }
    EXPECT_EQ(reason, c.reason) << FinishReasonName(reason);
    if (c.finishes_after > 0) {
      EXPECT_EQ(consumed, c.finishes_after);
    }
    EXPECT_EQ(seq.num_output(), consumed);
    EXPECT_EQ(seq.num_tokens(), c.prompt_len + consumed);
  }
}

TEST(SequenceTest, ForkCopiesTokensNotState) {
  Sequence seq(1, {1, 2, 3}, {.max_tokens = 4, .stop_token_ids = {9}});
  seq.set_num_computed(3);
  seq.set_status(SequenceStatus::kRunning);
  EXPECT_EQ(seq.AppendToken(5, 100, {}), FinishReason::kNone);
  const Sequence child = seq.Fork(7);
  EXPECT_EQ(child.id(), 7);
  EXPECT_EQ(std::vector<TokenId>(child.tokens().begin(), child.tokens().end()),
            (std::vector<TokenId>{1, 2, 3, 5}));
  EXPECT_EQ(child.prompt_len(), 3);
  EXPECT_EQ(child.num_computed(), 0);
  EXPECT_EQ(child.status(), SequenceStatus::kWaiting);
  EXPECT_EQ(child.stop().stop_token_ids, std::vector<TokenId>{9});
}

}  // namespace
}  // namespace tpserve::scheduler
