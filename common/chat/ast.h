// Syntax tree of a parsed chat template. One node type for expressions and one for statements,
// each with a kind and the few generic slots its kinds use (documented per kind).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/chat/value.h"

namespace tpserve::chat {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,   // literal
    kName,      // name
    kList,      // args = items
    kTuple,     // args = items
    kDict,      // args = key0, value0, key1, value1, ...
    kGetAttr,   // a.name
    kGetItem,   // a[b]
    kSlice,     // a[b:c:d]; b, c, d may be null
    kCall,      // a(args..., kwargs...)
    kFilter,    // a | name(args..., kwargs...); a is null inside `{% filter %}` chains
    kTest,      // a is [not] name(args...); negated
    kNot,       // not a
    kNeg,       // -a
    kPos,       // +a
    kBinary,    // a op b; op in + - * / // % ** ~
    kAnd,       // a and b
    kOr,        // a or b
    kCompare,   // a op0 b op1 c ...: operands = args, ops = compare_ops
    kCondition  // b if a else c; c may be null (→ Undefined)
  };
  Kind kind;
  int line = 0;
  int col = 0;
  Value literal;
  std::string name;  // variable, attribute, filter or test name; operator for kBinary
  bool negated = false;
  ExprPtr a, b, c, d;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> compare_ops;  // == != < <= > >= in notin
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

// Where `{% set %}` / `{% for %}` store values: a name, `ns.attr`, or a tuple of names.
struct Target {
  std::vector<std::string> names;  // Several when unpacking: `for k, v in ...`.
  std::string attr;                // Non-empty for `set ns.attr = ...` (names[0] is `ns`).
};

struct Stmt {
  enum class Kind {
    kText,      // text
    kOutput,    // {{ expr }}
    kIf,        // conds[i] → bodies[i]; else_body
    kFor,       // for target in expr [if cond] body [else else_body]
    kSet,       // set target = expr
    kSetBlock,  // set target [| filter] body endset; expr is the filter chain or null
    kMacro,     // macro name(params = defaults) body
    kBreak,
    kContinue,
    kFilterBlock,  // filter chain (expr with null innermost operand) body
    kWith,         // with targets = values body
    kBodyBlock,    // a body rendered as-is (`{% generation %}`)
  };
  Kind kind;
  int line = 0;
  int col = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr cond;
  Target target;
  std::vector<ExprPtr> conds;
  std::vector<Body> bodies;
  Body body;
  Body else_body;
  // kMacro: parameter names and defaults (null when none). kWith: names and values.
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;
  // kMacro: whether the body reads `varargs` / `kwargs` (else surplus arguments are an error).
  bool catch_varargs = false;
  bool catch_kwargs = false;
};

}  // namespace tpserve::chat
