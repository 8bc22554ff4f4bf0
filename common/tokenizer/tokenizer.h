// Text <-> token ids, identical to Hugging Face `tokenizers` for the supported pipelines.
//
// Sources: a tokenizer.json (optionally inside an HF model folder, whose tokenizer_config.json,
// special_tokens_map.json, generation_config.json and chat_template.jinja give BOS/EOS and the
// chat template), or the tokenizer embedded in a GGUF file (tokenizer.ggml.*), built the way
// `transformers` builds it.
//
// Pipeline per Encode: invalid UTF-8 is replaced (each maximal invalid subsequence becomes U+FFFD,
// like Python's errors="replace"), added tokens are cut out, the rest is normalised,
// pre-tokenised into pieces and each piece tokenised by the model (BPE or WordPiece); the
// post-processor then adds special tokens ([CLS] ... [SEP], <s> ...) when asked. Truncation and
// padding settings of tokenizer.json are not applied: callers decide what to do with long inputs.
// All methods are const and thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace tpserve {

class GgufFile;
namespace tok {
struct Pipeline;
}

class Tokenizer {
 public:
  // HF folder: tokenizer.json (+ tokenizer_config.json, special_tokens_map.json,
  // generation_config.json, chat_template.jinja when present).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromHfFolder(const std::string& dir);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromTokenizerJson(const std::string& path);
  // The same from the text of a tokenizer.json (`origin` names it in errors).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromTokenizerJsonText(std::string_view json,
                                                                          std::string_view origin);
  // tokenizer.ggml.model gpt2 (byte-level BPE), llama (SentencePiece BPE) or bert (WordPiece).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& gguf);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool add_special_tokens = true) const;
  // A pair of sequences (BERT: [CLS] a [SEP] b [SEP]).
  absl::StatusOr<std::vector<int32_t>> EncodePair(std::string_view a, std::string_view b,
                                                  bool add_special_tokens = true) const;
  // INVALID_ARGUMENT naming the id when an id is not in the vocabulary.
  absl::StatusOr<std::string> Decode(std::span<const int32_t> ids,
                                     bool skip_special_tokens = false) const;

  int32_t vocab_size() const;  // one past the largest id (model vocabulary and added tokens)
  std::optional<int32_t> TokenToId(std::string_view token) const;
  absl::StatusOr<std::string> IdToToken(int32_t id) const;
  bool IsSpecial(
      int32_t id) const;  // an added token marked special (skipped by skip_special_tokens)

  int32_t bos_id() const { return bos_id_; }  // -1 if none
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  const std::string& bos_token() const { return bos_token_; }          // empty if none
  const std::string& eos_token() const { return eos_token_; }          // empty if none
  const std::string& chat_template() const { return chat_template_; }  // empty if none

 private:
  friend class TokenizerBuilder;
  Tokenizer();

  absl::StatusOr<std::vector<int32_t>> EncodeOne(std::string_view text) const;

  std::unique_ptr<tok::Pipeline> pipeline_;
  int32_t bos_id_ = -1;
  std::vector<int32_t> eos_ids_;
  std::string bos_token_, eos_token_, chat_template_;
};

// Streaming detokenization: Push returns the text that the ids so far add to the output, holding
// back bytes that could still change (an incomplete UTF-8 character, a byte-fallback run, a
// decoder that strips a leading space). The concatenation of all Push results and Flush equals
// Decode(all ids, skip_special_tokens). Not thread-safe; one per stream.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens = false);
  absl::StatusOr<std::string> Push(int32_t id);  // the new text (possibly empty)
  std::string Flush();                           // whatever is held back at the end

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  // Text for ids_ is produced by decoding the window ids_[prefix_start_, end) and returning what
  // it adds to the decode of ids_[prefix_start_, read_start_) (the context, already emitted).
  absl::StatusOr<std::string> Advance(bool final);

  std::vector<int32_t> ids_;
  size_t prefix_start_ = 0;
  size_t read_start_ = 0;
  std::string emitted_;  // everything returned so far
};

}  // namespace tpserve
