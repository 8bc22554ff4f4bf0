// ModelRunner: the worker's executor of one step plan (DESIGN.md §2). Plain structs in, logits
// and sampled tokens out; it owns the KV cache and never decides anything: which sequences run,
// how many tokens each feeds (a whole prompt, a prefill chunk or one decode token: the same
// thing here) and which cache blocks they use all come in the Step.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/backend/backend.h"
#include "worker/kv/kv_cache.h"
#include "worker/model/causal_lm.h"
#include "worker/sampling/sampler.h"

namespace tpserve {

struct StepSequence {
  int64_t seq_id = 0;
  std::vector<int32_t> tokens;       // fed this step
  int64_t start_pos = 0;             // position of tokens[0]
  std::vector<int32_t> block_table;  // KV blocks of the sequence, covering all its positions
  SamplingParams sampling;
  uint64_t sample_step = 0;  // index of the token being sampled within the request (RNG counter)
  bool sample = true;        // false for a prefill chunk that is not the prompt's last
  bool all_logits = false;   // return logits of every fed position (tests, scoring)
};

struct Step {
  std::vector<StepSequence> sequences;
  bool return_logits = false;  // copy the logits into StepResult (otherwise only tokens)
  // Hand the logits over as a host tensor instead: no copy where the backend's tensors are host
  // memory (a 32-sequence step's logits are 6 MB).
  bool keep_logits = false;
  // Hand the logits over as the model's own tensor (StepResult::logits_device) for the caller to
  // sample on the device (Backend::SampleOnDevice); no host copy unless return_logits, keep_logits
  // or a sampled sequence asks for one.
  bool keep_device_logits = false;
};

struct StepResult {
  // Rank 0 only. tokens[i] is sequence i's sampled token (-1 when sample == false).
  std::vector<int32_t> tokens;
  // When return_logits: row-major [rows, vocab]; sequence i's rows start at logits_row[i] (one
  // row, or one per fed token with all_logits).
  std::vector<float> logits;
  // When keep_logits: the same values in a host tensor [rows, vocab] the caller may modify.
  Tensor logits_host;
  // When keep_device_logits: the model's logits tensor [rows, vocab], in the backend's memory.
  Tensor logits_device;
  std::vector<int64_t> logits_row;
  int64_t vocab_size = 0;
};

class ModelRunner {
 public:
  // Owns a KV cache of `num_blocks` blocks of `block_size` tokens for `model`'s local KV heads.
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(CausalLm& model, Backend& backend,
                                                             bool is_rank0, int64_t num_blocks,
                                                             int64_t block_size = 16);

  // INVALID_ARGUMENT for a malformed step (token out of vocabulary, block table too short or
  // naming a block outside the pool, empty sequence, position past max_position) before any
  // computation, so a bad plan never leaves the cache half-written.
  absl::StatusOr<StepResult> Execute(const Step& step);

  const KvCacheConfig& kv_config() const { return cache_.config(); }
  CausalLm& model() { return model_; }

 private:
  ModelRunner(CausalLm& model, Backend& backend, bool is_rank0, KvCache cache)
      : model_(model), backend_(backend), is_rank0_(is_rank0), cache_(std::move(cache)) {}
  absl::Status Validate(const Step& step) const;

  CausalLm& model_;
  Backend& backend_;
  bool is_rank0_;
  KvCache cache_;
};

}  // namespace tpserve
