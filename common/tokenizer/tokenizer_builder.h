// Internal: assembles a Tokenizer from a pipeline and the special-token metadata found by a loader.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/tokenizer/pipeline.h"
#include "common/tokenizer/tokenizer.h"

namespace tpserve {

struct SpecialTokenInfo {
  std::string bos_token, eos_token, chat_template;
  std::optional<int32_t> bos_id;  // when given by id (GGUF, generation_config.json)
  std::vector<int32_t> eos_ids;   // extra end-of-sequence ids (generation_config.json, GGUF eot)
};

class TokenizerBuilder {
 public:
  static std::unique_ptr<Tokenizer> Make(std::unique_ptr<tok::Pipeline> pipeline,
                                         const SpecialTokenInfo& info);
};

}  // namespace tpserve
