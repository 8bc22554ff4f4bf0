#include "common/tokenizer/model.h"

#include <queue>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/base/status_macros.h"
#include "common/tokenizer/model_vocab.h"
#include "common/tokenizer/unicode.h"

namespace tpserve::tok {

absl::StatusOr<Vocab> Vocab::FromJson(const Json& j, std::string_view path) {
  if (!j.is_object()) return JsonFieldError(path, "expected an object {token: id}");
  Vocab v;
  v.ids_.reserve(j.size());
  int64_t max_id = -1;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > INT32_MAX) {
      return JsonFieldError(Cat(path, "[\"", it.key(), "\"]"), "expected a non-negative 32-bit id");
    }
    max_id = std::max(max_id, it.value().get<int64_t>());
  }
  v.tokens_.resize(max_id + 1);
  v.present_.resize(max_id + 1, false);
  for (auto it = j.begin(); it != j.end(); ++it) {
    auto id = static_cast<int32_t>(it.value().get<int64_t>());
    if (v.present_[id]) {
      return JsonFieldError(Cat(path, "[\"", it.key(), "\"]"),
                            Cat("id ", id, " is also used by \"", v.tokens_[id], "\""));
    }
    v.present_[id] = true;
    v.tokens_[id] = it.key();
    v.ids_.emplace(it.key(), id);
  }
  return v;
}

namespace {

// Byte-pair encoding: starts from characters (or <0xXX> byte tokens, or <unk>) and applies the
// lowest-ranked merge first, leftmost on ties, exactly as `tokenizers` does.
class BpeModel : public Model {
 public:
  struct Options {
    std::optional<std::string> unk_token;
    std::string continuing_subword_prefix;
    std::string end_of_word_suffix;
    bool fuse_unk = false;
    bool byte_fallback = false;
    bool ignore_merges = false;
  };

  BpeModel(Vocab vocab, absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merges,
           Options options, std::optional<int32_t> unk_id)
      : vocab_(std::move(vocab)),
        merges_(std::move(merges)),
        options_(std::move(options)),
        unk_id_(unk_id) {
    if (options_.byte_fallback) {
      for (int b = 0; b < 256; ++b) {
        auto id = vocab_.Find(absl::StrFormat("<0x%02X>", b));
        byte_ids_[b] = id.value_or(-1);
      }
    }
  }

  void Tokenize(std::string_view piece, std::vector<int32_t>* out) const override {
    if (options_.ignore_merges) {
      if (auto id = vocab_.Find(piece)) {
        out->push_back(*id);
        return;
      }
    }
    constexpr size_t kMaxCachedLen = 256;
    if (piece.size() <= kMaxCachedLen) {
      absl::ReaderMutexLock lock(&cache_mu_);
      auto it = cache_.find(AbslView(piece));
      if (it != cache_.end()) {
        out->insert(out->end(), it->second.begin(), it->second.end());
        return;
      }
    }
    size_t first = out->size();
    Merge(piece, out);
    if (piece.size() <= kMaxCachedLen) {
      absl::MutexLock lock(&cache_mu_);
      if (cache_.size() > 200000) cache_.clear();  // bounds memory on adversarial input
      cache_.emplace(std::string(piece), std::vector<int32_t>(out->begin() + first, out->end()));
    }
  }

  std::optional<int32_t> TokenToId(std::string_view token) const override {
    return vocab_.Find(token);
  }
  const std::string* IdToToken(int32_t id) const override { return vocab_.Token(id); }
  int32_t vocab_size() const override { return vocab_.size(); }

 private:
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // indices in the symbol array, -1 at the ends
    bool alive;
  };
  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator<(const Candidate& o) const {  // std::priority_queue pops the largest
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };

  const std::pair<int32_t, int32_t>* FindMerge(int32_t a, int32_t b) const {
    auto it = merges_.find((static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) |
                           static_cast<uint32_t>(b));
    return it == merges_.end() ? nullptr : &it->second;
  }

