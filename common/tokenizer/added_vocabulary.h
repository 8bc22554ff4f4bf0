// Added tokens (tokenizer.json `added_tokens`): strings that are matched in the text before the
// normalizer / pre-tokenizer run and map to one id each. Matching is leftmost-longest; a token
// may require word boundaries (single_word) and may swallow whitespace on its left (lstrip) or
// right (rstrip). Tokens with normalized=false are matched in the raw text, the others in the
// normalized text.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace tpserve::tok {

class Normalizer;

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// A part of the input: an added token (id >= 0) or text still to tokenize (id == -1).
struct Segment {
  std::string_view text;
  size_t offset;  // byte offset in the string that was split
  int32_t id;
};

class AddedVocabulary {
 public:
  // Later tokens with the same content replace earlier ones.
  void Add(AddedToken token);
  // Prepares matching; normalized tokens are matched by their normalized content.
  void Build(const Normalizer* normalizer);

  // Splits `text` on the raw (normalized == false) or the normalized tokens.
  void Split(std::string_view text, bool normalized_pass, std::vector<Segment>* out) const;

  const AddedToken* FindById(int32_t id) const;
  const AddedToken* FindByContent(std::string_view content) const;
  int32_t max_id() const { return max_id_; }  // -1 when empty

 private:
  struct Matcher {
    std::vector<std::pair<std::string, int32_t>> patterns;  // (text, index into tokens_)
    // first byte -> indices into `patterns`, longest first
    std::vector<std::vector<int32_t>> by_first_byte = std::vector<std::vector<int32_t>>(256);
    void Build();
  };

  std::vector<AddedToken> tokens_;
  absl::flat_hash_map<int32_t, int32_t> by_id_;  // id -> index in tokens_
  absl::flat_hash_map<std::string, int32_t> by_content_;
  Matcher raw_, normalized_;
  int32_t max_id_ = -1;
};

}  // namespace tpserve::tok
