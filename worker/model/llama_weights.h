// Weights of the `llama` architecture family (Llama 2/3, Mistral, Qwen2, SmolLM2, TinyLlama) as
// one rank holds them, and their loading from a GGUF file or a Hugging Face folder through the
// shard plan: each matrix is read through ViewSlice with this rank's rows/columns.
#pragma once

#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "common/format/model_config.h"
#include "common/format/tensor_source.h"
#include "worker/backend/backend.h"
#include "worker/parallel/shard_plan.h"

namespace tpserve {

// Shapes: H = hidden, hd = head dim, nq/nkv = this rank's query/KV heads, Fl = this rank's FFN
// columns, Vl = this rank's vocabulary rows. Optional tensors are empty() when absent.
struct LlamaLayerWeights {
  Tensor attn_norm;     // [H]
  Weight wq;            // [nq*hd, H]
  Weight wk, wv;        // [nkv*hd, H]
  Tensor bq, bk, bv;    // [nq*hd], [nkv*hd], [nkv*hd] (Qwen2; attention_bias)
  Weight wo;            // [H, nq*hd]  (columns of this rank's heads)
  Tensor bo;            // [H], added once after the all-reduce
  Tensor ffn_norm;      // [H]
  Weight w_gate, w_up;  // [Fl, H]
  Weight w_down;        // [H, Fl]
  Tensor b_gate, b_up;  // [Fl] (mlp_bias)
  Tensor b_down;        // [H], added once after the all-reduce
};

struct LlamaWeights {
  Weight embedding;  // [Vl, H], rows vocab.begin .. vocab.end
  std::vector<LlamaLayerWeights> layers;
  Tensor final_norm;  // [H]
  Weight lm_head;     // [Vl, H]; the embedding's rows when tied
  // GGUF Llama 3.x: per-pair divisors of the RoPE inverse frequencies [hd / 2] (empty if none).
  std::vector<float> rope_freq_divisors;
};

// Reads every weight of `config` from `source` for `shard` (rows/columns as DESIGN.md §3),
// checking each tensor's full shape against the config first. Errors name the file, the tensor,
// the expected and the actual shape.
absl::StatusOr<LlamaWeights> LoadLlamaWeights(const TensorSource& source, const ModelConfig& config,
                                              const RankShard& shard, Backend& backend);

}  // namespace tpserve
