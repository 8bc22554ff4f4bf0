// What the coordinator knows about the model it serves: the config (read from the same file the
// workers load), the tokenizer and chat template (tokenization happens here, DESIGN.md §1), and
// the facts ModelInfo reports. The weights stay mapped, never read.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/chat/chat_template.h"
#include "common/format/model_config.h"
#include "common/tokenizer/tokenizer.h"
#include "worker/model/model_loader.h"

namespace tpserve {

struct ServedModel {
  std::string path;
  std::string name;                      // file or folder name
  std::string format;                    // "gguf" or "safetensors"
  std::string weight_dtype;              // e.g. "Q4_1+Q8_0+F32"
  ModelFiles files;                      // config + mapped tensors (metadata only is used)
  std::unique_ptr<Tokenizer> tokenizer;  // null when the model has none (tiny test checkpoints)
  std::optional<ChatTemplate> chat_template;

  const ModelConfig& config() const { return files.config; }
  int context_length() const;  // max_position (2048 when the file does not say)
};

// NOT_FOUND / INVALID_ARGUMENT naming the path when the model cannot be opened; a tokenizer or
// chat template that is present but broken is an error too (a missing one is not).
absl::StatusOr<std::unique_ptr<ServedModel>> LoadServedModel(const std::string& path);

// The token ids of a chat: rendered with the template and tokenized the way transformers'
// apply_chat_template(tokenize=True) does (no extra special tokens). `rendered` gets the text.
absl::StatusOr<std::vector<int32_t>> EncodeChat(const ServedModel& model,
                                                const nlohmann::json& messages,
                                                bool add_generation_prompt, std::string* rendered);

}  // namespace tpserve
