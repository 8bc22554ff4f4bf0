#include "common/chat/expr_parser.h"

#include "common/base/status_macros.h"
#include "common/chat/builtins.h"
#include "common/chat/text_util.h"

namespace tpserve::chat {

bool ExprParser::IsTupleEnd(std::string_view extra_end) const {
  const Token& t = Cur();
  if (t.type == T::kVarEnd || t.type == T::kBlockEnd || t.type == T::kEof) return true;
  if (t.type == T::kOp && t.value == ")") return true;
  return !extra_end.empty() && t.type == T::kName && t.value == extra_end;
}

// `a, b, c` without parentheses is a tuple; a single expression is itself.
absl::StatusOr<ExprPtr> ExprParser::ParseTuple(bool with_condexpr, bool explicit_parens,
                                               std::string_view extra_end) {
  const Token start = Cur();
  std::vector<ExprPtr> items;
  bool is_tuple = false;
  while (true) {
    if (!items.empty()) RETURN_IF_ERROR(ExpectOp(","));
    if (IsTupleEnd(extra_end)) break;
    ASSIGN_OR_RETURN(ExprPtr e, ParseExpression(with_condexpr));
    items.push_back(std::move(e));
    if (IsOp(",")) {
      is_tuple = true;
    } else {
      break;
    }
  }
  if (!is_tuple) {
    if (!items.empty()) return std::move(items[0]);
    if (!explicit_parens) return Unexpected("an expression");
  }
  auto n = Node<Expr>(Expr::Kind::kTuple, start);
  n->args = std::move(items);
  return n;
}

absl::StatusOr<ExprPtr> ExprParser::ParseExpression(bool with_condexpr) {
  NestingScope scope(&depth_);
  RETURN_IF_ERROR(EnterNested());
  if (!with_condexpr) return ParseOr();
  ASSIGN_OR_RETURN(ExprPtr expr, ParseOr());
  while (IsName("if")) {
    const Token at = Cur();
    Advance();
    auto n = Node<Expr>(Expr::Kind::kCondition, at);
    ASSIGN_OR_RETURN(n->a, ParseOr());
    n->b = std::move(expr);
    if (SkipName("else")) {
      ASSIGN_OR_RETURN(n->c, ParseExpression(true));
    }
    expr = std::move(n);
  }
  return expr;
}

absl::StatusOr<ExprPtr> ExprParser::ParseOr() {
  ASSIGN_OR_RETURN(ExprPtr left, ParseAnd());
  while (IsName("or")) {
    auto n = Node<Expr>(Expr::Kind::kOr, Cur());
    Advance();
    n->a = std::move(left);
    ASSIGN_OR_RETURN(n->b, ParseAnd());
    left = std::move(n);
  }
  return left;
}

absl::StatusOr<ExprPtr> ExprParser::ParseAnd() {
  ASSIGN_OR_RETURN(ExprPtr left, ParseNot());
  while (IsName("and")) {
    auto n = Node<Expr>(Expr::Kind::kAnd, Cur());
    Advance();
    n->a = std::move(left);
    ASSIGN_OR_RETURN(n->b, ParseNot());
    left = std::move(n);
  }
  return left;
}

absl::StatusOr<ExprPtr> ExprParser::ParseNot() {
  NestingScope scope(&depth_);
  RETURN_IF_ERROR(EnterNested());
  if (IsName("not")) {
    auto n = Node<Expr>(Expr::Kind::kNot, Cur());
    Advance();
    ASSIGN_OR_RETURN(n->a, ParseNot());
    return n;
  }
  return ParseCompare();
}

absl::StatusOr<ExprPtr> ExprParser::ParseCompare() {
  const Token start = Cur();
  ASSIGN_OR_RETURN(ExprPtr first, ParseMath1());
  auto n = Node<Expr>(Expr::Kind::kCompare, start);
  n->args.push_back(std::move(first));
  while (true) {
    std::string op;
    if (Cur().type == T::kOp &&
        (Cur().value == "==" || Cur().value == "!=" || Cur().value == "<" || Cur().value == "<=" ||
         Cur().value == ">" || Cur().value == ">=")) {
      op = Cur().value;
      Advance();
    } else if (IsName("in")) {
      op = "in";
      Advance();
    } else if (IsName("not") && Peek().type == T::kName && Peek().value == "in") {
      op = "notin";
      Advance();
      Advance();
    } else {
      break;
    }
    ASSIGN_OR_RETURN(ExprPtr operand, ParseMath1());
    n->compare_ops.push_back(op);
    n->args.push_back(std::move(operand));
  }
  if (n->compare_ops.empty()) return std::move(n->args[0]);
  return n;
}

absl::StatusOr<ExprPtr> ExprParser::ParseBinaryLevel(
    std::initializer_list<std::string_view> ops, absl::StatusOr<ExprPtr> (ExprParser::*next)()) {
  ASSIGN_OR_RETURN(ExprPtr left, (this->*next)());
  while (Cur().type == T::kOp) {
    bool match = false;
    for (std::string_view op : ops) match = match || Cur().value == op;
    if (!match) break;
    auto n = Node<Expr>(Expr::Kind::kBinary, Cur());
    n->name = Cur().value;
    Advance();
    n->a = std::move(left);
    ASSIGN_OR_RETURN(n->b, (this->*next)());
    left = std::move(n);
  }
  return left;
}
absl::StatusOr<ExprPtr> ExprParser::ParseMath1() {
  return ParseBinaryLevel({"+", "-"}, &ExprParser::ParseConcat);
}
absl::StatusOr<ExprPtr> ExprParser::ParseConcat() {
  return ParseBinaryLevel({"~"}, &ExprParser::ParseMath2);
}
absl::StatusOr<ExprPtr> ExprParser::ParseMath2() {
  return ParseBinaryLevel({"*", "/", "//", "%"}, &ExprParser::ParsePow);
}
absl::StatusOr<ExprPtr> ExprParser::ParsePow() {
  return ParseBinaryLevel({"**"}, &ExprParser::ParseUnaryF);
}
absl::StatusOr<ExprPtr> ExprParser::ParseUnaryF() { return ParseUnary(true); }

absl::StatusOr<ExprPtr> ExprParser::ParseUnary(bool with_filter) {
  NestingScope scope(&depth_);
  RETURN_IF_ERROR(EnterNested());
  ExprPtr node;
  if (IsOp("-") || IsOp("+")) {
    auto n = Node<Expr>(IsOp("-") ? Expr::Kind::kNeg : Expr::Kind::kPos, Cur());
    Advance();
    ASSIGN_OR_RETURN(n->a, ParseUnary(false));
    node = std::move(n);
  } else {
    ASSIGN_OR_RETURN(node, ParsePrimary());
  }
  ASSIGN_OR_RETURN(node, ParsePostfix(std::move(node)));
  if (with_filter) {
    ASSIGN_OR_RETURN(node, ParseFilterExpr(std::move(node)));
  }
  return node;
}

absl::StatusOr<ExprPtr> ExprParser::ParsePrimary() {
  const Token t = Cur();
  switch (t.type) {
    case T::kName: {
      Advance();
      if (t.value == "true" || t.value == "True" || t.value == "false" || t.value == "False") {
        auto n = Node<Expr>(Expr::Kind::kLiteral, t);
        n->literal = Value::Bool(t.value[0] == 't' || t.value[0] == 'T');
        return n;
      }
      if (t.value == "none" || t.value == "None") {
        auto n = Node<Expr>(Expr::Kind::kLiteral, t);
        n->literal = Value::None();
        return n;
      }
      auto n = Node<Expr>(Expr::Kind::kName, t);
      n->name = t.value;
      return n;
    }
    case T::kString: {
      std::string s;
      while (Cur().type == T::kString) {  // Adjacent literals concatenate, as in Python.
        s += Cur().value;
        Advance();
      }
      auto n = Node<Expr>(Expr::Kind::kLiteral, t);
      n->literal = Value::String(std::move(s));
      return n;
    }
    case T::kInt:
    case T::kFloat: {
      Advance();
      auto n = Node<Expr>(Expr::Kind::kLiteral, t);
      n->literal =
          t.type == T::kInt ? Value::Int(std::stoll(t.value)) : Value::Float(std::stod(t.value));
      return n;
    }
    default:
      break;
  }
  if (SkipOp("(")) {
    ASSIGN_OR_RETURN(ExprPtr e, ParseTuple(true, true));
    RETURN_IF_ERROR(ExpectOp(")"));
    return e;
  }
  if (SkipOp("[")) {
    auto n = Node<Expr>(Expr::Kind::kList, t);
    while (!SkipOp("]")) {
      if (!n->args.empty()) RETURN_IF_ERROR(ExpectOp(","));
      if (SkipOp("]")) break;
      ASSIGN_OR_RETURN(ExprPtr e, ParseExpression(true));
      n->args.push_back(std::move(e));
    }
    return n;
  }
  if (SkipOp("{")) {
    auto n = Node<Expr>(Expr::Kind::kDict, t);
    while (!SkipOp("}")) {
      if (!n->args.empty()) RETURN_IF_ERROR(ExpectOp(","));
      if (SkipOp("}")) break;
      ASSIGN_OR_RETURN(ExprPtr key, ParseExpression(true));
      RETURN_IF_ERROR(ExpectOp(":"));
      ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
      n->args.push_back(std::move(key));
      n->args.push_back(std::move(value));
    }
    return n;
  }
  return Unexpected("an expression");
}

absl::StatusOr<ExprPtr> ExprParser::ParsePostfix(ExprPtr node) {
  while (true) {
    if (IsOp(".")) {
      const Token at = Cur();
      Advance();
      if (Cur().type == T::kName) {
        auto n = Node<Expr>(Expr::Kind::kGetAttr, at);
        n->name = Cur().value;
        n->a = std::move(node);
        Advance();
        node = std::move(n);
      } else if (Cur().type == T::kInt) {  // `x.0` is `x[0]`.
        auto n = Node<Expr>(Expr::Kind::kGetItem, at);
        n->a = std::move(node);
        n->b = Node<Expr>(Expr::Kind::kLiteral, Cur());
        n->b->literal = Value::Int(std::stoll(Cur().value));
        Advance();
        node = std::move(n);
      } else {
        return Unexpected("an attribute name after '.'");
      }
    } else if (IsOp("[")) {
      ASSIGN_OR_RETURN(node, ParseSubscript(std::move(node)));
    } else if (IsOp("(")) {
      ASSIGN_OR_RETURN(node, ParseCall(std::move(node)));
    } else {
      return node;
    }
  }
}

absl::StatusOr<ExprPtr> ExprParser::ParseSubscript(ExprPtr node) {
  const Token at = Cur();
  Advance();  // '['
  ExprPtr start, stop, step;
  if (!IsOp(":")) {
    ASSIGN_OR_RETURN(start, ParseExpression(true));
    if (SkipOp("]")) {
      auto n = Node<Expr>(Expr::Kind::kGetItem, at);
      n->a = std::move(node);
      n->b = std::move(start);
      return n;
    }
  }
  RETURN_IF_ERROR(ExpectOp(":"));
  if (!IsOp("]") && !IsOp(":")) {
    ASSIGN_OR_RETURN(stop, ParseExpression(true));
  }
  if (SkipOp(":") && !IsOp("]")) {
    ASSIGN_OR_RETURN(step, ParseExpression(true));
  }
  RETURN_IF_ERROR(ExpectOp("]"));
  auto n = Node<Expr>(Expr::Kind::kSlice, at);
  n->a = std::move(node);
  n->b = std::move(start);
  n->c = std::move(stop);
  n->d = std::move(step);
  return n;
}

// `(args, name=value)`; fills n->args / n->kwargs.
absl::Status ExprParser::ParseCallArgs(Expr* n) {
  RETURN_IF_ERROR(ExpectOp("("));
  bool first = true;
  while (!SkipOp(")")) {
    if (!first) RETURN_IF_ERROR(ExpectOp(","));
    first = false;
    if (SkipOp(")")) break;
    if (IsOp("*") || IsOp("**")) {
      return ErrorAt(Cur(), "'*args' / '**kwargs' in calls are not supported");
    }
    if (Cur().type == T::kName && Peek().type == T::kOp && Peek().value == "=") {
      std::string key = Cur().value;
      Advance();
      Advance();
      ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
      n->kwargs.emplace_back(std::move(key), std::move(value));
    } else {
      if (!n->kwargs.empty()) {
        return ErrorAt(Cur(), "positional argument follows keyword argument");
      }
      ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
      n->args.push_back(std::move(value));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ExprPtr> ExprParser::ParseCall(ExprPtr callee) {
  auto n = Node<Expr>(Expr::Kind::kCall, Cur());
  n->a = std::move(callee);
  RETURN_IF_ERROR(ParseCallArgs(n.get()));
  return n;
}

absl::StatusOr<ExprPtr> ExprParser::ParseFilterExpr(ExprPtr node) {
  while (true) {
    if (IsOp("|")) {
      ASSIGN_OR_RETURN(node, ParseFilterChain(std::move(node)));
    } else if (IsName("is")) {
      ASSIGN_OR_RETURN(node, ParseTest(std::move(node)));
    } else if (IsOp("(")) {
      ASSIGN_OR_RETURN(node, ParseCall(std::move(node)));
    } else {
      return node;
    }
  }
}

// `| f1(args) | f2 ...`; with start_inline the first filter has no leading '|'.
absl::StatusOr<ExprPtr> ExprParser::ParseFilterChain(ExprPtr node, bool start_inline) {
  while (IsOp("|") || start_inline) {
    if (!start_inline) Advance();
    start_inline = false;
    const Token at = Cur();
    ASSIGN_OR_RETURN(std::string name, ExpectName());
    if (!IsKnownFilter(name)) {
      return ErrorAt(at, Cat("unsupported or unknown filter '", name, "'"));
    }
    auto n = Node<Expr>(Expr::Kind::kFilter, at);
    n->name = name;
    n->a = std::move(node);
    if (IsOp("(")) RETURN_IF_ERROR(ParseCallArgs(n.get()));
    node = std::move(n);
  }
  return node;
}

absl::StatusOr<ExprPtr> ExprParser::ParseTest(ExprPtr node) {
  Advance();  // 'is'
  auto n = Node<Expr>(Expr::Kind::kTest, Cur());
  n->negated = SkipName("not");
  const Token at = Cur();
  ASSIGN_OR_RETURN(n->name, ExpectName());
  if (!IsKnownTest(n->name)) {
    return ErrorAt(at, Cat("unsupported or unknown test '", n->name, "'"));
  }
  n->a = std::move(node);
  const Token& t = Cur();
  if (IsOp("(")) {
    RETURN_IF_ERROR(ParseCallArgs(n.get()));
  } else if ((t.type == T::kName || t.type == T::kString || t.type == T::kInt ||
              t.type == T::kFloat || IsOp("[") || IsOp("{")) &&
             !IsName("else") && !IsName("or") && !IsName("and")) {
    if (IsName("is")) return ErrorAt(t, "cannot chain multiple tests with 'is'");
    ASSIGN_OR_RETURN(ExprPtr arg, ParsePrimary());
    ASSIGN_OR_RETURN(arg, ParsePostfix(std::move(arg)));
    n->args.push_back(std::move(arg));
  }
  return n;
}

}  // namespace tpserve::chat
