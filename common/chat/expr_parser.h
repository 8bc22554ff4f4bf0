// Jinja expression grammar (jinja2.parser precedence) over a token stream. The statement parser
// (parser.cc) extends it; both share the cursor and error helpers below.
#pragma once

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/chat/ast.h"
#include "common/chat/lexer.h"
#include "common/chat/text_util.h"

namespace tpserve::chat {

class ExprParser {
 public:
  explicit ExprParser(const std::vector<Token>& tokens) : toks_(tokens) {}

 protected:
  using T = Token::Type;

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

  // `a, b, c` without parentheses is a tuple; a single expression is itself. Stops before
  // `extra_end` (a name such as "recursive") when given.
  absl::StatusOr<ExprPtr> ParseTuple(bool with_condexpr, bool explicit_parens,
                                     std::string_view extra_end = "");
  // `with_condexpr=false` excludes `a if b else c` (for-loop iterables, where `if` filters).
  absl::StatusOr<ExprPtr> ParseExpression(bool with_condexpr);
  // `| f1(args) | f2 ...`; with start_inline the first filter has no leading '|'.
  absl::StatusOr<ExprPtr> ParseFilterChain(ExprPtr node, bool start_inline = false);

 private:
  bool IsTupleEnd(std::string_view extra_end) const;
  absl::StatusOr<ExprPtr> ParseOr();
  absl::StatusOr<ExprPtr> ParseAnd();
  absl::StatusOr<ExprPtr> ParseNot();
  absl::StatusOr<ExprPtr> ParseCompare();
  absl::StatusOr<ExprPtr> ParseBinaryLevel(std::initializer_list<std::string_view> ops,
                                           absl::StatusOr<ExprPtr> (ExprParser::*next)());
  absl::StatusOr<ExprPtr> ParseMath1();
  absl::StatusOr<ExprPtr> ParseConcat();
  absl::StatusOr<ExprPtr> ParseMath2();
  absl::StatusOr<ExprPtr> ParsePow();
  absl::StatusOr<ExprPtr> ParseUnaryF();
  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter);
  absl::StatusOr<ExprPtr> ParsePrimary();
  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node);
  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr node);
  absl::Status ParseCallArgs(Expr* n);
  absl::StatusOr<ExprPtr> ParseCall(ExprPtr callee);
  absl::StatusOr<ExprPtr> ParseFilterExpr(ExprPtr node);
  absl::StatusOr<ExprPtr> ParseTest(ExprPtr node);

  const std::vector<Token>& toks_;
  size_t pos_ = 0;

 protected:
  // Nesting of parentheses, brackets, unary operators and blocks. Recursive descent uses a dozen
  // native frames per level, so hostile input is cut off long before the stack is at risk.
  static constexpr int kMaxNesting = 600;
  int depth_ = 0;
  absl::Status EnterNested() {
    if (++depth_ > kMaxNesting) {
      return ErrorAt(Cur(), Cat("template nested deeper than ", kMaxNesting, " levels"));
    }
    return absl::OkStatus();
  }
  // Decrements depth_ when a nested parse returns, on every path.
  struct NestingScope {
    explicit NestingScope(int* d) : depth(d) {}
    ~NestingScope() { --*depth; }
    int* depth;
  };
};

}  // namespace tpserve::chat
