#include "common/tokenizer/pre_tokenizer.h"

#include <functional>
#include <utility>

#include "common/base/status_macros.h"
#include "common/tokenizer/normalizer.h"
#include "common/tokenizer/regex.h"
#include "common/tokenizer/unicode.h"

namespace tpserve::tok {
namespace {

using Ranges = std::vector<std::pair<size_t, size_t>>;

// What happens to the delimiter matches when a piece is split (SplitDelimiterBehavior).
enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

absl::StatusOr<Behavior> BehaviorFromJson(const Json& j, std::string_view path) {
  ASSIGN_OR_RETURN(std::string b, JsonString(j, "behavior", path));
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  return JsonFieldError(JsonPath(path, "behavior"), Cat("unknown behavior \"", b, "\""));
}

// Splits `piece` around `matches` (sorted, non-overlapping byte ranges) the way
// NormalizedString::split does, appending the non-empty parts to `out`.
void SplitAround(const Piece& piece, const Ranges& matches, bool invert, Behavior behavior,
                 std::vector<Piece>* out) {
  struct Seg {
    size_t b, e;
    bool is_match;
  };
  std::vector<Seg> segs;
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev != b) segs.push_back({prev, b, invert});
    segs.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != piece.text.size()) segs.push_back({prev, piece.text.size(), invert});

  std::vector<std::pair<size_t, size_t>> parts;
  switch (behavior) {
    case Behavior::kRemoved:
      for (const auto& s : segs)
        if (!s.is_match) parts.emplace_back(s.b, s.e);
      break;
    case Behavior::kIsolated:
      for (const auto& s : segs) parts.emplace_back(s.b, s.e);
      break;
    case Behavior::kContiguous: {
      bool previous_match = false;
      for (const auto& s : segs) {
        if (s.is_match == previous_match && !parts.empty()) {
          parts.back().second = s.e;
        } else {
          parts.emplace_back(s.b, s.e);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& s : segs) {
        if (s.is_match && !previous_match && !parts.empty()) {
          parts.back().second = s.e;
        } else {
          parts.emplace_back(s.b, s.e);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool next_match = false;
      for (size_t i = segs.size(); i-- > 0;) {
        const auto& s = segs[i];
        if (s.is_match && !next_match && !parts.empty()) {
          parts.back().first = s.b;
        } else {
          parts.emplace_back(s.b, s.e);
        }
        next_match = s.is_match;
      }
      std::reverse(parts.begin(), parts.end());
      break;
    }
  }
  for (auto [b, e] : parts) {
    if (b == e) continue;
    out->push_back(Piece{piece.text.substr(b, e - b), piece.offset + b});
  }
}

// Each character for which `pred` holds is one match.
Ranges CharMatches(std::string_view s, const std::function<bool(char32_t)>& pred) {
  Ranges r;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t start = pos;
    if (pred(NextCodePoint(s, &pos))) r.emplace_back(start, pos);
  }
  return r;
}

// Applies `split` to every piece in place.
template <typename F>
void ForEachPiece(std::vector<Piece>* pieces, F&& split) {
  std::vector<Piece> out;
  out.reserve(pieces->size() * 2);
  for (const Piece& p : *pieces) split(p, &out);
  *pieces = std::move(out);
}

bool IsBertPunctuation(char32_t c) {
  if (c < 0x80)
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
           (c >= 123 && c <= 126);
  return IsPunctuation(c);
}

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::shared_ptr<const Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    Ranges matches;
    ForEachPiece(pieces, [&](const Piece& p, std::vector<Piece>* out) {
      Piece q = p;
      if (add_prefix_space_ && (q.text.empty() || q.text[0] != ' ')) q.text.insert(0, " ");
      if (regex_ == nullptr) {
        out->push_back(std::move(q));
        return;
      }
      matches.clear();
      regex_->FindAll(q.text, &matches);
      SplitAround(q, matches, false, Behavior::kIsolated, out);
    });
    for (Piece& p : *pieces) p.text = ByteLevelEncode(p.text);
  }

 private:
  bool add_prefix_space_;
  std::shared_ptr<const Regex> regex_;  // null when use_regex is false
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::shared_ptr<const Regex> regex, Behavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    Ranges matches;
    ForEachPiece(pieces, [&](const Piece& p, std::vector<Piece>* out) {
      matches.clear();
      regex_->FindAll(p.text, &matches);
      SplitAround(p, matches, invert_, behavior_, out);
    });
  }

 private:
  std::shared_ptr<const Regex> regex_;
  Behavior behavior_;
  bool invert_;
};

// Splits on characters of a class (whitespace, punctuation, digits).
class CharClassPreTokenizer : public PreTokenizer {
 public:
  CharClassPreTokenizer(std::function<bool(char32_t)> pred, Behavior behavior)
      : pred_(std::move(pred)), behavior_(behavior) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    ForEachPiece(pieces, [&](const Piece& p, std::vector<Piece>* out) {
      SplitAround(p, CharMatches(p.text, pred_), false, behavior_, out);
    });
  }

 private:
  std::function<bool(char32_t)> pred_;
  Behavior behavior_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    ForEachPiece(pieces, [&](const Piece& p, std::vector<Piece>* out) {
      Piece q{std::string(), p.offset};
      q.text.reserve(p.text.size() + 8);
      for (char c : p.text) {
        if (c == ' ') {
          q.text += replacement_;
        } else {
          q.text.push_back(c);
        }
      }
      bool starts = q.text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (scheme_ == PrependScheme::kAlways ||
                      (scheme_ == PrependScheme::kFirst && p.offset == 0))) {
        q.text.insert(0, replacement_);
      }
      if (!split_) {
        out->push_back(std::move(q));
        return;
      }
      Ranges matches;
      for (size_t at = q.text.find(replacement_); at != std::string::npos;
           at = q.text.find(replacement_, at + replacement_.size())) {
        matches.emplace_back(at, at + replacement_.size());
      }
      SplitAround(q, matches, false, Behavior::kMergedWithNext, out);
    });
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    for (const auto& p : parts_) p->PreTokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

}  // namespace

