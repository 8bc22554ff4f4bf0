// `tpserve models`: what is in the model cache folder (headers only: GGUF metadata and tensor
// directory, safetensors headers, config.json), or what a running cluster serves.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace CLI {
class App;
}

namespace tpserve {

struct ModelsOptions {
  std::string dir;     // empty: $TPSERVE_MODELS, else ~/.cache/tpserve/models
  std::string server;  // when set: print the served model's GetModelInfo instead
};

// One model of the cache, as its headers describe it.
struct ModelSummary {
  std::string name;  // file or folder name
  std::string path;
  std::string format;        // "gguf" or "safetensors"
  std::string architecture;  // GGUF general.architecture / config.json model_type
  int64_t parameters = 0;    // elements over all tensors in the file(s)
  int64_t size_bytes = 0;    // on disk (a folder: all its regular files)
  // Type holding most parameters, then the others by parameter count: "Q4_1 (+F32, Q8_0)".
  std::string weight_dtype;
  int64_t context_length = 0;  // 0 when the headers do not say
  std::string error;           // set (and the rest partly empty) when it could not be read
};

// The cache folder `tpserve models` lists: `dir` when given, else $TPSERVE_MODELS, else
// $HOME/.cache/tpserve/models.
std::string ModelsDir(const std::string& dir);

// Describes one .gguf file or one folder holding *.safetensors. INVALID_ARGUMENT / NOT_FOUND
// naming the path when it is neither or its headers are broken.
absl::StatusOr<ModelSummary> DescribeModel(const std::string& path);

// Every model directly inside `dir` (.gguf files, folders with safetensors), sorted by name;
// one that cannot be read is listed with its error. NOT_FOUND when `dir` is not a folder.
absl::StatusOr<std::vector<ModelSummary>> ListModels(const std::string& dir);

// "134.5M", "7.2B", "950".
std::string HumanCount(int64_t n);
// "93.8 MiB"
std::string HumanBytes(int64_t n);

CLI::App* AddModelsCommand(CLI::App& app, ModelsOptions& options);
// Prints the table (or the server's model info); returns the exit code (2: folder missing or
// server unreachable).
int RunModels(const ModelsOptions& options);

}  // namespace tpserve
