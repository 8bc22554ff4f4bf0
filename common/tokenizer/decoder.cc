#include "common/tokenizer/decoder.h"

#include "common/base/status_macros.h"
#include "common/tokenizer/normalizer.h"
#include "common/tokenizer/regex.h"
#include "common/tokenizer/unicode.h"

namespace tpserve::tok {
namespace {

// Joins all tokens, maps GPT-2's alphabet back to bytes and decodes them lossily. A token with a
// character outside the alphabet (an added token such as "<|日本|>") contributes its raw bytes.
class ByteLevelDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string bytes;
    for (const std::string& t : *tokens) {
      size_t mark = bytes.size();
      size_t pos = 0;
      bool ok = true;
      while (pos < t.size()) {
        int b = UnicodeToByte(NextCodePoint(t, &pos));
        if (b < 0) {
          ok = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      if (!ok) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens->assign(1, SanitizeUtf8(bytes));
  }
};

// Runs of <0xXX> tokens become the bytes they name; a run that is not valid UTF-8 becomes one
// U+FFFD per byte.
class ByteFallbackDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string run;
    size_t run_len = 0;
    auto flush = [&] {
      if (run_len == 0) return;
      if (IsValidUtf8(run)) {
        out.push_back(run);
      } else {
        for (size_t i = 0; i < run_len; ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      run.clear();
      run_len = 0;
    };
    for (std::string& t : *tokens) {
      int byte = ParseByteToken(t);
      if (byte >= 0) {
        run.push_back(static_cast<char>(byte));
        ++run_len;
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    *tokens = std::move(out);
  }

  static int ParseByteToken(std::string_view t) {
    if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
};

class FuseDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string all;
    for (const auto& t : *tokens) all += t;
    tokens->assign(1, std::move(all));
  }
};

// Removes up to `start` leading and `stop` trailing copies of `content` from each token.
class StripDecoder : public Decoder {
 public:
  StripDecoder(std::string content, int start, int stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& t : *tokens) {
      size_t b = 0, e = t.size();
      for (int i = 0;
           i < start_ && e - b >= content_.size() && t.compare(b, content_.size(), content_) == 0;
           ++i)
        b += content_.size();
      for (int i = 0; i < stop_ && e - b >= content_.size() &&
                      t.compare(e - content_.size(), content_.size(), content_) == 0;
           ++i)
        e -= content_.size();
      t = t.substr(b, e - b);
    }
  }

 private:
  std::string content_;
  int start_, stop_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(std::shared_ptr<const Regex> regex, std::string content)
      : regex_(std::move(regex)), content_(std::move(content)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& t : *tokens) t = regex_->ReplaceAll(t, content_);
  }

 private:
  std::shared_ptr<const Regex> regex_;
  std::string content_;
};

// Turns the replacement character back into spaces; in the first token (when a space was
// prepended at encode time) the replacement characters are dropped instead.
class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool prepend)
      : replacement_(std::move(replacement)), prepend_(prepend) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& t = (*tokens)[i];
      std::string out;
      out.reserve(t.size());
      size_t pos = 0;
      while (pos < t.size()) {
        if (t.compare(pos, replacement_.size(), replacement_) == 0) {
          if (!(i == 0 && prepend_)) out.push_back(' ');
          pos += replacement_.size();
        } else {
          out.push_back(t[pos++]);
        }
      }
      t = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool prepend_;
};

void ReplaceAllLiteral(std::string* s, std::string_view from, std::string_view to) {
  size_t pos = 0;
  while ((pos = s->find(from, pos)) != std::string::npos) {
    s->replace(pos, from.size(), to);
    pos += to.size();
  }
}