  // Initial symbols: one per character, with byte fallback or <unk> for characters not in vocab.
  void InitialSymbols(std::string_view w, std::vector<Symbol>* syms) const {
    int32_t pending_unk = -1;  // an <unk> not yet added (it may fuse with the next one)
    auto add = [&](int32_t id) {
      syms->push_back(Symbol{id, static_cast<int32_t>(syms->size()) - 1, -1, true});
    };
    std::string buf;
    size_t pos = 0;
    while (pos < w.size()) {
      size_t start = pos;
      pos += Utf8SeqLen(static_cast<unsigned char>(w[pos]));
      if (pos > w.size()) pos = w.size();
      std::string_view ch = w.substr(start, pos - start);
      std::optional<int32_t> id;
      if (options_.continuing_subword_prefix.empty() && options_.end_of_word_suffix.empty()) {
        id = vocab_.Find(ch);
      } else {
        buf.clear();
        if (start != 0) buf += options_.continuing_subword_prefix;
        buf += ch;
        if (pos == w.size()) buf += options_.end_of_word_suffix;
        id = vocab_.Find(buf);
      }
      if (id) {
        if (pending_unk >= 0) add(pending_unk);
        pending_unk = -1;
        add(*id);
        continue;
      }
      if (options_.byte_fallback) {
        bool all = true;
        for (unsigned char b : ch) all &= byte_ids_[b] >= 0;
        if (all) {
          if (pending_unk >= 0) add(pending_unk);
          pending_unk = -1;
          for (unsigned char b : ch) add(byte_ids_[b]);
          continue;
        }
      }
      if (unk_id_) {
        if (pending_unk >= 0 && options_.fuse_unk) continue;
        if (pending_unk >= 0) add(pending_unk);
        pending_unk = *unk_id_;
      }
      // Without <unk> the character is dropped, as in `tokenizers`.
    }
    if (pending_unk >= 0) add(pending_unk);
  }

  void Merge(std::string_view w, std::vector<int32_t>* out) const {
    std::vector<Symbol> syms;
    syms.reserve(w.size());
    InitialSymbols(w, &syms);
    const int n = static_cast<int>(syms.size());
    if (n > 0) syms.back().next = -1;
    for (int i = 0; i + 1 < n; ++i) syms[i].next = i + 1;
    std::priority_queue<Candidate> queue;
    for (int i = 0; i + 1 < n; ++i) {
      if (auto* m = FindMerge(syms[i].id, syms[i + 1].id)) queue.push({m->first, i, m->second});
    }
    while (!queue.empty()) {
      Candidate top = queue.top();
      queue.pop();
      Symbol& left = syms[top.pos];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = syms[left.next];
      auto* m = FindMerge(left.id, right.id);
      if (m == nullptr || m->second != top.new_id) continue;  // stale candidate
      left.id = top.new_id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) syms[right.next].prev = top.pos;
      if (left.prev >= 0) {
        if (auto* p = FindMerge(syms[left.prev].id, left.id))
          queue.push({p->first, left.prev, p->second});
      }
      if (left.next >= 0) {
        if (auto* p = FindMerge(left.id, syms[left.next].id))
          queue.push({p->first, top.pos, p->second});
      }
    }
    for (int i = 0; i >= 0 && i < n; i = syms[i].next) out->push_back(syms[i].id);
  }

  Vocab vocab_;
  // (left id << 32 | right id) -> (rank, merged id)
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
  Options options_;
  std::optional<int32_t> unk_id_;
  int32_t byte_ids_[256];
  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

// WordPiece: greedy longest-match-first, with `##` on non-initial sub-words; a word that cannot be
// covered (or is longer than max_input_chars_per_word) becomes one [UNK].
class WordPieceModel : public Model {
 public:
  WordPieceModel(Vocab vocab, int32_t unk_id, std::string prefix, size_t max_chars)
      : vocab_(std::move(vocab)),
        unk_id_(unk_id),
        prefix_(std::move(prefix)),
        max_chars_(max_chars) {}

  void Tokenize(std::string_view word, std::vector<int32_t>* out) const override {
    size_t chars = 0;
    for (unsigned char c : word) chars += (c & 0xC0) != 0x80;
    if (chars > max_chars_) {
      out->push_back(unk_id_);
      return;
    }
    size_t first = out->size();
    std::string buf;
    size_t start = 0;
    while (start < word.size()) {
      size_t end = word.size();
      std::optional<int32_t> found;
      while (start < end) {
        std::string_view sub = word.substr(start, end - start);
        if (start > 0) {
          buf.assign(prefix_);
          buf.append(sub);
          found = vocab_.Find(buf);
        } else {
          found = vocab_.Find(sub);
        }
        if (found) break;
        do {
          --end;
        } while (end > start && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80);
      }
      if (!found) {
        out->resize(first);
        out->push_back(unk_id_);
        return;
      }
      out->push_back(*found);
      start = end;
    }
  }

  std::optional<int32_t> TokenToId(std::string_view token) const override {
    return vocab_.Find(token);
  }
  const std::string* IdToToken(int32_t id) const override { return vocab_.Token(id); }
  int32_t vocab_size() const override { return vocab_.size(); }

 private:
  Vocab vocab_;
  int32_t unk_id_;
  std::string prefix_;
  size_t max_chars_;
};

