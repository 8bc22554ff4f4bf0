// Reads the model goldens of tests/data/golden/models/<name>/expected.json (made by
// scripts/reference/make_model_goldens.py with transformers; see the README there).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "worker/backend/cpu/cpu_backend.h"
#include "worker/model/model_loader.h"
#include "worker/parallel/communicator.h"
#include "worker/runtime/model_runner.h"

namespace tpserve::testing {

inline constexpr const char* kGoldenDir = "tests/data/golden/models";

struct GoldenCase {
  std::vector<int32_t> input_ids;
  std::vector<int64_t> logits_shape;  // [T, V] (all positions) or [V] (last position)
  std::vector<float> logits;
  std::vector<int32_t> greedy;
};

// The cases of folder `name` (fails the current test and returns {} on a read error).
std::vector<GoldenCase> LoadGoldenCases(const std::string& name);

// max |a - b| / max |b|
double RelativeDiff(const float* a, const float* b, int64_t n);

// $TPSERVE_MODELS, else $HOME/.cache/tpserve/models.
std::string ModelsDir();

// A one-rank CPU engine (2 threads) over a model path, with a KV pool of `num_blocks`. fp32
// matmuls unless asked otherwise: the goldens are transformers in fp32.
struct Engine {
  Engine(CpuPrecision precision, std::optional<KvDType> kv_dtype)
      : backend(2, precision, kv_dtype) {}
  ModelFiles files;
  CpuBackend backend;
  LocalCommunicator comm;
  std::unique_ptr<CausalLm> model;
  std::unique_ptr<ModelRunner> runner;
};
std::unique_ptr<Engine> OpenEngine(const std::string& path, int64_t num_blocks,
                                   CpuPrecision precision = CpuPrecision::kFp32,
                                   std::optional<KvDType> kv_dtype = std::nullopt);

// Prefills c.input_ids (logits of every position, or of the last), then decodes greedily one
// token at a time through the KV cache until c.greedy.size() tokens, as the reference did.
// Returns the prefill logits; appends the tokens to *greedy.
std::vector<float> RunCase(ModelRunner& runner, const GoldenCase& c, bool all_logits,
                           std::vector<int32_t>* greedy);

}  // namespace tpserve::testing
