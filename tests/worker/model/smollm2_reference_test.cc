// The engine on the real default model, SmolLM2-135M-Instruct Q4_1 GGUF (Q4_1 + Q8_0 weights,
// interleaved RoPE layout, tied Q8_0 LM head) against transformers loading the same GGUF in fp32:
// last-position logits within 1e-3 relative and 64 greedy tokens equal, for 5 prompts.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "tests/worker/model/golden.h"

namespace tpserve {
namespace {

using testing::GoldenCase;
using testing::LoadGoldenCases;
using testing::OpenEngine;
using testing::RelativeDiff;
using testing::RunCase;

TEST(SmolLM2Reference, LastLogitsAnd64GreedyTokensMatchTransformers) {
  const std::string path = testing::ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " is missing: run scripts/fetch-models.sh (scripts/test.sh does)";
  }
  const std::vector<GoldenCase> cases = LoadGoldenCases("smollm2-135m-q4_1");
  ASSERT_EQ(cases.size(), 5u);
  auto engine = OpenEngine(path, 16);
  ASSERT_NE(engine, nullptr);
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    const GoldenCase& c = cases[i];
    std::vector<int32_t> greedy;
    const std::vector<float> logits = RunCase(*engine->runner, c, /*all_logits=*/false, &greedy);
    ASSERT_EQ(logits.size(), c.logits.size());
    const double diff = RelativeDiff(logits.data(), c.logits.data(), logits.size());
    RecordProperty("relative_diff_case" + std::to_string(i), std::to_string(diff));
    std::printf("case %zu: relative logits diff %.3g\n", i, diff);
    EXPECT_LE(diff, 1e-3);
    EXPECT_EQ(greedy, c.greedy);
  }
}

}  // namespace
}  // namespace tpserve
