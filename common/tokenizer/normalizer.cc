#include "common/tokenizer/normalizer.h"

#include <vector>

#include "common/base/status_macros.h"
#include "common/tokenizer/regex.h"
#include "common/tokenizer/unicode.h"

namespace tpserve::tok {
namespace {

class FormNormalizer : public Normalizer {
 public:
  explicit FormNormalizer(NormalForm form) : form_(form) {}
  void Normalize(std::string* text) const override { *text = tok::Normalize(*text, form_); }

 private:
  NormalForm form_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  void Normalize(std::string* text) const override { *text = Lowercase(*text); }
};

// Drops marks: only nonspacing ones (Mn) for BERT's accent stripping, all of them (Mn, Mc, Me)
// for the StripAccents normalizer, as `tokenizers` does. Meant to follow NFD.
std::string DropMarks(std::string_view s, bool all_marks) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) {
    size_t start = pos;
    char32_t c = NextCodePoint(s, &pos);
    bool mark = c >= 0x300 && (all_marks ? IsMark(c) : IsMarkNonspacing(c));
    if (!mark) out.append(s.substr(start, pos - start));
  }
  return out;
}

class StripAccentsNormalizer : public Normalizer {
 public:
  void Normalize(std::string* text) const override { *text = DropMarks(*text, /*all_marks=*/true); }
};

// BERT's cleaning (drop NUL, U+FFFD and control characters, map whitespace to ' '), spaces around
// CJK ideographs, accent stripping (NFD, drop Mn) and lower-casing, in that order.
class BertNormalizer : public Normalizer {
 public:
  BertNormalizer(bool clean_text, bool chinese, bool strip_accents, bool lowercase)
      : clean_text_(clean_text),
        chinese_(chinese),
        strip_accents_(strip_accents),
        lowercase_(lowercase) {}

  void Normalize(std::string* text) const override {
    if (clean_text_ || chinese_) {
      std::string out;
      out.reserve(text->size() + 16);
      size_t pos = 0;
      while (pos < text->size()) {
        size_t start = pos;
        char32_t c = NextCodePoint(*text, &pos);
        if (clean_text_) {
          bool ws = c == '\t' || c == '\n' || c == '\r';
          if (!ws && (c == 0 || c == 0xFFFD || IsOther(c))) continue;
          if (ws || IsWhitespace(c)) {
            out.push_back(' ');
            continue;
          }
        }
        if (chinese_ && IsCjkIdeograph(c)) {
          out.push_back(' ');
          out.append(*text, start, pos - start);
          out.push_back(' ');
          continue;
        }
        out.append(*text, start, pos - start);
      }
      *text = std::move(out);
    }
    if (strip_accents_)
      *text = DropMarks(tok::Normalize(*text, NormalForm::kNfd), /*all_marks=*/false);
    if (lowercase_) *text = Lowercase(*text);
  }

 private:
  bool clean_text_, chinese_, strip_accents_, lowercase_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::shared_ptr<const Regex> regex, std::string content)
      : regex_(std::move(regex)), content_(std::move(content)) {}
  void Normalize(std::string* text) const override { *text = regex_->ReplaceAll(*text, content_); }

 private:
  std::shared_ptr<const Regex> regex_;
  std::string content_;
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void Normalize(std::string* text) const override {
    size_t b = 0, e = text->size();
    if (left_) {
      while (b < e) {
        size_t p = b;
        if (!IsWhitespace(NextCodePoint(*text, &p))) break;
        b = p;
      }
    }
    if (right_) {
      while (e > b) {
        size_t s = e - 1;
        while (s > b && (static_cast<unsigned char>((*text)[s]) & 0xC0) == 0x80) --s;
        size_t p = s;
        if (!IsWhitespace(NextCodePoint(*text, &p))) break;
        e = s;
      }
    }
    *text = text->substr(b, e - b);
  }

 private:
  bool left_, right_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  void Normalize(std::string* text) const override {
    for (const auto& p : parts_) p->Normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace

// The `pattern` of Replace / Split: {"String": s} (literal) or {"Regex": r}.
absl::StatusOr<std::shared_ptr<const Regex>> PatternFromJson(const Json& j, std::string_view path) {
  if (j.is_object() && j.contains("String") && j["String"].is_string()) {
    return Regex::Literal(j["String"].get<std::string>());
  }
  if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
    auto regex = Regex::Compile(j["Regex"].get<std::string>());
    if (!regex.ok()) return JsonFieldError(path, std::string(regex.status().message()));
    return regex;
  }
  return JsonFieldError(path, "expected {\"String\": ...} or {\"Regex\": ...}");
}

absl::StatusOr<std::unique_ptr<Normalizer>> NormalizerFromJson(const Json& j,
                                                               std::string_view path) {
  ASSIGN_OR_RETURN(std::string type, JsonString(j, "type", path));
  if (type == "NFC") return std::make_unique<FormNormalizer>(NormalForm::kNfc);
  if (type == "NFD") return std::make_unique<FormNormalizer>(NormalForm::kNfd);
  if (type == "NFKC") return std::make_unique<FormNormalizer>(NormalForm::kNfkc);
  if (type == "NFKD") return std::make_unique<FormNormalizer>(NormalForm::kNfkd);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (type == "BertNormalizer") {
    ASSIGN_OR_RETURN(bool clean, JsonBoolOr(j, "clean_text", path, true));
    ASSIGN_OR_RETURN(bool chinese, JsonBoolOr(j, "handle_chinese_chars", path, true));
    ASSIGN_OR_RETURN(bool lower, JsonBoolOr(j, "lowercase", path, true));
    // strip_accents: null means "follow lowercase", as in BERT's original tokenizer.
    ASSIGN_OR_RETURN(bool strip, JsonBoolOr(j, "strip_accents", path, lower));
    return std::make_unique<BertNormalizer>(clean, chinese, strip, lower);
  }
  if (type == "Prepend") {
    ASSIGN_OR_RETURN(std::string prefix, JsonString(j, "prepend", path));
    return std::make_unique<PrependNormalizer>(std::move(prefix));
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(const Json* pattern, JsonMember(j, "pattern", path));
    ASSIGN_OR_RETURN(auto regex, PatternFromJson(*pattern, JsonPath(path, "pattern")));
    ASSIGN_OR_RETURN(std::string content, JsonString(j, "content", path));
    return std::make_unique<ReplaceNormalizer>(std::move(regex), std::move(content));
  }
  if (type == "Strip") {
    ASSIGN_OR_RETURN(bool left, JsonBoolOr(j, "strip_left", path, true));
    ASSIGN_OR_RETURN(bool right, JsonBoolOr(j, "strip_right", path, true));
    return std::make_unique<StripNormalizer>(left, right);
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const Json* list, JsonMember(j, "normalizers", path));
    if (!list->is_array())
      return JsonFieldError(JsonPath(path, "normalizers"), "expected an array");
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(auto part,
                       NormalizerFromJson((*list)[i], Cat(path, ".normalizers[", i, "]")));
      parts.push_back(std::move(part));
    }
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  return JsonFieldError(JsonPath(path, "type"),
                        Cat("normalizer type \"", type,
                            "\" is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, "
                            "StripAccents, BertNormalizer, Prepend, Replace, Strip, Sequence)"));
}

}  // namespace tpserve::tok
