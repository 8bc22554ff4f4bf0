#include "worker/model/model_loader.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/status_macros.h"
#include "common/format/safetensors.h"
#include "worker/model/llama.h"

namespace tpserve {
namespace {

namespace fs = std::filesystem;

constexpr const char* kLlamaFamily[] = {"llama", "mistral", "qwen2"};

bool IsLlamaFamily(const std::string& arch) {
  for (const char* a : kLlamaFamily) {
    if (arch == a) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<ModelFiles> OpenModelFiles(const std::string& path) {
  ModelFiles files;
  files.path = path;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const std::string config_path = (fs::path(path) / "config.json").string();
    if (!fs::exists(config_path, ec)) {
      return absl::NotFoundError(
          absl::StrCat(path, ": a model folder needs config.json (and *.safetensors)"));
    }
    ASSIGN_OR_RETURN(files.config, ParseHfConfig(config_path));
    RETURN_IF_ERROR(
        MergeGenerationConfig((fs::path(path) / "generation_config.json").string(), &files.config));
    ASSIGN_OR_RETURN(files.source, SafetensorsModel::Open(path));
  } else if (fs::is_regular_file(path, ec)) {
    if (fs::path(path).extension() != ".gguf") {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": expected a .gguf file or a Hugging Face model folder"));
    }
    ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(path));
    ASSIGN_OR_RETURN(files.config, ModelConfigFromGguf(*gguf));
    files.gguf = gguf.get();
    files.source = std::move(gguf);
  } else {
    return absl::NotFoundError(absl::StrCat(path, ": no such file or folder"));
  }
  RETURN_IF_ERROR(ValidateConfig(files.config));
  return files;
}

ShardInputs ShardInputsOf(const ModelConfig& c, int world_size) {
  return ShardInputs{.num_heads = c.num_heads,
                     .num_kv_heads = c.num_kv_heads,
                     .ffn_size = c.intermediate_size,
                     .vocab_size = c.vocab_size,
                     .world_size = world_size,
                     .ffn_alignment = 32};
}

absl::StatusOr<std::unique_ptr<CausalLm>> LoadCausalLm(const ModelFiles& files,
                                                       const ShardPlan& plan, Backend& backend,
                                                       Communicator& comm) {
  const std::string& arch = files.config.architecture;
  if (!IsLlamaFamily(arch)) {
    return absl::UnimplementedError(
        absl::StrCat(files.path, ": architecture \"", arch,
                     "\" is not supported (supported: ", absl::StrJoin(kLlamaFamily, ", "), ")"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model,
                   LlamaModel::Load(*files.source, files.config, plan, backend, comm));
  return std::unique_ptr<CausalLm>(std::move(model));
}

}  // namespace tpserve
