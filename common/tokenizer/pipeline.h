// The parts of a loaded tokenizer, shared by the loaders (tokenizer.json, GGUF) and Tokenizer.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "common/tokenizer/added_vocabulary.h"
#include "common/tokenizer/decoder.h"
#include "common/tokenizer/json_util.h"
#include "common/tokenizer/model.h"
#include "common/tokenizer/normalizer.h"
#include "common/tokenizer/post_processor.h"
#include "common/tokenizer/pre_tokenizer.h"

namespace tpserve::tok {

struct Pipeline {
  std::unique_ptr<Normalizer> normalizer;       // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer;  // may be null
  std::unique_ptr<Model> model;
  std::unique_ptr<PostProcessor> post_processor;  // may be null
  std::unique_ptr<Decoder> decoder;               // may be null: tokens are joined with spaces
  AddedVocabulary added;
};

// Builds the pipeline from a parsed tokenizer.json.
absl::StatusOr<std::unique_ptr<Pipeline>> PipelineFromJson(const Json& j);

}  // namespace tpserve::tok
