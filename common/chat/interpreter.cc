#include "common/chat/interpreter.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "common/base/status_macros.h"
#include "common/chat/builtins.h"
#include "common/chat/text_util.h"

namespace tpserve::chat {
namespace {

// Deep enough for any real template, shallow enough that a self-recursive macro cannot overflow
// the native stack.
constexpr int kMaxCallDepth = 100;

// A prompt (or a block captured by `set`/`filter`) larger than this is refused: no model context
// is that long, and an unbounded loop must not exhaust memory.
constexpr size_t kMaxOutputBytes = size_t{64} << 20;

absl::Status Append(std::string_view text, const Stmt& at, std::string* out) {
  if (out->size() + text.size() > kMaxOutputBytes) {
    return absl::InvalidArgumentError(Cat("chat template error at line ", at.line, ":", at.col,
                                          ": rendered text exceeds ", kMaxOutputBytes, " bytes"));
  }
  out->append(text);
  return absl::OkStatus();
}

absl::Status ErrorAt(int line, int col, std::string_view message) {
  return absl::InvalidArgumentError(
      Cat("chat template error at line ", line, ":", col, ": ", message));
}

// Errors from builtins carry no position; the innermost node that sees one adds its own.
absl::Status WithPosition(const absl::Status& st, int line, int col) {
  if (absl::StartsWith(st.message(), "chat template")) return st;
  return absl::Status(st.code(), Cat("chat template error at line ", line, ":", col, ": ",
                                     std::string(st.message())));
}

}  // namespace

Interpreter::Interpreter(const Dict& globals, const Dict& context) {
  auto g = std::make_shared<Frame>();
  for (const auto& [k, v] : globals.items()) g->vars[k] = v;
  root_ = std::make_shared<Frame>();
  root_->parent = g;
  for (const auto& [k, v] : context.items()) root_->vars[k] = v;
}

absl::StatusOr<std::string> Interpreter::Render(const Body& body) {
  std::string out;
  RETURN_IF_ERROR(ExecBody(body, root_, &out).status());
  return out;
}

const Value* Interpreter::Lookup(const FramePtr& frame, const std::string& name) {
  for (const Frame* f = frame.get(); f != nullptr; f = f->parent.get()) {
    auto it = f->vars.find(name);
    if (it != f->vars.end()) return &it->second;
  }
  return nullptr;
}

absl::StatusOr<Interpreter::Flow> Interpreter::ExecBody(const Body& body, const FramePtr& frame,
                                                        std::string* out) {
  for (const StmtPtr& s : body) {
    ASSIGN_OR_RETURN(Flow flow, Exec(*s, frame, out));
    if (flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

absl::StatusOr<Interpreter::Flow> Interpreter::Exec(const Stmt& s, const FramePtr& frame,
                                                    std::string* out) {
  switch (s.kind) {
    case Stmt::Kind::kText:
      RETURN_IF_ERROR(Append(s.text, s, out));
      return Flow::kNormal;
    case Stmt::Kind::kOutput: {
      ASSIGN_OR_RETURN(Value v, Eval(*s.expr, frame));
      RETURN_IF_ERROR(Append(ToStr(v), s, out));
      return Flow::kNormal;
    }
    case Stmt::Kind::kIf:
      for (size_t i = 0; i < s.conds.size(); ++i) {
        ASSIGN_OR_RETURN(Value c, Eval(*s.conds[i], frame));
        if (c.Truthy()) return ExecBody(s.bodies[i], frame, out);
      }
      return ExecBody(s.else_body, frame, out);
    case Stmt::Kind::kFor:
      return ExecFor(s, frame, out);
    case Stmt::Kind::kSet: {
      ASSIGN_OR_RETURN(Value v, Eval(*s.expr, frame));
      RETURN_IF_ERROR(Assign(s.target, v, frame, s));
      return Flow::kNormal;
    }
    case Stmt::Kind::kSetBlock: {
      std::string text;
      RETURN_IF_ERROR(ExecBody(s.body, frame, &text).status());
      Value v = Value::String(std::move(text));
      if (s.expr) {
        ASSIGN_OR_RETURN(v, ApplyFilterChain(*s.expr, v, frame));
      }
      RETURN_IF_ERROR(Assign(s.target, v, frame, s));
      return Flow::kNormal;
    }
    case Stmt::Kind::kMacro:
      frame->vars[s.name] = MakeMacro(s, frame);
      return Flow::kNormal;
    case Stmt::Kind::kBreak:
      return Flow::kBreak;
    case Stmt::Kind::kContinue:
      return Flow::kContinue;
    case Stmt::Kind::kFilterBlock: {
      std::string text;
      RETURN_IF_ERROR(ExecBody(s.body, frame, &text).status());
      ASSIGN_OR_RETURN(Value v, ApplyFilterChain(*s.expr, Value::String(std::move(text)), frame));
      RETURN_IF_ERROR(Append(ToStr(v), s, out));
      return Flow::kNormal;
    }
    case Stmt::Kind::kWith: {
      auto inner = std::make_shared<Frame>();
      inner->parent = frame;
      for (size_t i = 0; i < s.params.size(); ++i) {
        ASSIGN_OR_RETURN(inner->vars[s.params[i]], Eval(*s.defaults[i], frame));
      }
      return ExecBody(s.body, inner, out);
    }
    case Stmt::Kind::kBodyBlock:
      return ExecBody(s.body, frame, out);
  }
  return Flow::kNormal;
}

absl::Status Interpreter::Assign(const Target& target, const Value& value, const FramePtr& frame,
                                 const Stmt& at) {
  if (!target.attr.empty()) {
    const Value* ns = Lookup(frame, target.names[0]);
    if (ns == nullptr || !ns->is_namespace()) {
      return ErrorAt(at.line, at.col,
                     Cat("cannot assign attribute '", target.attr, "' on '", target.names[0],
                         "': it is not a namespace()"));
    }
    if (absl::StartsWith(target.attr, "_")) {
      return ErrorAt(at.line, at.col,
                     Cat("Chat templates cannot store underscore-prefixed attributes "
                         "on a namespace, but got '",
                         target.attr, "'"));
    }
    ns->namespace_attrs().Set(target.attr, value);
    return absl::OkStatus();
  }
  if (target.names.size() == 1) {
    frame->vars[target.names[0]] = value;
    return absl::OkStatus();
  }
  auto items = Iterate(value);
  if (!items.ok()) return WithPosition(items.status(), at.line, at.col);
  if (items->size() != target.names.size()) {
    return ErrorAt(
        at.line, at.col,
        Cat("cannot unpack ", items->size(), " values into ", target.names.size(), " names"));
  }
  for (size_t i = 0; i < items->size(); ++i) frame->vars[target.names[i]] = (*items)[i];
  return absl::OkStatus();
}

absl::StatusOr<Interpreter::Flow> Interpreter::ExecFor(const Stmt& s, const FramePtr& frame,
                                                       std::string* out) {
  ASSIGN_OR_RETURN(Value iterable, Eval(*s.expr, frame));
  auto all = Iterate(iterable);
  if (!all.ok()) return WithPosition(all.status(), s.expr->line, s.expr->col);
  std::vector<Value> items;
  if (s.cond) {
    for (const Value& item : *all) {
      auto scope = std::make_shared<Frame>();
      scope->parent = frame;
      RETURN_IF_ERROR(Assign(s.target, item, scope, s));
      ASSIGN_OR_RETURN(Value keep, Eval(*s.cond, scope));
      if (keep.Truthy()) items.push_back(item);
    }
  } else {
    items = std::move(*all);
  }
  if (items.empty()) {
    auto scope = std::make_shared<Frame>();
    scope->parent = frame;
    RETURN_IF_ERROR(ExecBody(s.else_body, scope, out).status());
    return Flow::kNormal;
  }
  const int64_t n = static_cast<int64_t>(items.size());
  for (int64_t i = 0; i < n; ++i) {
    auto scope = std::make_shared<Frame>();
    scope->parent = frame;
    RETURN_IF_ERROR(Assign(s.target, items[i], scope, s));
    Dict loop;
    loop.Set("index", Value::Int(i + 1));
    loop.Set("index0", Value::Int(i));
    loop.Set("revindex", Value::Int(n - i));
    loop.Set("revindex0", Value::Int(n - i - 1));
    loop.Set("first", Value::Bool(i == 0));
    loop.Set("last", Value::Bool(i == n - 1));
    loop.Set("length", Value::Int(n));
    // depth counts recursion levels of `recursive` loops, which are not supported: always 1.
    loop.Set("depth", Value::Int(1));
    loop.Set("depth0", Value::Int(0));
    if (i > 0) loop.Set("previtem", items[i - 1]);
    if (i + 1 < n) loop.Set("nextitem", items[i + 1]);
    loop.Set("cycle",
             Value::Callable("loop.cycle", [i](const CallArgs& args) -> absl::StatusOr<Value> {
               if (args.positional.empty()) {
                 return absl::InvalidArgumentError("loop.cycle() needs at least one argument");
               }
               return args.positional[i % args.positional.size()];
             }));
    scope->vars["loop"] = Value::MakeDict(std::move(loop));
    ASSIGN_OR_RETURN(Flow flow, ExecBody(s.body, scope, out));
    if (flow == Flow::kBreak) break;
  }
  return Flow::kNormal;
}

Value Interpreter::MakeMacro(const Stmt& s, const FramePtr& frame) {
  const Stmt* macro = &s;
  // Weak: the macro value lives in the frame it closes over; a strong pointer would be a cycle.
  std::weak_ptr<Frame> weak_closure = frame;
  return Value::Callable(
      s.name, [this, macro, weak_closure](const CallArgs& args) -> absl::StatusOr<Value> {
        FramePtr closure = weak_closure.lock();
        if (closure == nullptr) closure = root_;
        if (call_depth_ >= kMaxCallDepth) {
          return ErrorAt(
              macro->line, macro->col,
              Cat("macro '", macro->name, "' recursed deeper than ", kMaxCallDepth, " calls"));
        }
        auto scope = std::make_shared<Frame>();
        scope->parent = closure;
        const size_t n = macro->params.size();
        std::vector<bool> bound(n, false);
        std::vector<Value> varargs;
        for (size_t i = 0; i < args.positional.size(); ++i) {
          if (i < n) {
            scope->vars[macro->params[i]] = args.positional[i];
            bound[i] = true;
          } else if (macro->catch_varargs) {
            varargs.push_back(args.positional[i]);
          } else {
            return absl::InvalidArgumentError(
                Cat("macro '", macro->name, "' takes not more than ", n, " argument(s)"));
          }
        }
        Dict kwargs;
        for (const auto& [key, value] : args.keyword) {
          bool matched = false;
          for (size_t i = 0; i < n; ++i) {
            if (macro->params[i] == key) {
              if (bound[i]) {
                return absl::InvalidArgumentError(
                    Cat("macro '", macro->name, "' got multiple values for argument '", key, "'"));
              }
              scope->vars[key] = value;
              bound[i] = matched = true;
            }
          }
          if (matched) continue;
          if (!macro->catch_kwargs) {
            return absl::InvalidArgumentError(
                Cat("macro '", macro->name, "' takes no keyword argument '", key, "'"));
          }
          kwargs.Set(key, value);
        }
        for (size_t i = 0; i < n; ++i) {
          if (bound[i]) continue;
          if (macro->defaults[i]) {
            ASSIGN_OR_RETURN(scope->vars[macro->params[i]], Eval(*macro->defaults[i], scope));
          } else {
            scope->vars[macro->params[i]] =
                Value::Undefined(Cat("parameter '", macro->params[i], "' was not provided"));
          }
        }
        scope->vars["varargs"] = Value::List(std::move(varargs), /*tuple=*/true);
        scope->vars["kwargs"] = Value::MakeDict(std::move(kwargs));
        std::string text;
        ++call_depth_;
        auto flow = ExecBody(macro->body, scope, &text);
        --call_depth_;
        if (!flow.ok()) return flow.status();
        return Value::String(std::move(text));
      });
}

absl::StatusOr<Value> Interpreter::Eval(const Expr& e, const FramePtr& frame) {
  auto v = EvalInner(e, frame);
  if (!v.ok()) return WithPosition(v.status(), e.line, e.col);
  return v;
}

absl::StatusOr<CallArgs> Interpreter::EvalArgs(const Expr& e, const FramePtr& frame) {
  CallArgs args;
  for (const ExprPtr& a : e.args) {
    ASSIGN_OR_RETURN(Value v, Eval(*a, frame));
    args.positional.push_back(std::move(v));
  }
  for (const auto& [k, a] : e.kwargs) {
    ASSIGN_OR_RETURN(Value v, Eval(*a, frame));
    args.keyword.emplace_back(k, std::move(v));
  }
  return args;
}

absl::StatusOr<Value> Interpreter::ApplyFilterChain(const Expr& chain, Value input,
                                                    const FramePtr& frame) {
  if (chain.a) {
    ASSIGN_OR_RETURN(input, ApplyFilterChain(*chain.a, std::move(input), frame));
  }
  ASSIGN_OR_RETURN(CallArgs args, EvalArgs(chain, frame));
  auto v = ApplyFilter(chain.name, input, args);
  if (!v.ok()) return WithPosition(v.status(), chain.line, chain.col);
  return v;
}

absl::StatusOr<Value> Interpreter::EvalCompare(const Expr& e, const FramePtr& frame) {
  ASSIGN_OR_RETURN(Value left, Eval(*e.args[0], frame));
  for (size_t i = 0; i < e.compare_ops.size(); ++i) {
    ASSIGN_OR_RETURN(Value right, Eval(*e.args[i + 1], frame));
    const std::string& op = e.compare_ops[i];
    bool result;
    if (op == "==" || op == "!=") {
      result = Equal(left, right) == (op == "==");
    } else if (op == "in" || op == "notin") {
      ASSIGN_OR_RETURN(bool in, Contains(right, left));
      result = in == (op == "in");
    } else {
      for (const Value* v : {&left, &right}) {
        if (v->is_undefined()) return absl::InvalidArgumentError(v->undefined_message());
      }
      if (op == "<") {
        ASSIGN_OR_RETURN(result, Less(left, right));
      } else if (op == ">") {
        ASSIGN_OR_RETURN(result, Less(right, left));
      } else if (op == "<=") {
        ASSIGN_OR_RETURN(bool gt, Less(right, left));
        result = !gt;
      } else {
        ASSIGN_OR_RETURN(bool lt, Less(left, right));
        result = !lt;
      }
    }
    if (!result) return Value::Bool(false);
    left = std::move(right);
  }
  return Value::Bool(true);
}

absl::StatusOr<Value> Interpreter::EvalInner(const Expr& e, const FramePtr& frame) {
  switch (e.kind) {
    case Expr::Kind::kLiteral:
      return e.literal;
    case Expr::Kind::kName: {
      const Value* v = Lookup(frame, e.name);
      if (v == nullptr) return Value::Undefined(Cat("'", e.name, "' is undefined"));
      return *v;
    }
    case Expr::Kind::kList:
    case Expr::Kind::kTuple: {
      std::vector<Value> items;
      for (const ExprPtr& a : e.args) {
        ASSIGN_OR_RETURN(Value v, Eval(*a, frame));
        items.push_back(std::move(v));
      }
      return Value::List(std::move(items), e.kind == Expr::Kind::kTuple);
    }
    case Expr::Kind::kDict: {
      Dict d;
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
        ASSIGN_OR_RETURN(Value k, Eval(*e.args[i], frame));
        ASSIGN_OR_RETURN(Value v, Eval(*e.args[i + 1], frame));
        if (!k.is_string()) {
          return absl::InvalidArgumentError(
              Cat("dict keys must be strings here, got ", k.TypeName()));
        }
        d.Set(k.as_string(), std::move(v));
      }
      return Value::MakeDict(std::move(d));
    }
    case Expr::Kind::kGetAttr: {
      ASSIGN_OR_RETURN(Value obj, Eval(*e.a, frame));
      return GetAttr(obj, e.name);
    }
    case Expr::Kind::kGetItem: {
      ASSIGN_OR_RETURN(Value obj, Eval(*e.a, frame));
      ASSIGN_OR_RETURN(Value key, Eval(*e.b, frame));
      return GetItem(obj, key);
    }
    case Expr::Kind::kSlice: {
      ASSIGN_OR_RETURN(Value obj, Eval(*e.a, frame));
      Value bounds[3] = {Value::None(), Value::None(), Value::None()};
      const ExprPtr* parts[3] = {&e.b, &e.c, &e.d};
      for (int i = 0; i < 3; ++i) {
        if (*parts[i]) {
          ASSIGN_OR_RETURN(bounds[i], Eval(**parts[i], frame));
        }
      }
      return Slice(obj, bounds[0], bounds[1], bounds[2]);
    }
    case Expr::Kind::kCall: {
      ASSIGN_OR_RETURN(Value callee, Eval(*e.a, frame));
      if (callee.is_undefined()) return absl::InvalidArgumentError(callee.undefined_message());
      if (!callee.is_callable()) {
        return absl::InvalidArgumentError(Cat("'", callee.TypeName(), "' object is not callable"));
      }
      ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, frame));
      return callee.Call(args);
    }
    case Expr::Kind::kFilter: {
      ASSIGN_OR_RETURN(Value input, Eval(*e.a, frame));
      ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, frame));
      return ApplyFilter(e.name, input, args);
    }
    case Expr::Kind::kTest: {
      ASSIGN_OR_RETURN(Value input, Eval(*e.a, frame));
      ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, frame));
      ASSIGN_OR_RETURN(bool r, ApplyTest(e.name, input, args));
      return Value::Bool(r != e.negated);
    }
    case Expr::Kind::kNot: {
      ASSIGN_OR_RETURN(Value v, Eval(*e.a, frame));
      return Value::Bool(!v.Truthy());
    }
    case Expr::Kind::kNeg:
    case Expr::Kind::kPos: {
      ASSIGN_OR_RETURN(Value v, Eval(*e.a, frame));
      if (v.is_undefined()) return absl::InvalidArgumentError(v.undefined_message());
      if (!v.is_number()) {
        return absl::InvalidArgumentError(Cat("bad operand type for unary ",
                                              e.kind == Expr::Kind::kNeg ? "-" : "+", ": '",
                                              v.TypeName(), "'"));
      }
      if (e.kind == Expr::Kind::kPos) return v.is_bool() ? Value::Int(v.as_int()) : v;
      if (v.is_float()) return Value::Float(-v.as_double());
      if (v.as_int() == INT64_MIN) return absl::InvalidArgumentError("integer overflow");
      return Value::Int(-v.as_int());
    }
    case Expr::Kind::kBinary: {
      ASSIGN_OR_RETURN(Value a, Eval(*e.a, frame));
      ASSIGN_OR_RETURN(Value b, Eval(*e.b, frame));
      return BinaryOp(e.name, a, b);
    }
    case Expr::Kind::kAnd: {
      ASSIGN_OR_RETURN(Value a, Eval(*e.a, frame));
      if (!a.Truthy()) return a;
      return Eval(*e.b, frame);
    }
    case Expr::Kind::kOr: {
      ASSIGN_OR_RETURN(Value a, Eval(*e.a, frame));
      if (a.Truthy()) return a;
      return Eval(*e.b, frame);
    }
    case Expr::Kind::kCompare:
      return EvalCompare(e, frame);
    case Expr::Kind::kCondition: {
      ASSIGN_OR_RETURN(Value c, Eval(*e.a, frame));
      if (c.Truthy()) return Eval(*e.b, frame);
      if (e.c) return Eval(*e.c, frame);
      return Value::Undefined("the inline if-expression had no else branch");
    }
  }
  return absl::InternalError("unhandled expression kind");
}

}  // namespace tpserve::chat