// BERT's detokenization: "##" joins sub-words, other tokens get a leading space, and the clean-up
// rules of `tokenizers` remove spaces before punctuation and inside English contractions.
class WordPieceDecoder : public Decoder {
 public:
  WordPieceDecoder(std::string prefix, bool cleanup)
      : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& t = (*tokens)[i];
      if (i != 0) {
        if (!prefix_.empty() && t.compare(0, prefix_.size(), prefix_) == 0) {
          t.erase(0, prefix_.size());
        } else {
          t.insert(0, " ");
        }
      }
      if (cleanup_) Cleanup(&t);
    }
  }
  static void Cleanup(std::string* t) {
    static constexpr std::pair<std::string_view, std::string_view> kRules[] = {
        {" .", "."},   {" ?", "?"},     {" !", "!"},    {" ,", ","},
        {" ' ", "'"},  {" n't", "n't"}, {" 'm", "'m"},  {" do not", " don't"},
        {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (auto [from, to] : kRules) ReplaceAllLiteral(t, from, to);
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

// BPE with an end-of-word suffix: the suffix becomes a space, except in the last token.
class BpeSuffixDecoder : public Decoder {
 public:
  explicit BpeSuffixDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      ReplaceAllLiteral(&(*tokens)[i], suffix_, i + 1 == tokens->size() ? "" : " ");
    }
  }

 private:
  std::string suffix_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts)
      : parts_(std::move(parts)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (const auto& p : parts_) p->DecodeChain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> DecoderFromJson(const Json& j, std::string_view path) {
  ASSIGN_OR_RETURN(std::string type, JsonString(j, "type", path));
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    ASSIGN_OR_RETURN(std::string content, JsonString(j, "content", path));
    ASSIGN_OR_RETURN(int64_t start, JsonIntOr(j, "start", path, 0));
    ASSIGN_OR_RETURN(int64_t stop, JsonIntOr(j, "stop", path, 0));
    return std::make_unique<StripDecoder>(std::move(content), static_cast<int>(start),
                                          static_cast<int>(stop));
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(const Json* pattern, JsonMember(j, "pattern", path));
    ASSIGN_OR_RETURN(auto regex, PatternFromJson(*pattern, JsonPath(path, "pattern")));
    ASSIGN_OR_RETURN(std::string content, JsonString(j, "content", path));
    return std::make_unique<ReplaceDecoder>(std::move(regex), std::move(content));
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(std::string replacement, JsonStringOr(j, "replacement", path, "\u2581"));
    if (replacement.empty()) return JsonFieldError(JsonPath(path, "replacement"), "empty");
    ASSIGN_OR_RETURN(bool legacy_prefix, JsonBoolOr(j, "add_prefix_space", path, true));
    ASSIGN_OR_RETURN(std::string scheme,
                     JsonStringOr(j, "prepend_scheme", path, legacy_prefix ? "always" : "never"));
    return std::make_unique<MetaspaceDecoder>(std::move(replacement), scheme != "never");
  }
  if (type == "WordPiece") {
    ASSIGN_OR_RETURN(std::string prefix, JsonStringOr(j, "prefix", path, "##"));
    ASSIGN_OR_RETURN(bool cleanup, JsonBoolOr(j, "cleanup", path, true));
    return std::make_unique<WordPieceDecoder>(std::move(prefix), cleanup);
  }
  if (type == "BPEDecoder") {
    ASSIGN_OR_RETURN(std::string suffix, JsonStringOr(j, "suffix", path, "</w>"));
    if (suffix.empty()) return JsonFieldError(JsonPath(path, "suffix"), "empty");
    return std::make_unique<BpeSuffixDecoder>(std::move(suffix));
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const Json* list, JsonMember(j, "decoders", path));
    if (!list->is_array()) return JsonFieldError(JsonPath(path, "decoders"), "expected an array");
    std::vector<std::unique_ptr<Decoder>> parts;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(auto part, DecoderFromJson((*list)[i], Cat(path, ".decoders[", i, "]")));
      parts.push_back(std::move(part));
    }
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  return JsonFieldError(JsonPath(path, "type"),
                        Cat("decoder type \"", type,
                            "\" is not supported (supported: ByteLevel, ByteFallback, Fuse, "
                            "Strip, Replace, Metaspace, WordPiece, BPEDecoder, Sequence)"));
}

}  // namespace tpserve::tok
