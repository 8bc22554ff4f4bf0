#include "common/chat/parser.h"

#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "common/base/status_macros.h"
#include "common/chat/builtins.h"
#include "common/chat/text_util.h"

namespace tpserve::chat {
namespace {

using T = Token::Type;

// Tags jinja2 knows but this interpreter does not implement, with a hint for the error message.
constexpr std::pair<std::string_view, std::string_view> kUnsupportedTags[] = {
    {"extends", "template inheritance"},
    {"include", "including other templates"},
    {"import", "importing other templates"},
    {"from", "importing other templates"},
    {"block", "template blocks"},
    {"call", "call blocks"},
    {"autoescape", "autoescape blocks"},
    {"do", "expression statements"},
    {"trans", "i18n"},
    {"print", "print statements"},
};

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : toks_(tokens) {}

  absl::StatusOr<Body> ParseTemplate() {
    std::string end_tag;
    ASSIGN_OR_RETURN(Body body, ParseBody({}, &end_tag));
    return body;
  }

 private:
  const Token& Cur() const { return toks_[pos_]; }
  const Token& Peek(int n = 1) const { return toks_[std::min(pos_ + n, toks_.size() - 1)]; }
  void Advance() {
    if (pos_ + 1 < toks_.size()) ++pos_;
  }
  bool IsOp(std::string_view op) const { return Cur().type == T::kOp && Cur().value == op; }
  bool IsName(std::string_view name) const { return Cur().type == T::kName && Cur().value == name; }
  bool SkipOp(std::string_view op) {
    if (!IsOp(op)) return false;
    Advance();
    return true;
  }
  bool SkipName(std::string_view name) {
    if (!IsName(name)) return false;
    Advance();
    return true;
  }

  static std::string Describe(const Token& t) {
    switch (t.type) {
      case T::kEof:
        return "end of template";
      case T::kBlockEnd:
        return "'%}'";
      case T::kVarEnd:
        return "'}}'";
      case T::kBlockBegin:
        return "'{%'";
      case T::kVarBegin:
        return "'{{'";
      case T::kText:
        return "template text";
      case T::kString:
        return "string literal";
      default:
        return "'" + t.value + "'";
    }
  }

  absl::Status ErrorAt(const Token& t, std::string_view message) const {
    return absl::InvalidArgumentError(
        Cat("chat template syntax error at line ", t.line, ":", t.col, ": ", message));
  }
  absl::Status Unexpected(std::string_view expected) const {
    return ErrorAt(Cur(), Cat("expected ", expected, ", got ", Describe(Cur())));
  }
  absl::Status ExpectOp(std::string_view op) {
    if (!SkipOp(op)) return Unexpected(Cat("'", op, "'"));
    return absl::OkStatus();
  }
  absl::Status ExpectBlockEnd() {
    if (Cur().type != T::kBlockEnd) return Unexpected("'%}'");
    Advance();
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Cur().type != T::kName) return Unexpected("a name");
    std::string name = Cur().value;
    Advance();
    return name;
  }

  template <typename N>
  std::unique_ptr<N> Node(typename N::Kind kind, const Token& at) {
    auto n = std::make_unique<N>();
    n->kind = kind;
    n->line = at.line;
    n->col = at.col;
    return n;
  }

