#include "common/chat/chat_template.h"

#include "absl/status/status.h"
#include "common/base/status_macros.h"
#include "common/chat/ast.h"
#include "common/chat/builtins.h"
#include "common/chat/interpreter.h"
#include "common/chat/lexer.h"
#include "common/chat/parser.h"

namespace tpserve {

struct ChatTemplate::Program {
  chat::Body body;
};

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(std::string_view source) {
  ASSIGN_OR_RETURN(std::vector<chat::Token> tokens, chat::Tokenize(source));
  auto program = std::make_shared<Program>();
  ASSIGN_OR_RETURN(program->body, chat::Parse(tokens));
  return ChatTemplate(std::move(program));
}

absl::StatusOr<std::string> ChatTemplate::RenderValue(const chat::Value& context) const {
  if (!context.is_dict()) {
    return absl::InvalidArgumentError("chat template context must be a JSON object");
  }
  chat::Interpreter interpreter(chat::MakeGlobals(), context.as_dict());
  return interpreter.Render(program_->body);
}

absl::StatusOr<std::string> ChatTemplate::Render(const nlohmann::json& context) const {
  const chat::Value v = chat::Value::FromJson(context);
  return RenderValue(v);
}

absl::StatusOr<std::string> ChatTemplate::RenderOrdered(
    const nlohmann::ordered_json& context) const {
  const chat::Value v = chat::Value::FromJson(context);
  return RenderValue(v);
}

absl::StatusOr<std::string> RenderChat(const ChatTemplate& t, const nlohmann::json& messages,
                                       bool add_generation_prompt, std::string_view bos_token,
                                       std::string_view eos_token) {
  if (!messages.is_array()) return absl::InvalidArgumentError("messages must be a JSON array");
  nlohmann::json context = {
      {"messages", messages},
      {"add_generation_prompt", add_generation_prompt},
      {"bos_token", std::string(bos_token)},
      {"eos_token", std::string(eos_token)},
      {"tools", nullptr},
      {"documents", nullptr},
  };
  return t.Render(context);
}

absl::StatusOr<std::string> RenderChat(const ChatTemplate& t,
                                       const nlohmann::ordered_json& messages,
                                       bool add_generation_prompt, std::string_view bos_token,
                                       std::string_view eos_token,
                                       const nlohmann::ordered_json& tools) {
  if (!messages.is_array()) return absl::InvalidArgumentError("messages must be a JSON array");
  if (!tools.is_null() && !tools.is_array()) {
    return absl::InvalidArgumentError("tools must be a JSON array or null");
  }
  nlohmann::ordered_json context = nlohmann::ordered_json::object();
  context["messages"] = messages;
  context["tools"] = tools;
  context["documents"] = nullptr;
  context["add_generation_prompt"] = add_generation_prompt;
  context["bos_token"] = std::string(bos_token);
  context["eos_token"] = std::string(eos_token);
  return t.RenderOrdered(context);
}

}  // namespace tpserve
