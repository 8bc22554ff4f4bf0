// Opens a model by path — a `.gguf` file or a Hugging Face folder (config.json +
// model.safetensors or model.safetensors.index.json with shards) — and builds the architecture
// it names, loading this rank's shard.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/format/gguf.h"
#include "common/format/model_config.h"
#include "common/format/tensor_source.h"
#include "worker/backend/backend.h"
#include "worker/model/causal_lm.h"
#include "worker/parallel/communicator.h"
#include "worker/parallel/shard_plan.h"

namespace tpserve {

struct ModelFiles {
  std::string path;
  std::unique_ptr<TensorSource> source;  // mmapped; weights may point into it
  const GgufFile* gguf = nullptr;        // set for GGUF files (metadata: tokenizer, template)
  ModelConfig config;
};

// NOT_FOUND / INVALID_ARGUMENT naming the path when it is neither a .gguf file nor a folder with
// config.json, or when the config is inconsistent.
absl::StatusOr<ModelFiles> OpenModelFiles(const std::string& path);

// The ShardInputs of a config (what MakeShardPlan splits).
ShardInputs ShardInputsOf(const ModelConfig& config, int world_size);

// Builds the architecture of `files.config` for rank comm.rank() of `plan`. UNIMPLEMENTED for
// architectures this engine does not run. `files`, `backend`, `comm` must outlive the model.
absl::StatusOr<std::unique_ptr<CausalLm>> LoadCausalLm(const ModelFiles& files,
                                                       const ShardPlan& plan, Backend& backend,
                                                       Communicator& comm);

}  // namespace tpserve