  // Parses statements until a `{% tag %}` with tag in `end_tags` (returned in *end_tag, the
  // position left on the tag's name) or the end of the template (only when end_tags is empty).
  absl::StatusOr<Body> ParseBody(std::initializer_list<std::string_view> end_tags,
                                 std::string* end_tag) {
    Body body;
    while (true) {
      const Token& t = Cur();
      if (t.type == T::kEof) {
        if (end_tags.size() == 0) return body;
        std::string expected;
        for (std::string_view e : end_tags) expected += Cat(expected.empty() ? "" : ", ", e);
        return ErrorAt(t, Cat("unexpected end of template, expected ", expected));
      }
      if (t.type == T::kText) {
        auto s = Node<Stmt>(Stmt::Kind::kText, t);
        s->text = t.value;
        body.push_back(std::move(s));
        Advance();
      } else if (t.type == T::kVarBegin) {
        auto s = Node<Stmt>(Stmt::Kind::kOutput, t);
        Advance();
        ASSIGN_OR_RETURN(s->expr, ParseTuple(true, false));
        if (Cur().type != T::kVarEnd) return Unexpected("'}}'");
        Advance();
        body.push_back(std::move(s));
      } else if (t.type == T::kBlockBegin) {
        Advance();
        if (Cur().type != T::kName) return Unexpected("a tag name");
        const std::string& tag = Cur().value;
        for (std::string_view e : end_tags) {
          if (tag == e) {
            *end_tag = tag;
            return body;
          }
        }
        ASSIGN_OR_RETURN(StmtPtr s, ParseStatement());
        body.push_back(std::move(s));
      } else {
        return Unexpected("template text or a tag");
      }
    }
  }

  absl::StatusOr<StmtPtr> ParseStatement() {
    const Token tag = Cur();
    const std::string& name = tag.value;
    for (const auto& [unsupported, what] : kUnsupportedTags) {
      if (name == unsupported) {
        return ErrorAt(tag, Cat("'{% ", name, " %}' (", what,
                                ") is not supported by tpserve's chat-template "
                                "interpreter"));
      }
    }
    Advance();
    if (name == "for") return ParseFor(tag);
    if (name == "if") return ParseIf(tag);
    if (name == "set") return ParseSet(tag);
    if (name == "macro") return ParseMacro(tag);
    if (name == "filter") return ParseFilterBlock(tag);
    if (name == "with") return ParseWith(tag);
    if (name == "break" || name == "continue") {
      auto s = Node<Stmt>(name == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue, tag);
      RETURN_IF_ERROR(ExpectBlockEnd());
      return s;
    }
    if (name == "generation") {  // transformers' assistant-mask tag renders its body unchanged.
      auto s = Node<Stmt>(Stmt::Kind::kBodyBlock, tag);
      RETURN_IF_ERROR(ExpectBlockEnd());
      RETURN_IF_ERROR(ParseBodyUntil(&s->body, "endgeneration"));
      return s;
    }
    return ErrorAt(tag, Cat("unknown or unexpected tag '", name, "'"));
  }

  absl::Status ParseBodyUntil(Body* body, std::string_view end) {
    std::string end_tag;
    ASSIGN_OR_RETURN(*body, ParseBody({end}, &end_tag));
    Advance();
    return ExpectBlockEnd();
  }

  absl::StatusOr<Target> ParseTarget(bool allow_attr) {
    Target target;
    const bool paren = SkipOp("(");
    ASSIGN_OR_RETURN(std::string first, ExpectName());
    target.names.push_back(first);
    if (allow_attr && !paren && IsOp(".")) {
      Advance();
      ASSIGN_OR_RETURN(target.attr, ExpectName());
      return target;
    }
    while (SkipOp(",")) {
      if (Cur().type != T::kName) break;  // Trailing comma.
      target.names.push_back(Cur().value);
      Advance();
    }
    if (paren) RETURN_IF_ERROR(ExpectOp(")"));
    return target;
  }

  absl::StatusOr<StmtPtr> ParseFor(const Token& tag) {
    auto s = Node<Stmt>(Stmt::Kind::kFor, tag);
    ASSIGN_OR_RETURN(s->target, ParseTarget(false));
    if (!SkipName("in")) return Unexpected("'in'");
    ASSIGN_OR_RETURN(s->expr, ParseTuple(false, false, "recursive"));
    if (SkipName("if")) {
      ASSIGN_OR_RETURN(s->cond, ParseExpression(true));
    }
    if (IsName("recursive")) {
      return ErrorAt(Cur(), "recursive for loops ('recursive') are not supported");
    }
    RETURN_IF_ERROR(ExpectBlockEnd());
    std::string end_tag;
    ASSIGN_OR_RETURN(s->body, ParseBody({"endfor", "else"}, &end_tag));
    Advance();
    RETURN_IF_ERROR(ExpectBlockEnd());
    if (end_tag == "else") RETURN_IF_ERROR(ParseBodyUntil(&s->else_body, "endfor"));
    return s;
  }

