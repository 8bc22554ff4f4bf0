// Chat templates: the Jinja programs in `tokenizer_config.json` / GGUF `tokenizer.chat_template`
// that turn a list of messages into the prompt text a model was trained on.
//
// Rendering matches transformers' `apply_chat_template(..., tokenize=False)` byte for byte for the
// Jinja subset real templates use (see common/chat/README.md for the subset); templates outside
// it fail in Parse with the construct and its line:col.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace tpserve {
namespace chat {
class Value;
}  // namespace chat

class ChatTemplate {
 public:
  // Errors: INVALID_ARGUMENT "chat template syntax error at line L:C: ..." for bad syntax or an
  // unsupported construct.
  static absl::StatusOr<ChatTemplate> Parse(std::string_view source);

  // `context` is an object whose keys become template variables, as transformers passes them:
  // {"messages": [...], "add_generation_prompt": bool, "bos_token": "...", "eos_token": "...",
  //  "tools": ..., any extra kwargs}. Errors (INVALID_ARGUMENT): a template runtime error
  // ("chat template error at line L:C: ...") or a `raise_exception(msg)` call
  // ("chat template raised an exception: msg").
  absl::StatusOr<std::string> Render(const nlohmann::json& context) const;
  // Same, keeping the context's key order (what `tojson` and `.items()` of a dict see).
  absl::StatusOr<std::string> RenderOrdered(const nlohmann::ordered_json& context) const;

 private:
  struct Program;
  explicit ChatTemplate(std::shared_ptr<const Program> program) : program_(std::move(program)) {}
  absl::StatusOr<std::string> RenderValue(const chat::Value& context) const;

  std::shared_ptr<const Program> program_;
};

// What the server calls: messages [{role, content, ...}], add_generation_prompt, special tokens.
// `tools` and `documents` are defined and None, as transformers passes them.
absl::StatusOr<std::string> RenderChat(const ChatTemplate& t, const nlohmann::json& messages,
                                       bool add_generation_prompt, std::string_view bos_token,
                                       std::string_view eos_token);
// The same keeping the request's key order (templates print tool schemas and tool-call arguments
// with `tojson`, whose key order then matches transformers'), with optional `tools` (a JSON
// array of tool schemas, or null).
absl::StatusOr<std::string> RenderChat(const ChatTemplate& t,
                                       const nlohmann::ordered_json& messages,
                                       bool add_generation_prompt, std::string_view bos_token,
                                       std::string_view eos_token,
                                       const nlohmann::ordered_json& tools = nullptr);

}  // namespace tpserve
