// Tokenization models of tokenizer.json: BPE (byte-level or SentencePiece-style with byte fallback)
// and WordPiece. A model turns one pre-tokenized piece into ids and owns the base vocabulary.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/json_util.h"

namespace tpserve::tok {

class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids of `piece` (non-empty, valid UTF-8) to `out`. Thread-safe.
  virtual void Tokenize(std::string_view piece, std::vector<int32_t>* out) const = 0;
  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;
  // The token of `id`, or null when the vocabulary has no such id.
  virtual const std::string* IdToToken(int32_t id) const = 0;
  // One past the largest id of the vocabulary.
  virtual int32_t vocab_size() const = 0;
};

// Builds the model described by `j` (the `model` object of tokenizer.json).
absl::StatusOr<std::unique_ptr<Model>> ModelFromJson(const Json& j, std::string_view path);

}  // namespace tpserve::tok
