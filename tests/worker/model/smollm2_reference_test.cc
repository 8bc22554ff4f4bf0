// The engine on the real default model, SmolLM2-135M-Instruct Q4_1 GGUF (Q4_1 + Q8_0 weights,
// interleaved RoPE layout, tied Q8_0 LM head) against transformers loading the same GGUF in fp32:
// last-position logits within 1e-3 relative and 64 greedy tokens equal, for 5 prompts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>

#include "tests/worker/model/golden.h"
#include "worker/backend/cpu/int8_gemm.h"

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

// The int8 paths round activations per 32-element block: kInt8 to one int8 (llama.cpp's
// arithmetic): logits move by a few percent and a greedy continuation may take another path at
// a near-tie; kInt8x2 to two int8 terms (~15 bits). What must hold for both is the next-token
// choice: teacher-forced along transformers' own greedy continuation, the argmax agrees with
// it; kInt8x2 is also held to the fp32 test's greedy continuation. An int8 KV cache (a scale
// per position and head) moves the logits about as much as kInt8's activations (1-3.5 %
// measured) and is held to the same next-token agreement.
struct Int8Case {
  CpuPrecision precision;
  const char* name;
  double max_logits_diff;                          // relative, last prompt position
  int min_agree_percent;                           // teacher-forced next tokens
  bool greedy_must_match;                          // free-running 64 tokens equal to transformers'
  std::optional<KvDType> kv_dtype = std::nullopt;  // the backend's default (fp16)
};

class SmolLM2Int8 : public ::testing::TestWithParam<Int8Case> {};

TEST_P(SmolLM2Int8, TeacherForcedNextTokensAgreeWithTransformers) {
  const Int8Case& p = GetParam();
  if (!Int8GemmAvailable()) GTEST_SKIP() << "this build has no AVX-512 VNNI kernel";
  const std::string path = testing::ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " is missing: run scripts/fetch-models.sh (scripts/test.sh does)";
  }
  const std::vector<GoldenCase> cases = LoadGoldenCases("smollm2-135m-q4_1");
  ASSERT_EQ(cases.size(), 5u);
  auto engine = OpenEngine(path, 16, p.precision, p.kv_dtype);
  ASSERT_NE(engine, nullptr);
  int agree = 0, total = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    GoldenCase forced = cases[i];
    const size_t prompt = forced.input_ids.size();
    forced.input_ids.insert(forced.input_ids.end(), cases[i].greedy.begin(),
                            cases[i].greedy.end() - 1);
    forced.greedy.resize(1);
    std::vector<int32_t> unused;
    const std::vector<float> logits =
        RunCase(*engine->runner, forced, /*all_logits=*/true, &unused);
    const size_t vocab = cases[i].logits.size();
    ASSERT_EQ(logits.size(), forced.input_ids.size() * vocab);
    // Last prompt position: the logits against transformers'.
    const double diff =
        RelativeDiff(logits.data() + (prompt - 1) * vocab, cases[i].logits.data(), vocab);
    int case_agree = 0;
    for (size_t k = 0; k < cases[i].greedy.size(); ++k) {
      const float* row = logits.data() + (prompt - 1 + k) * vocab;
      const int32_t best = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
      case_agree += best == cases[i].greedy[k];
    }
    std::vector<int32_t> greedy;
    RunCase(*engine->runner, cases[i], /*all_logits=*/false, &greedy);
    size_t same = 0;
    while (same < greedy.size() && greedy[same] == cases[i].greedy[same]) ++same;
    std::printf(
        "%s case %zu: relative logits diff %.3g, teacher-forced next token agrees "
        "%d / %zu, free-running greedy equal for %zu tokens\n",
        p.name, i, diff, case_agree, cases[i].greedy.size(), same);
    EXPECT_LE(diff, p.max_logits_diff);
    if (p.greedy_must_match) EXPECT_EQ(greedy, cases[i].greedy);
    agree += case_agree;
    total += static_cast<int>(cases[i].greedy.size());
  }
  std::printf("%s: teacher-forced next-token agreement %d / %d\n", p.name, agree, total);
  EXPECT_GE(agree * 100, total * p.min_agree_percent);
}

INSTANTIATE_TEST_SUITE_P(Precisions, SmolLM2Int8,
                         ::testing::Values(Int8Case{CpuPrecision::kInt8, "int8", 0.08, 95, false},
                                           Int8Case{CpuPrecision::kInt8x2, "int8x2", 1e-3, 100,
                                                    true},
                                           Int8Case{CpuPrecision::kInt8x2, "int8x2_kv_int8", 0.06,
                                                    95, false, KvDType::kInt8}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace tpserve
