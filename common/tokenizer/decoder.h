// Decoders of tokenizer.json: ByteLevel, Metaspace, WordPiece, ByteFallback, Fuse, Strip, Replace
// and Sequence. Like `tokenizers`, a decoder maps the list of token strings to a new list; the
// decoded text is the concatenation of the final list.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/json_util.h"

namespace tpserve::tok {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void DecodeChain(std::vector<std::string>* tokens) const = 0;
};

absl::StatusOr<std::unique_ptr<Decoder>> DecoderFromJson(const Json& j, std::string_view path);

}  // namespace tpserve::tok