  absl::StatusOr<StmtPtr> ParseIf(const Token& tag) {
    auto s = Node<Stmt>(Stmt::Kind::kIf, tag);
    while (true) {
      ASSIGN_OR_RETURN(ExprPtr cond, ParseTuple(true, false));
      RETURN_IF_ERROR(ExpectBlockEnd());
      std::string end_tag;
      ASSIGN_OR_RETURN(Body body, ParseBody({"elif", "else", "endif"}, &end_tag));
      Advance();
      s->conds.push_back(std::move(cond));
      s->bodies.push_back(std::move(body));
      if (end_tag == "elif") continue;
      RETURN_IF_ERROR(ExpectBlockEnd());
      if (end_tag == "else") RETURN_IF_ERROR(ParseBodyUntil(&s->else_body, "endif"));
      return s;
    }
  }

  absl::StatusOr<StmtPtr> ParseSet(const Token& tag) {
    auto s = Node<Stmt>(Stmt::Kind::kSet, tag);
    ASSIGN_OR_RETURN(s->target, ParseTarget(true));
    if (SkipOp("=")) {
      ASSIGN_OR_RETURN(s->expr, ParseTuple(true, false));
      RETURN_IF_ERROR(ExpectBlockEnd());
      return s;
    }
    s->kind = Stmt::Kind::kSetBlock;
    if (IsOp("|")) {
      ASSIGN_OR_RETURN(s->expr, ParseFilterChain(nullptr));
    }
    RETURN_IF_ERROR(ExpectBlockEnd());
    RETURN_IF_ERROR(ParseBodyUntil(&s->body, "endset"));
    return s;
  }

  absl::StatusOr<StmtPtr> ParseMacro(const Token& tag) {
    auto s = Node<Stmt>(Stmt::Kind::kMacro, tag);
    ASSIGN_OR_RETURN(s->name, ExpectName());
    RETURN_IF_ERROR(ExpectOp("("));
    while (!SkipOp(")")) {
      if (!s->params.empty()) RETURN_IF_ERROR(ExpectOp(","));
      if (SkipOp(")")) break;
      ASSIGN_OR_RETURN(std::string param, ExpectName());
      s->params.push_back(param);
      ExprPtr def;
      if (SkipOp("=")) {
        ASSIGN_OR_RETURN(def, ParseExpression(true));
      }
      s->defaults.push_back(std::move(def));
    }
    RETURN_IF_ERROR(ExpectBlockEnd());
    RETURN_IF_ERROR(ParseBodyUntil(&s->body, "endmacro"));
    return s;
  }

  absl::StatusOr<StmtPtr> ParseFilterBlock(const Token& tag) {
    auto s = Node<Stmt>(Stmt::Kind::kFilterBlock, tag);
    ASSIGN_OR_RETURN(s->expr, ParseFilterChain(nullptr, /*start_inline=*/true));
    RETURN_IF_ERROR(ExpectBlockEnd());
    RETURN_IF_ERROR(ParseBodyUntil(&s->body, "endfilter"));
    return s;
  }

  absl::StatusOr<StmtPtr> ParseWith(const Token& tag) {
    auto s = Node<Stmt>(Stmt::Kind::kWith, tag);
    while (Cur().type != T::kBlockEnd) {
      if (!s->params.empty()) RETURN_IF_ERROR(ExpectOp(","));
      ASSIGN_OR_RETURN(std::string name, ExpectName());
      RETURN_IF_ERROR(ExpectOp("="));
      ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
      s->params.push_back(name);
      s->defaults.push_back(std::move(value));
    }
    RETURN_IF_ERROR(ExpectBlockEnd());
    RETURN_IF_ERROR(ParseBodyUntil(&s->body, "endwith"));
    return s;
  }

