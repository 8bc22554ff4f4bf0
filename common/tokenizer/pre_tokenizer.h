// Pre-tokenizers of tokenizer.json: ByteLevel, Split, Metaspace, BertPreTokenizer, Whitespace,
// WhitespaceSplit, Digits, Punctuation and Sequence. Each refines a list of pieces (never empty
// strings); the model then tokenizes each piece on its own.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/json_util.h"

namespace tpserve::tok {

struct Piece {
  std::string text;
  // Byte offset of the piece in the text given to Encode (approximate once a normalizer changed
  // lengths); Metaspace's prepend_scheme "first" only asks whether it is 0.
  size_t offset = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void PreTokenize(std::vector<Piece>* pieces) const = 0;
};

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizerFromJson(const Json& j,
                                                                   std::string_view path);

// Maps each byte of `s` to GPT-2's printable alphabet (2 bytes of UTF-8 for most non-ASCII bytes).
std::string ByteLevelEncode(std::string_view s);

}  // namespace tpserve::tok
