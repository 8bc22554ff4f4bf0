// Tokens → syntax tree, following jinja2's grammar and operator precedence for the subset that
// chat templates use. Anything outside the subset (`extends`, `include`, `import`, `block`,
// `call`, recursive loops, `*args`, unknown filters or tests, ...) is rejected here, with the
// construct and its line:col in the message, so a template never fails half-way through a render
// for a reason that was visible up front.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "common/chat/ast.h"
#include "common/chat/lexer.h"

namespace tpserve::chat {

absl::StatusOr<Body> Parse(const std::vector<Token>& tokens);

}  // namespace tpserve::chat