  // ---- expressions (jinja2.parser precedence) ----

  bool IsTupleEnd(std::string_view extra_end) const {
    const Token& t = Cur();
    if (t.type == T::kVarEnd || t.type == T::kBlockEnd || t.type == T::kEof) return true;
    if (t.type == T::kOp && t.value == ")") return true;
    return !extra_end.empty() && t.type == T::kName && t.value == extra_end;
  }

  // `a, b, c` without parentheses is a tuple; a single expression is itself.
  absl::StatusOr<ExprPtr> ParseTuple(bool with_condexpr, bool explicit_parens,
                                     std::string_view extra_end = "") {
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

  absl::StatusOr<ExprPtr> ParseExpression(bool with_condexpr) {
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

  absl::StatusOr<ExprPtr> ParseOr() {
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

  absl::StatusOr<ExprPtr> ParseAnd() {
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

  absl::StatusOr<ExprPtr> ParseNot() {
    if (IsName("not")) {
      auto n = Node<Expr>(Expr::Kind::kNot, Cur());
      Advance();
      ASSIGN_OR_RETURN(n->a, ParseNot());
      return n;
    }
    return ParseCompare();
  }

  absl::StatusOr<ExprPtr> ParseCompare() {
    const Token start = Cur();
    ASSIGN_OR_RETURN(ExprPtr first, ParseMath1());
    auto n = Node<Expr>(Expr::Kind::kCompare, start);
    n->args.push_back(std::move(first));
    while (true) {
      std::string op;
      if (Cur().type == T::kOp &&
          (Cur().value == "==" || Cur().value == "!=" || Cur().value == "<" ||
           Cur().value == "<=" || Cur().value == ">" || Cur().value == ">=")) {
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

  absl::StatusOr<ExprPtr> ParseBinaryLevel(std::initializer_list<std::string_view> ops,
                                           absl::StatusOr<ExprPtr> (Parser::*next)()) {
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
  absl::StatusOr<ExprPtr> ParseMath1() {
    return ParseBinaryLevel({"+", "-"}, &Parser::ParseConcat);
  }
  absl::StatusOr<ExprPtr> ParseConcat() { return ParseBinaryLevel({"~"}, &Parser::ParseMath2); }
  absl::StatusOr<ExprPtr> ParseMath2() {
    return ParseBinaryLevel({"*", "/", "//", "%"}, &Parser::ParsePow);
  }
  absl::StatusOr<ExprPtr> ParsePow() { return ParseBinaryLevel({"**"}, &Parser::ParseUnaryF); }
  absl::StatusOr<ExprPtr> ParseUnaryF() { return ParseUnary(true); }

  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter) {
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

  absl::StatusOr<ExprPtr> ParsePrimary() {
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

  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node) {
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

  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr node) {
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
  absl::Status ParseCallArgs(Expr* n) {
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

  absl::StatusOr<ExprPtr> ParseCall(ExprPtr callee) {
    auto n = Node<Expr>(Expr::Kind::kCall, Cur());
    n->a = std::move(callee);
    RETURN_IF_ERROR(ParseCallArgs(n.get()));
    return n;
  }

  absl::StatusOr<ExprPtr> ParseFilterExpr(ExprPtr node) {
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
  absl::StatusOr<ExprPtr> ParseFilterChain(ExprPtr node, bool start_inline = false) {
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

  absl::StatusOr<ExprPtr> ParseTest(ExprPtr node) {
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

  const std::vector<Token>& toks_;
  size_t pos_ = 0;
};

}  // namespace

absl::StatusOr<Body> Parse(const std::vector<Token>& tokens) {
  return Parser(tokens).ParseTemplate();
}

}  // namespace tpserve::chat
