// The engine against a reference we did not write (transformers, fp32): all-position logits
// (<= 1e-4 relative) and 16 greedy tokens of tiny random-weight HF checkpoints covering MHA, GQA,
// llama3 and linear RoPE scaling, Mistral, Qwen2 biases, tied embeddings, sharded safetensors and
// bf16 weights. Goldens: tests/data/golden/models (README there).
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <string>

#include "tests/worker/model/golden.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/model/llama.h"
#include "worker/model/model_loader.h"
#include "worker/parallel/communicator.h"
#include "worker/runtime/model_runner.h"

namespace tpserve {
namespace {

using testing::GoldenCase;
using testing::LoadGoldenCases;
using testing::OpenEngine;
using testing::RelativeDiff;
using testing::RunCase;

class TinyReference : public ::testing::TestWithParam<std::string> {};

TEST_P(TinyReference, AllPositionLogitsAndGreedyMatchTransformers) {
  const std::string dir = std::string(testing::kGoldenDir) + "/" + GetParam();
  const std::vector<GoldenCase> cases = LoadGoldenCases(GetParam());
  ASSERT_FALSE(cases.empty());
  auto engine = OpenEngine(dir, 8);
  ASSERT_NE(engine, nullptr);
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    const GoldenCase& c = cases[i];
    ASSERT_EQ(c.logits_shape.size(), 2u);
    std::vector<int32_t> greedy;
    const std::vector<float> logits = RunCase(*engine->runner, c, /*all_logits=*/true, &greedy);
    ASSERT_EQ(logits.size(), c.logits.size());
    const double diff = RelativeDiff(logits.data(), c.logits.data(), logits.size());
    RecordProperty("relative_diff_case" + std::to_string(i), std::to_string(diff));
    std::printf("case %zu: relative logits diff %.3g\n", i, diff);
    EXPECT_LE(diff, 1e-4);
    EXPECT_EQ(greedy, c.greedy);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, TinyReference,
                         ::testing::Values("llama-mha", "llama-gqa-llama3", "llama-linear-rope",
                                           "mistral", "qwen2", "llama-tied", "llama-sharded",
                                           "llama-bf16"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) {
                             if (ch == '-') ch = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace tpserve