absl::StatusOr<std::unique_ptr<Model>> BpeFromJson(const Json& j, std::string_view path) {
  ASSIGN_OR_RETURN(const Json* vocab_json, JsonMember(j, "vocab", path));
  ASSIGN_OR_RETURN(Vocab vocab, Vocab::FromJson(*vocab_json, JsonPath(path, "vocab")));
  BpeModel::Options o;
  if (j.contains("unk_token") && !j["unk_token"].is_null()) {
    ASSIGN_OR_RETURN(o.unk_token, JsonString(j, "unk_token", path));
  }
  ASSIGN_OR_RETURN(o.continuing_subword_prefix,
                   JsonStringOr(j, "continuing_subword_prefix", path, ""));
  ASSIGN_OR_RETURN(o.end_of_word_suffix, JsonStringOr(j, "end_of_word_suffix", path, ""));
  ASSIGN_OR_RETURN(o.fuse_unk, JsonBoolOr(j, "fuse_unk", path, false));
  ASSIGN_OR_RETURN(o.byte_fallback, JsonBoolOr(j, "byte_fallback", path, false));
  ASSIGN_OR_RETURN(o.ignore_merges, JsonBoolOr(j, "ignore_merges", path, false));
  if (j.contains("dropout") && !j["dropout"].is_null() && j["dropout"].get<double>() > 0) {
    return JsonFieldError(JsonPath(path, "dropout"),
                          "BPE dropout is not supported (inference only)");
  }
  std::optional<int32_t> unk_id;
  if (o.unk_token) {
    unk_id = vocab.Find(*o.unk_token);
    if (!unk_id) {
      return JsonFieldError(JsonPath(path, "unk_token"),
                            Cat("\"", *o.unk_token, "\" is not in the vocabulary"));
    }
  }
  ASSIGN_OR_RETURN(const Json* merges_json, JsonMember(j, "merges", path));
  if (!merges_json->is_array())
    return JsonFieldError(JsonPath(path, "merges"), "expected an array");
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  merges.reserve(merges_json->size());
  const size_t prefix_len = o.continuing_subword_prefix.size();
  for (size_t rank = 0; rank < merges_json->size(); ++rank) {
    const Json& m = (*merges_json)[rank];
    std::string a, b;
    if (m.is_string()) {  // "a b"
      const auto& s = m.get_ref<const std::string&>();
      size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) {
        return JsonFieldError(Cat(path, ".merges[", rank, "]"), "expected \"left right\"");
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      return JsonFieldError(Cat(path, ".merges[", rank, "]"),
                            "expected \"left right\" or [left, right]");
    }
    auto ia = vocab.Find(a), ib = vocab.Find(b);
    // The merged token drops the continuing-subword prefix of the right part.
    std::string merged =
        a + (prefix_len > 0 && b.compare(0, prefix_len, o.continuing_subword_prefix) == 0
                 ? b.substr(prefix_len)
                 : b);
    auto im = vocab.Find(merged);
    if (!ia || !ib || !im) {
      return JsonFieldError(
          Cat(path, ".merges[", rank, "]"),
          Cat("merge \"", a, "\" + \"", b, "\" uses a token not in the vocabulary"));
    }
    uint64_t key =
        (static_cast<uint64_t>(static_cast<uint32_t>(*ia)) << 32) | static_cast<uint32_t>(*ib);
    merges.try_emplace(key, static_cast<int32_t>(rank), *im);
  }
  return std::make_unique<BpeModel>(std::move(vocab), std::move(merges), std::move(o), unk_id);
}

absl::StatusOr<std::unique_ptr<Model>> WordPieceFromJson(const Json& j, std::string_view path) {
  ASSIGN_OR_RETURN(const Json* vocab_json, JsonMember(j, "vocab", path));
  ASSIGN_OR_RETURN(Vocab vocab, Vocab::FromJson(*vocab_json, JsonPath(path, "vocab")));
  ASSIGN_OR_RETURN(std::string unk, JsonStringOr(j, "unk_token", path, "[UNK]"));
  ASSIGN_OR_RETURN(std::string prefix, JsonStringOr(j, "continuing_subword_prefix", path, "##"));
  ASSIGN_OR_RETURN(int64_t max_chars, JsonIntOr(j, "max_input_chars_per_word", path, 100));
  auto unk_id = vocab.Find(unk);
  if (!unk_id) {
    return JsonFieldError(JsonPath(path, "unk_token"),
                          Cat("\"", unk, "\" is not in the vocabulary"));
  }
  return std::make_unique<WordPieceModel>(std::move(vocab), *unk_id, std::move(prefix),
                                          static_cast<size_t>(std::max<int64_t>(0, max_chars)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> ModelFromJson(const Json& j, std::string_view path) {
  if (!j.is_object()) return JsonFieldError(path, "expected an object");
  std::string type;
  if (j.contains("type")) {
    ASSIGN_OR_RETURN(type, JsonString(j, "type", path));
  } else {
    type = j.contains("merges") ? "BPE" : "WordPiece";  // old files omit the type
  }
  if (type == "BPE") return BpeFromJson(j, path);
  if (type == "WordPiece") return WordPieceFromJson(j, path);
  return JsonFieldError(
      JsonPath(path, "type"),
      Cat("model type \"", type, "\" is not supported (supported: BPE, WordPiece)"));
}

}  // namespace tpserve::tok
