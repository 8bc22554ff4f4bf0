// What the runtime needs from a decoder-only model: one forward pass over a batch of sequences
// (each feeding some tokens at some position), writing into the paged KV cache and returning
// logits for the rows asked for. Architectures (llama.h, ...) implement it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "common/format/model_config.h"
#include "worker/backend/tensor.h"
#include "worker/kv/kv_cache.h"

namespace tpserve {

struct ForwardSeq {
  std::span<const int32_t> tokens;       // fed this step: a prompt, a chunk of one, or one token
  int64_t start_pos = 0;                 // position of tokens[0]; earlier ones are in the cache
  std::span<const int32_t> block_table;  // covers start_pos + tokens.size() positions
  bool all_logits = false;               // logits of every fed position, not just the last
};

class CausalLm {
 public:
  virtual ~CausalLm() = default;
  virtual const ModelConfig& config() const = 0;
  // KV heads held by this rank (the cache is sized by it).
  virtual int64_t local_kv_heads() const = 0;
  // Runs the batch. On rank 0, `logits` becomes [rows, vocab]: for each sequence in order, its
  // last position's row, or all of its positions when all_logits. Other ranks leave it empty.
  // Inputs are validated by the caller (ModelRunner).
  virtual absl::Status Forward(std::span<const ForwardSeq> seqs, KvCache& cache,
                               Tensor* logits) = 0;
};

}  // namespace tpserve
