// The `llama` architecture: Llama 2/3, Mistral, Qwen2 (q/k/v bias), SmolLM2, TinyLlama; tied or
// untied LM head; RoPE plain / linear / llama3, rotate-half or interleaved (GGUF) pairing.
//
// Tensor parallel (Megatron, DESIGN.md §3): this rank holds its query/KV heads, FFN columns and
// vocabulary rows; the hidden state [T, H] is replicated. Collectives per forward: embedding
// (masked lookup) all-reduce, two all-reduces per layer (after o_proj and after down_proj), and
// a gather of the LM-head logits to rank 0.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/format/model_config.h"
#include "common/format/tensor_source.h"
#include "worker/backend/backend.h"
#include "worker/model/causal_lm.h"
#include "worker/model/llama_weights.h"
#include "worker/parallel/communicator.h"
#include "worker/parallel/shard_plan.h"

namespace tpserve {

class LlamaModel final : public CausalLm {
 public:
  // Loads rank `comm.rank()`'s shard of `plan` (plan.ranks has one entry per rank; with one rank
  // use WholeModelShard). `source`, `backend` and `comm` must outlive the model.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const TensorSource& source,
                                                          const ModelConfig& config,
                                                          const ShardPlan& plan, Backend& backend,
                                                          Communicator& comm);

  ~LlamaModel() override;

  const ModelConfig& config() const override { return config_; }
  int64_t local_kv_heads() const override { return shard_.kv_heads.size(); }
  absl::Status Forward(std::span<const ForwardSeq> seqs, KvCache& cache, Tensor* logits) override;

 private:
  LlamaModel(ModelConfig config, ShardPlan plan, RankShard shard, LlamaWeights weights,
             Backend& backend, Communicator& comm);
  // A step flattened: T rows, one per fed token, sequences back to back.
  struct Rows {
    std::vector<int32_t> tokens, positions;
    std::vector<int64_t> slots;
    std::vector<AttentionSeq> attn;
    std::vector<int64_t> logit_rows;  // rows of the final hidden state that need logits
  };
  // The forward pass over `rows` (Forward pads decode steps and may have the backend record it).
  absl::Status Run(const Rows& rows, KvCache& cache, Tensor* logits);
  absl::Status AllReduce(Tensor& t);
  // x += in · wᵀ (+ bias), the sum over the ranks' partial products: an o_proj or down_proj
  // and its residual connection. `scratch` holds the partial product when one is needed
  // (allocated on first use, [T, H]).
  absl::Status AddProjection(const Tensor& in, const Weight& w, const Tensor& bias, Tensor& scratch,
                             Tensor& x);
  // logits [rows, V] on rank 0 from this rank's [rows, Vl].
  absl::Status GatherLogits(const Tensor& local, Tensor* logits);

  ModelConfig config_;
  ShardPlan plan_;
  RankShard shard_;
  LlamaWeights w_;
  Backend& backend_;
  Communicator& comm_;
  std::vector<float> inv_freq_;   // [hd / 2]
  std::string recording_prefix_;  // of this model's recorded steps' keys
};

// A one-rank plan (everything on rank 0) for `config`.
ShardPlan SingleRankPlan(const ModelConfig& config);

}  // namespace tpserve
