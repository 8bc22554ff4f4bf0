#include "common/chat/lexer.h"

#include <algorithm>
#include <cctype>
#include <cstring>

#include "absl/status/status.h"
#include "common/chat/text_util.h"

namespace tpserve::chat {
namespace {

// jinja2 splits the source on \r\n, \r and \n, drops one trailing empty line and re-joins with
// "\n".
std::string NormalizeNewlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

constexpr size_t kMaxTokensPerTag = 2048;

bool IsWs(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool IsIdentStart(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool IsIdentChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

class Lexer {
 public:
  explicit Lexer(std::string_view source) : src_(NormalizeNewlines(source)) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  absl::StatusOr<std::vector<Token>> Run() {
    size_t pos = 0;
    bool line_starting = true;
    while (pos < src_.size()) {
      const size_t at = FindTagStart(pos);
      if (at == std::string::npos) {
        Emit(Token::Type::kText, src_.substr(pos), pos);
        break;
      }
      std::string text = src_.substr(pos, at - pos);
      const char kind = src_[at + 1];
      size_t p = at + 2;
      const char sign = p < src_.size() && (src_[p] == '-' || src_[p] == '+') ? src_[p] : 0;
      if (sign) ++p;
      size_t raw_end = 0;
      const bool raw = kind == '%' && MatchRawBegin(p, sign, &raw_end);
      ApplyLeftStrip(&text, sign, kind != '{', line_starting);
      if (!text.empty()) Emit(Token::Type::kText, text, pos);
      if (raw) {
        auto next = LexRaw(raw_end);
        if (!next.ok()) return next.status();
        pos = *next;
      } else if (kind == '#') {
        auto next = SkipComment(at, p);
        if (!next.ok()) return next.status();
        pos = *next;
      } else {
        auto next = LexTag(at, p, kind == '%');
        if (!next.ok()) return next.status();
        pos = *next;
      }
      line_starting = pos > 0 && src_[pos - 1] == '\n';
    }
    Emit(Token::Type::kEof, "", src_.size());
    return std::move(tokens_);
  }

 private:
  size_t FindTagStart(size_t pos) const {
    while (true) {
      const size_t at = src_.find('{', pos);
      if (at == std::string::npos || at + 1 >= src_.size()) return std::string::npos;
      const char c = src_[at + 1];
      if (c == '{' || c == '%' || c == '#') return at;
      pos = at + 1;
    }
  }

  // `{%-` strips all whitespace before the tag; otherwise lstrip_blocks strips the spaces between
  // the line start and a `{%` / `{#` (never `{{`) unless the tag says `+`.
  static void ApplyLeftStrip(std::string* text, char sign, bool lstrip_kind, bool line_starting) {
    if (sign == '-') {
      size_t e = text->size();
      while (e > 0 && IsWs((*text)[e - 1])) --e;
      text->resize(e);
      return;
    }
    if (sign == '+' || !lstrip_kind) return;
    const size_t nl = text->rfind('\n');
    const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
    if (l_pos == 0 && !line_starting) return;
    if (l_pos == text->size()) return;
    for (size_t i = l_pos; i < text->size(); ++i) {
      if (!IsWs((*text)[i])) return;
    }
    text->resize(l_pos);
  }

  // After `{%` and its sign: `\s*raw\s*(-%}\s*|%})`.
  bool MatchRawBegin(size_t p, char sign, size_t* end) const {
    if (sign == '+') return false;  // jinja2 accepts only `{%raw` and `{%-raw`.
    while (p < src_.size() && IsWs(src_[p])) ++p;
    if (src_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    while (p < src_.size() && IsWs(src_[p])) ++p;
    if (src_.compare(p, 3, "-%}") == 0) {
      p += 3;
      while (p < src_.size() && IsWs(src_[p])) ++p;
    } else if (src_.compare(p, 2, "%}") == 0) {
      p += 2;
    } else {
      return false;
    }
    *end = p;
    return true;
  }

  absl::StatusOr<size_t> LexRaw(size_t pos) {
    const bool line_starting = pos > 0 && src_[pos - 1] == '\n';
    for (size_t at = src_.find("{%", pos); at != std::string::npos; at = src_.find("{%", at + 1)) {
      size_t p = at + 2;
      const char sign = p < src_.size() && (src_[p] == '-' || src_[p] == '+') ? src_[p] : 0;
      if (sign) ++p;
      while (p < src_.size() && IsWs(src_[p])) ++p;
      if (src_.compare(p, 6, "endraw") != 0) continue;
      p += 6;
      while (p < src_.size() && IsWs(src_[p])) ++p;
      size_t end;
      if (!MatchBlockEnd(p, &end)) continue;
      std::string text = src_.substr(pos, at - pos);
      ApplyLeftStrip(&text, sign, true, line_starting);
      if (!text.empty()) Emit(Token::Type::kText, text, pos);
      return end;
    }
    return Error(pos, "missing end of raw directive ({% endraw %})");
  }

  // `+%}` | `-%}\s*` | `%}\n?` (trim_blocks).
  bool MatchBlockEnd(size_t p, size_t* end) const {
    if (src_.compare(p, 3, "+%}") == 0) {
      *end = p + 3;
    } else if (src_.compare(p, 3, "-%}") == 0) {
      p += 3;
      while (p < src_.size() && IsWs(src_[p])) ++p;
      *end = p;
    } else if (src_.compare(p, 2, "%}") == 0) {
      p += 2;
      if (p < src_.size() && src_[p] == '\n') ++p;
      *end = p;
    } else {
      return false;
    }
    return true;
  }

  bool MatchVarEnd(size_t p, size_t* end) const {
    if (src_.compare(p, 3, "-}}") == 0) {
      p += 3;
      while (p < src_.size() && IsWs(src_[p])) ++p;
      *end = p;
    } else if (src_.compare(p, 2, "}}") == 0) {
      *end = p + 2;
    } else {
      return false;
    }
    return true;
  }

  // Comments end at the first `+#}`, `-#}\s*` or `#}\n?`.
  absl::StatusOr<size_t> SkipComment(size_t at, size_t p) {
    for (size_t i = p; i + 1 < src_.size(); ++i) {
      if ((src_[i] == '+' || src_[i] == '-') && src_.compare(i + 1, 2, "#}") == 0) {
        size_t end = i + 3;
        if (src_[i] == '-') {
          while (end < src_.size() && IsWs(src_[end])) ++end;
        }
        return end;
      }
      if (src_.compare(i, 2, "#}") == 0) {
        size_t end = i + 2;
        if (end < src_.size() && src_[end] == '\n') ++end;
        return end;
      }
    }
    return Error(at, "missing end of comment tag '#}'");
  }

  absl::StatusOr<size_t> LexTag(size_t at, size_t p, bool block) {
    Emit(block ? Token::Type::kBlockBegin : Token::Type::kVarBegin, block ? "{%" : "{{", at);
    std::vector<char> balance;
    const size_t first_token = tokens_.size();
    while (true) {
      // Left-associative chains (`a + b + c ...`) become trees as deep as they are long; the
      // evaluator recurses once per level, so one tag's length is bounded.
      if (tokens_.size() - first_token > kMaxTokensPerTag) {
        return Error(at, Cat("tag has more than ", kMaxTokensPerTag, " tokens"));
      }
      while (p < src_.size() && IsWs(src_[p])) ++p;
      if (p >= src_.size()) {
        return Error(at, Cat("unexpected end of template, tag opened here is never "
                             "closed (expected '",
                             block ? "%}" : "}}", "')"));
      }
      size_t end;
      if (balance.empty() && (block ? MatchBlockEnd(p, &end) : MatchVarEnd(p, &end))) {
        Emit(block ? Token::Type::kBlockEnd : Token::Type::kVarEnd, block ? "%}" : "}}", p);
        return end;
      }
      const char c = src_[p];
      if (IsDigit(c)) {
        p = LexNumber(p);
      } else if (IsIdentStart(c)) {
        size_t e = p;
        while (e < src_.size() && IsIdentChar(src_[e])) ++e;
        Emit(Token::Type::kName, src_.substr(p, e - p), p);
        p = e;
      } else if (c == '\'' || c == '"') {
        auto next = LexString(p);
        if (!next.ok()) return next.status();
        p = *next;
      } else {
        static constexpr std::string_view kOps[] = {
            "//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<",
            ">",  "=",  ".",  ":",  "|",  ",",  "(", ")", "[", "]", "{", "}"};
        std::string_view op;
        for (std::string_view o : kOps) {
          if (src_.compare(p, o.size(), o) == 0) {
            op = o;
            break;
          }
        }
        if (op.empty()) return Error(p, Cat("unexpected character '", std::string(1, c), "'"));
        if (op == "(" || op == "[" || op == "{") {
          balance.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
        } else if (op == ")" || op == "]" || op == "}") {
          if (balance.empty()) return Error(p, Cat("unexpected '", op, "'"));
          if (balance.back() != op[0]) {
            return Error(
                p, Cat("unexpected '", op, "', expected '", std::string(1, balance.back()), "'"));
          }
          balance.pop_back();
        }
        Emit(Token::Type::kOp, std::string(op), p);
        p += op.size();
      }
    }
  }

  // Decimal integers and floats (`1`, `1_000`, `1.5`, `2e3`, `1.5e-3`) and 0x/0o/0b integers.
  size_t LexNumber(size_t p) {
    const size_t start = p;
    auto digits = [&](size_t q) {
      while (q < src_.size() && (IsDigit(src_[q]) ||
                                 (src_[q] == '_' && q + 1 < src_.size() && IsDigit(src_[q + 1])))) {
        ++q;
      }
      return q;
    };
    if (src_[p] == '0' && p + 1 < src_.size() && std::strchr("xXoObB", src_[p + 1]) != nullptr) {
      size_t q = p + 2;
      while (q < src_.size() &&
             (std::isxdigit(static_cast<unsigned char>(src_[q])) || src_[q] == '_'))
        ++q;
      std::string text = src_.substr(p, q - p);
      text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
      const int base = std::tolower(text[1]) == 'x' ? 16 : std::tolower(text[1]) == 'o' ? 8 : 2;
      Emit(Token::Type::kInt, std::to_string(std::stoll(text.substr(2), nullptr, base)), start);
      return q;
    }
    p = digits(p);
    bool is_float = false;
    if (p + 1 < src_.size() && src_[p] == '.' && IsDigit(src_[p + 1])) {
      p = digits(p + 1);
      is_float = true;
    }
    if (p < src_.size() && (src_[p] == 'e' || src_[p] == 'E')) {
      size_t q = p + 1;
      if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
      if (q < src_.size() && IsDigit(src_[q])) {
        p = digits(q);
        is_float = true;
      }
    }
    std::string text = src_.substr(start, p - start);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    Emit(is_float ? Token::Type::kFloat : Token::Type::kInt, text, start);
    return p;
  }

  // Python string-literal escapes, as jinja2 decodes them with "unicode-escape".
  absl::StatusOr<size_t> LexString(size_t p) {
    const char quote = src_[p];
    std::string out;
    size_t i = p + 1;
    while (i < src_.size() && src_[i] != quote) {
      if (src_[i] != '\\' || i + 1 >= src_.size()) {
        out.push_back(src_[i++]);
        continue;
      }
      const char e = src_[i + 1];
      i += 2;
      auto hex = [&](int n) -> absl::StatusOr<char32_t> {
        if (i + n > src_.size()) return Error(i, "truncated \\x/\\u escape in string literal");
        char32_t cp = 0;
        for (int k = 0; k < n; ++k) {
          const char h = src_[i + k];
          if (!std::isxdigit(static_cast<unsigned char>(h))) {
            return Error(i, "truncated \\x/\\u escape in string literal");
          }
          cp = cp * 16 + (IsDigit(h) ? h - '0' : std::tolower(h) - 'a' + 10);
        }
        i += n;
        return cp;
      };
      switch (e) {
        case '\n':
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '\'':
          out.push_back('\'');
          break;
        case '"':
          out.push_back('"');
          break;
        case 'a':
          out.push_back('\a');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'v':
          out.push_back('\v');
          break;
        case 'x':
        case 'u':
        case 'U': {
          auto cp = hex(e == 'x' ? 2 : e == 'u' ? 4 : 8);
          if (!cp.ok()) return cp.status();
          AppendUtf8(*cp, &out);
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            char32_t cp = e - '0';
            for (int k = 0; k < 2 && i < src_.size() && src_[i] >= '0' && src_[i] <= '7'; ++k) {
              cp = cp * 8 + (src_[i++] - '0');
            }
            AppendUtf8(cp, &out);
          } else {
            out.push_back('\\');
            out.push_back(e);
          }
      }
    }
    if (i >= src_.size()) return Error(p, "unterminated string literal");
    Emit(Token::Type::kString, out, p);
    return i + 1;
  }

  void Emit(Token::Type type, std::string value, size_t offset) {
    Token t{type, std::move(value)};
    Position(offset, &t.line, &t.col);
    tokens_.push_back(std::move(t));
  }

  // Columns count code points. Tokens arrive in source order, so the count continues from the
  // previous token on the same line instead of rescanning it (minified one-line templates).
  void Position(size_t offset, int* line, int* col) const {
    const auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset);
    const size_t line_start = *(it - 1);
    *line = static_cast<int>(it - line_starts_.begin());
    size_t from = line_start;
    int count = 0;
    if (cache_offset_ >= line_start && cache_offset_ <= offset) {
      from = cache_offset_;
      count = cache_count_;
    }
    count += static_cast<int>(CodePointCount(std::string_view(src_).substr(from, offset - from)));
    cache_offset_ = offset;
    cache_count_ = count;
    *col = 1 + count;
  }

  absl::Status Error(size_t offset, std::string_view message) const {
    int line, col;
    Position(offset, &line, &col);
    return absl::InvalidArgumentError(
        Cat("chat template syntax error at line ", line, ":", col, ": ", message));
  }

  std::string src_;
  std::vector<size_t> line_starts_;
  mutable size_t cache_offset_ = 0;  // Offset and code points since its line start, of the last
  mutable int cache_count_ = 0;      // Position() call.
  std::vector<Token> tokens_;
};

}  // namespace

absl::StatusOr<std::vector<Token>> Tokenize(std::string_view source) { return Lexer(source).Run(); }

}  // namespace tpserve::chat
