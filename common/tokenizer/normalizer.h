// Normalizers of tokenizer.json: NFC/NFD/NFKC/NFKD, Lowercase, StripAccents, BertNormalizer,
// Prepend, Replace, Strip and Sequence. They rewrite a valid UTF-8 string in place; the tokenizer
// keeps no offsets, so no alignment is tracked.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/tokenizer/json_util.h"

namespace tpserve::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void Normalize(std::string* text) const = 0;
};

// Builds the normalizer described by `j` (the `normalizer` object of tokenizer.json); `path` names
// it in errors. An unsupported type is an error naming the type.
absl::StatusOr<std::unique_ptr<Normalizer>> NormalizerFromJson(const Json& j,
                                                               std::string_view path);

class Regex;
// The `pattern` of Replace / Split: {"String": s} (matched literally) or {"Regex": r}.
absl::StatusOr<std::shared_ptr<const Regex>> PatternFromJson(const Json& j, std::string_view path);

}  // namespace tpserve::tok
