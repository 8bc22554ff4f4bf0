// A compiled PCRE2 regex (UTF + UCP, JIT when available) for the split patterns of tokenizer.json.
// Patterns written for Oniguruma (the engine of Hugging Face `tokenizers`) such as the GPT-2,
// Llama-3 and Qwen2 pre-tokenizer regexes use only syntax PCRE2 reads the same way.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace tpserve::tok {

class Regex {
 public:
  // Compiles `pattern`; a syntax error names the pattern and the offset PCRE2 reports.
  static absl::StatusOr<std::shared_ptr<const Regex>> Compile(std::string_view pattern);
  // Compiles a pattern that matches `literal` verbatim.
  static absl::StatusOr<std::shared_ptr<const Regex>> Literal(std::string_view literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the [begin, end) byte ranges of all non-overlapping matches, left to right. `text` must
  // be valid UTF-8. Empty matches are skipped. Thread-safe.
  void FindAll(std::string_view text, std::vector<std::pair<size_t, size_t>>* out) const;
  // Replaces every match with `replacement` (taken literally).
  std::string ReplaceAll(std::string_view text, std::string_view replacement) const;
  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*, kept out of the header so users need no PCRE2 include
};

}  // namespace tpserve::tok
