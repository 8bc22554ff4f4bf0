#include "common/tokenizer/added_vocabulary.h"

#include <algorithm>
#include <cstring>

#include "common/tokenizer/normalizer.h"
#include "common/tokenizer/str_util.h"
#include "common/tokenizer/unicode.h"

namespace tpserve::tok {
namespace {

// Decodes the code point that ends at s[end).
char32_t PrevCodePoint(std::string_view s, size_t end, size_t* start) {
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  *start = b;
  size_t p = b;
  return NextCodePoint(s, &p);
}

}  // namespace

void AddedVocabulary::Add(AddedToken token) {
  max_id_ = std::max(max_id_, token.id);
  auto it = by_content_.find(token.content);
  if (it != by_content_.end()) {
    by_id_.erase(tokens_[it->second].id);
    tokens_[it->second] = std::move(token);
    by_id_[tokens_[it->second].id] = it->second;
    return;
  }
  int32_t index = static_cast<int32_t>(tokens_.size());
  by_content_.emplace(token.content, index);
  by_id_[token.id] = index;
  tokens_.push_back(std::move(token));
}

void AddedVocabulary::Matcher::Build() {
  for (auto& v : by_first_byte) v.clear();
  std::vector<int32_t> order(patterns.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return patterns[a].first.size() > patterns[b].first.size();
  });
  for (int32_t i : order) {
    if (patterns[i].first.empty()) continue;
    by_first_byte[static_cast<unsigned char>(patterns[i].first[0])].push_back(i);
  }
}

void AddedVocabulary::Build(const Normalizer* normalizer) {
  raw_.patterns.clear();
  normalized_.patterns.clear();
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    if (t.normalized && normalizer != nullptr) {
      std::string content = t.content;
      normalizer->Normalize(&content);
      normalized_.patterns.emplace_back(std::move(content), static_cast<int32_t>(i));
    } else if (t.normalized) {
      normalized_.patterns.emplace_back(t.content, static_cast<int32_t>(i));
    } else {
      raw_.patterns.emplace_back(t.content, static_cast<int32_t>(i));
    }
  }
  raw_.Build();
  normalized_.Build();
}

void AddedVocabulary::Split(std::string_view text, bool normalized_pass,
                            std::vector<Segment>* out) const {
  const Matcher& m = normalized_pass ? normalized_ : raw_;
  size_t last = 0;  // end of the previous match (start of pending text)
  size_t pos = 0;
  while (pos < text.size()) {
    const auto& candidates = m.by_first_byte[static_cast<unsigned char>(text[pos])];
    int32_t hit = -1;
    for (int32_t c : candidates) {  // longest first
      const std::string& p = m.patterns[c].first;
      if (p.size() <= text.size() - pos &&
          std::memcmp(text.data() + pos, p.data(), p.size()) == 0) {
        hit = c;
        break;
      }
    }
    if (hit < 0) {
      ++pos;
      continue;
    }
    const AddedToken& tok = tokens_[m.patterns[hit].second];
    size_t start = pos, stop = pos + m.patterns[hit].first.size();
    if (tok.single_word) {
      size_t unused;
      bool left_ok = start == 0 || !IsWordChar(PrevCodePoint(text, start, &unused));
      size_t p = stop;
      bool right_ok = stop == text.size() || !IsWordChar(NextCodePoint(text, &p));
      if (!left_ok || !right_ok) {
        pos = stop;  // `tokenizers` drops the match; its scan resumes after it (non-overlapping)
        continue;
      }
    }
    if (tok.lstrip) {
      size_t s = start;
      while (s > last) {
        size_t b;
        if (!IsWhitespace(PrevCodePoint(text, s, &b))) break;
        s = b;
      }
      start = s;
    }
    if (tok.rstrip) {
      while (stop < text.size()) {
        size_t p = stop;
        if (!IsWhitespace(NextCodePoint(text, &p))) break;
        stop = p;
      }
    }
    if (last < start) out->push_back(Segment{text.substr(last, start - last), last, -1});
    out->push_back(Segment{text.substr(start, stop - start), start, tok.id});
    last = pos = stop;
  }
  if (last < text.size()) out->push_back(Segment{text.substr(last), last, -1});
}

const AddedToken* AddedVocabulary::FindById(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::FindByContent(std::string_view content) const {
  auto it = by_content_.find(AbslView(content));
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

}  // namespace tpserve::tok
