// Tree-walking evaluator for a parsed chat template.
//
// Scoping follows what jinja2 compiles to: every loop iteration and every macro call gets a fresh
// scope whose writes vanish when it ends (hence `namespace()` for loop-carried state), while
// `if` blocks write into the enclosing scope.
#pragma once

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/chat/ast.h"
#include "common/chat/value.h"

namespace tpserve::chat {

class Interpreter {
 public:
  // `globals` are visible everywhere and shadowed by `context` (the render kwargs).
  Interpreter(const Dict& globals, const Dict& context);

  absl::StatusOr<std::string> Render(const Body& body);

 private:
  struct Frame {
    absl::flat_hash_map<std::string, Value> vars;
    std::shared_ptr<Frame> parent;
  };
  using FramePtr = std::shared_ptr<Frame>;
  enum class Flow { kNormal, kBreak, kContinue };

  absl::StatusOr<Flow> ExecBody(const Body& body, const FramePtr& frame, std::string* out);
  absl::StatusOr<Flow> Exec(const Stmt& s, const FramePtr& frame, std::string* out);
  absl::StatusOr<Flow> ExecFor(const Stmt& s, const FramePtr& frame, std::string* out);
  absl::Status Assign(const Target& target, const Value& value, const FramePtr& frame,
                      const Stmt& at);
  Value MakeMacro(const Stmt& s, const FramePtr& frame);

  absl::StatusOr<Value> Eval(const Expr& e, const FramePtr& frame);
  absl::StatusOr<Value> EvalInner(const Expr& e, const FramePtr& frame);
  absl::StatusOr<CallArgs> EvalArgs(const Expr& e, const FramePtr& frame);
  absl::StatusOr<Value> EvalCompare(const Expr& e, const FramePtr& frame);
  // Applies a filter chain whose innermost operand is null (`{% filter %}`, `{% set x | f %}`).
  absl::StatusOr<Value> ApplyFilterChain(const Expr& chain, Value input, const FramePtr& frame);

  static const Value* Lookup(const FramePtr& frame, const std::string& name);

  FramePtr root_;
  int call_depth_ = 0;
};

}  // namespace tpserve::chat
