// Template source → tokens, following jinja2's lexer as transformers configures it
// (trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False):
//   - `{{ }}`, `{% %}`, `{# #}` with `-` (strip all whitespace on that side) and `+` (keep it);
//   - trim_blocks: the first newline after `%}` / `#}` is dropped;
//   - lstrip_blocks: spaces/tabs between a line start and `{%` / `{#` are dropped;
//   - `{% raw %}...{% endraw %}` becomes plain text;
//   - newlines are normalised to "\n" and one trailing newline of the source is dropped.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace tpserve::chat {

struct Token {
  enum class Type {
    kText,        // Template data, already whitespace-processed.
    kVarBegin,    // {{
    kVarEnd,      // }}
    kBlockBegin,  // {%
    kBlockEnd,    // %}
    kName,
    kString,  // value is the unescaped string.
    kInt,
    kFloat,
    kOp,  // value is the operator text: + - * / // % ** ~ == != < <= > >= = . : | , ( ) [ ] { }
    kEof,
  };
  Type type;
  std::string value;
  int line = 1;  // 1-based position in the normalised source.
  int col = 1;
};

absl::StatusOr<std::vector<Token>> Tokenize(std::string_view source);

}  // namespace tpserve::chat