std::string ByteLevelEncode(std::string_view s) {
  const auto& table = ByteToUnicode();
  std::string out;
  out.reserve(s.size() * 2);
  for (unsigned char b : s) AppendUtf8(table[b], &out);
  return out;
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizerFromJson(const Json& j,
                                                                   std::string_view path) {
  ASSIGN_OR_RETURN(std::string type, JsonString(j, "type", path));
  if (type == "ByteLevel") {
    ASSIGN_OR_RETURN(bool prefix, JsonBoolOr(j, "add_prefix_space", path, true));
    ASSIGN_OR_RETURN(bool use_regex, JsonBoolOr(j, "use_regex", path, true));
    std::shared_ptr<const Regex> regex;
    if (use_regex) {
      ASSIGN_OR_RETURN(regex, Regex::Compile(kGpt2Pattern));
    }
    return std::make_unique<ByteLevelPreTokenizer>(prefix, std::move(regex));
  }
  if (type == "Split") {
    ASSIGN_OR_RETURN(const Json* pattern, JsonMember(j, "pattern", path));
    ASSIGN_OR_RETURN(auto regex, PatternFromJson(*pattern, JsonPath(path, "pattern")));
    ASSIGN_OR_RETURN(Behavior behavior, BehaviorFromJson(j, path));
    ASSIGN_OR_RETURN(bool invert, JsonBoolOr(j, "invert", path, false));
    return std::make_unique<SplitPreTokenizer>(std::move(regex), behavior, invert);
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(std::string replacement, JsonStringOr(j, "replacement", path, "\u2581"));
    if (replacement.empty()) return JsonFieldError(JsonPath(path, "replacement"), "empty");
    ASSIGN_OR_RETURN(bool split, JsonBoolOr(j, "split", path, true));
    // Older files carry add_prefix_space instead of prepend_scheme.
    ASSIGN_OR_RETURN(bool legacy_prefix, JsonBoolOr(j, "add_prefix_space", path, true));
    ASSIGN_OR_RETURN(std::string scheme_name,
                     JsonStringOr(j, "prepend_scheme", path, legacy_prefix ? "always" : "never"));
    PrependScheme scheme;
    if (scheme_name == "always") {
      scheme = PrependScheme::kAlways;
    } else if (scheme_name == "first") {
      scheme = PrependScheme::kFirst;
    } else if (scheme_name == "never") {
      scheme = PrependScheme::kNever;
    } else {
      return JsonFieldError(JsonPath(path, "prepend_scheme"),
                            Cat("unknown scheme \"", scheme_name, "\""));
    }
    return std::make_unique<MetaspacePreTokenizer>(std::move(replacement), scheme, split);
  }
  if (type == "BertPreTokenizer") {
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    parts.push_back(std::make_unique<CharClassPreTokenizer>(IsWhitespace, Behavior::kRemoved));
    parts.push_back(
        std::make_unique<CharClassPreTokenizer>(IsBertPunctuation, Behavior::kIsolated));
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  if (type == "WhitespaceSplit") {
    return std::make_unique<CharClassPreTokenizer>(IsWhitespace, Behavior::kRemoved);
  }
  if (type == "Whitespace") {
    ASSIGN_OR_RETURN(auto regex, Regex::Compile(R"(\w+|[^\w\s]+)"));
    return std::make_unique<SplitPreTokenizer>(std::move(regex), Behavior::kRemoved, true);
  }
  if (type == "Digits") {
    ASSIGN_OR_RETURN(bool individual, JsonBoolOr(j, "individual_digits", path, false));
    return std::make_unique<CharClassPreTokenizer>(
        IsDigit, individual ? Behavior::kIsolated : Behavior::kContiguous);
  }
  if (type == "Punctuation") {
    Behavior behavior = Behavior::kIsolated;
    if (j.contains("behavior")) {
      ASSIGN_OR_RETURN(behavior, BehaviorFromJson(j, path));
    }
    return std::make_unique<CharClassPreTokenizer>(IsBertPunctuation, behavior);
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const Json* list, JsonMember(j, "pretokenizers", path));
    if (!list->is_array())
      return JsonFieldError(JsonPath(path, "pretokenizers"), "expected an array");
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(auto part,
                       PreTokenizerFromJson((*list)[i], Cat(path, ".pretokenizers[", i, "]")));
      parts.push_back(std::move(part));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  return JsonFieldError(
      JsonPath(path, "type"),
      Cat("pre-tokenizer type \"", type,
          "\" is not supported (supported: ByteLevel, Split, Metaspace, BertPreTokenizer, "
          "Whitespace, WhitespaceSplit, Digits, Punctuation, Sequence)"));
}

}  // namespace tpserve::tok
