// Architecture hyper-parameters of a decoder (or encoder) model, read from a Hugging Face
// config.json or from GGUF metadata, in one format-independent struct.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/format/gguf.h"

namespace tpserve {

struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 } type = Type::kNone;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int64_t original_max_position = 8192;
};

struct ModelConfig {
  // The file's own name for the architecture: HF `model_type` ("llama", "mistral", "qwen2",
  // "bert", ...) or GGUF `general.architecture` (Mistral and SmolLM2 GGUFs say "llama").
  std::string architecture;
  int64_t hidden_size = 0, num_layers = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0,
          intermediate_size = 0, vocab_size = 0, max_position = 0;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  float rms_norm_eps = 1e-6f;  // also filled from layer_norm_eps for LayerNorm models (BERT)
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases (Qwen2 has them; o_proj has none)
  bool mlp_bias = false;
  // GGUF llama files store q/k rows permuted for llama.cpp's interleaved ("NORM") RoPE, which
  // pairs dims (2i, 2i+1); HF checkpoints use rotate-half ("NEOX") pairing (i, i + d/2).
  bool rope_interleaved = false;
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
  int64_t sliding_window = 0;  // 0 = none
  std::string hidden_act;      // "silu", "gelu", ... ("" when the file does not say)
  // GGUF Llama 3.x files carry their RoPE scaling as a tensor instead of keys:
  // "rope_freqs.weight", F32 [head_dim / 2], divisors of the per-pair inverse frequencies
  // (rope_scaling.type stays kNone). Names that tensor when present, else "".
  std::string rope_freqs_tensor;
};

// config.json of a HF model folder (Llama / Mistral / Qwen2; BERT-style names are accepted too).
// INVALID_ARGUMENT naming the file and field when a required field is missing or mistyped.
absl::StatusOr<ModelConfig> ParseHfConfig(const std::string& config_json_path);
// Same, from JSON text; `source` names it in messages.
absl::StatusOr<ModelConfig> ParseHfConfigText(const std::string& json_text,
                                              const std::string& source);
// Overrides eos_token_ids (and bos when given) from a generation_config.json. A missing file is
// not an error (returns OK and leaves `config` unchanged).
absl::Status MergeGenerationConfig(const std::string& generation_config_path, ModelConfig* config);
// llama.* / qwen2.* (any `<arch>.`) keys of a GGUF file.
absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& f);
// Checks internal consistency (heads divide hidden, kv divides heads, ...). The error names the
// field.
absl::Status ValidateConfig(const ModelConfig& c);

}  // namespace tpserve
