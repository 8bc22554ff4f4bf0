#include "common/chat/parser.h"

#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "common/base/status_macros.h"
#include "common/chat/expr_parser.h"
#include "common/chat/text_util.h"

namespace tpserve::chat {
namespace {

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

bool BodyReads(const Body& body, std::string_view name);

// Whether `name` is read anywhere in the expression (the AST is depth-bounded by the parser).
bool ExprReads(const Expr* e, std::string_view name) {
  if (e == nullptr) return false;
  if (e->kind == Expr::Kind::kName && e->name == name) return true;
  for (const ExprPtr* child : {&e->a, &e->b, &e->c, &e->d}) {
    if (ExprReads(child->get(), name)) return true;
  }
  for (const ExprPtr& arg : e->args) {
    if (ExprReads(arg.get(), name)) return true;
  }
  for (const auto& [_, arg] : e->kwargs) {
    if (ExprReads(arg.get(), name)) return true;
  }
  return false;
}

bool StmtReads(const Stmt& s, std::string_view name) {
  if (ExprReads(s.expr.get(), name) || ExprReads(s.cond.get(), name)) return true;
  for (const ExprPtr& c : s.conds) {
    if (ExprReads(c.get(), name)) return true;
  }
  for (const ExprPtr& d : s.defaults) {
    if (ExprReads(d.get(), name)) return true;
  }
  for (const Body& b : s.bodies) {
    if (BodyReads(b, name)) return true;
  }
  return BodyReads(s.body, name) || BodyReads(s.else_body, name);
}

bool BodyReads(const Body& body, std::string_view name) {
  for (const StmtPtr& s : body) {
    if (StmtReads(*s, name)) return true;
  }
  return false;
}

class Parser : public ExprParser {
 public:
  using ExprParser::ExprParser;

  absl::StatusOr<Body> ParseTemplate() {
    std::string end_tag;
    ASSIGN_OR_RETURN(Body body, ParseBody({}, &end_tag));
    return body;
  }

 private:
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
    NestingScope scope(&depth_);
    RETURN_IF_ERROR(EnterNested());
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
    // jinja2 only lets a macro take surplus arguments when its body reads varargs / kwargs.
    s->catch_varargs = BodyReads(s->body, "varargs");
    s->catch_kwargs = BodyReads(s->body, "kwargs");
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
};

}  // namespace

absl::StatusOr<Body> Parse(const std::vector<Token>& tokens) {
  return Parser(tokens).ParseTemplate();
}

}  // namespace tpserve::chat
