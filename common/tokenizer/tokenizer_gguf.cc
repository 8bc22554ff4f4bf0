// Loading the tokenizer embedded in a GGUF file (tokenizer.ggml.*). The pipeline is rebuilt as the
// tokenizer.json that `transformers` derives from the same metadata (integrations/gguf), so both
// agree id for id:
//   gpt2  -> byte-level BPE; the split regex follows tokenizer.ggml.pre where transformers knows it
//            (llama-bpe, qwen2, ...), else GPT-2's ByteLevel regex;
//   llama -> SentencePiece-style BPE with byte fallback (Llama-2 layout), merges from the file or
//            recovered from the scores;
//   bert  -> WordPiece (llama.cpp stores "▁word" for word starts and "piece" for "##piece").
// Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain added
// tokens.
#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "common/base/status_macros.h"
#include "common/format/gguf.h"
#include "common/tokenizer/pipeline.h"
#include "common/tokenizer/str_util.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/tokenizer_builder.h"
#include "common/tokenizer/unicode.h"

namespace tpserve {
namespace {

using tok::Json;

constexpr int kTokenTypeUnknown = 2;
constexpr int kTokenTypeControl = 3;
constexpr int kTokenTypeUserDefined = 4;

constexpr const char* kLlama3Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// tokenizer.ggml.pre values that transformers maps to a split regex (others keep GPT-2's).
const char* SplitForPre(std::string_view pre) {
  static const std::pair<std::string_view, const char*> kTable[] = {
      {"llama3", kLlama3Split},    {"llama-v3", kLlama3Split},  {"llama-bpe", kLlama3Split},
      {"falcon3", kLlama3Split},   {"falcon-h1", kLlama3Split}, {"pixtral", kLlama3Split},
      {"midm-2.0", kLlama3Split},  {"lfm2", kLlama3Split},      {"dbrx", kLlama3Split},
      {"smaug-bpe", kLlama3Split}, {"qwen2", kQwen2Split},      {"deepseek-r1-qwen", kQwen2Split},
      {"megrez", kQwen2Split}};
  for (auto [name, split] : kTable)
    if (name == pre) return split;
  return nullptr;
}

bool InByteAlphabet(std::string_view token) {
  size_t pos = 0;
  while (pos < token.size()) {
    if (tok::UnicodeToByte(tok::NextCodePoint(token, &pos)) < 0) return false;
  }
  return true;
}

std::string OptionalString(const GgufFile& g, std::string_view key) {
  auto v = g.GetString(key);
  return v.ok() ? *v : std::string();
}

std::optional<int32_t> OptionalId(const GgufFile& g, std::string_view key) {
  auto v = g.GetInt(key);
  if (!v.ok()) return std::nullopt;
  return static_cast<int32_t>(*v);
}

bool OptionalBool(const GgufFile& g, std::string_view key, bool fallback) {
  auto v = g.GetBool(key);
  return v.ok() ? *v : fallback;
}

Json AddedTokenJson(const std::string& content, int32_t id, bool special) {
  return Json{{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
              {"rstrip", false}, {"normalized", false}, {"special", special}};
}

// SentencePiece merges recovered from the vocabulary, as transformers' generate_merges does: for
// each token (file order) every split into two tokens that are both in the vocabulary, ordered by
// the parts' ids; then all of them stably sorted by (score of the merged token, length of the left
// part, length of the right part), descending. Lengths count characters.
Json MergesFromScores(const std::vector<std::string>& tokens, const std::vector<float>& scores,
                      const absl::flat_hash_map<std::string, int32_t>& vocab) {
  struct M {
    float score;
    size_t left_chars, right_chars;
    int32_t left_id, right_id;
    std::string left, right;
  };
  auto chars = [](std::string_view s) {
    size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
  };
  absl::flat_hash_map<std::string, float> score_of;  // the last score given to a token wins
  for (size_t i = 0; i < tokens.size(); ++i)
    score_of[tokens[i]] = i < scores.size() ? scores[i] : 0.f;
  absl::flat_hash_map<std::string, bool> seen;
  std::vector<M> merges;
  for (const std::string& t : tokens) {
    if (!seen.emplace(t, true).second) continue;
    std::vector<M> local;
    for (size_t cut = 1; cut < t.size(); ++cut) {
      if ((static_cast<unsigned char>(t[cut]) & 0xC0) == 0x80) continue;
      auto l = vocab.find(t.substr(0, cut));
      auto r = vocab.find(t.substr(cut));
      if (l != vocab.end() && r != vocab.end()) {
        local.push_back(M{score_of[t], chars(l->first), chars(r->first), l->second, r->second,
                          l->first, r->first});
      }
    }
    std::stable_sort(local.begin(), local.end(), [](const M& a, const M& b) {
      return a.left_id != b.left_id ? a.left_id < b.left_id : a.right_id < b.right_id;
    });
    for (M& m : local) merges.push_back(std::move(m));
  }
  std::stable_sort(merges.begin(), merges.end(), [](const M& a, const M& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.left_chars != b.left_chars) return a.left_chars > b.left_chars;
    return a.right_chars > b.right_chars;
  });
  Json out = Json::array();
  for (const M& m : merges) out.push_back(Json::array({m.left, m.right}));
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& gguf) {
  ASSIGN_OR_RETURN(std::string model_type, gguf.GetString("tokenizer.ggml.model"));
  ASSIGN_OR_RETURN(std::vector<std::string> tokens, gguf.GetStringArray("tokenizer.ggml.tokens"));
  std::vector<int64_t> types;
  if (gguf.FindMeta("tokenizer.ggml.token_type") != nullptr) {
    ASSIGN_OR_RETURN(types, gguf.GetIntArray("tokenizer.ggml.token_type"));
  }
  std::vector<std::string> merges;
  if (gguf.FindMeta("tokenizer.ggml.merges") != nullptr) {
    ASSIGN_OR_RETURN(merges, gguf.GetStringArray("tokenizer.ggml.merges"));
  }
  const std::string pre = OptionalString(gguf, "tokenizer.ggml.pre");
  const std::string where = tok::Cat(gguf.path(), ": ");

  Json j;
  Json vocab = Json::object();
  std::vector<std::string> spelled = tokens;  // the token strings as the vocabulary holds them
  if (model_type == "gpt2") {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (!InByteAlphabet(tokens[i])) spelled[i] = tok::ByteLevelEncode(tokens[i]);
      vocab[spelled[i]] = static_cast<int32_t>(i);
    }
  } else if (model_type == "llama") {
    for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = static_cast<int32_t>(i);
  } else if (model_type == "bert") {
    for (size_t i = 0; i < tokens.size(); ++i) {
      const std::string& t = tokens[i];
      if (t.size() >= 2 && t.front() == '[' && t.back() == ']') {
        spelled[i] = t;
      } else if (t.rfind("\u2581", 0) == 0) {
        spelled[i] = t.substr(3);
      } else {
        spelled[i] = "##" + t;
      }
      vocab[spelled[i]] = static_cast<int32_t>(i);
    }
  } else {
    return absl::InvalidArgumentError(
        tok::Cat(where, "tokenizer.ggml.model \"", model_type,
                 "\" is not supported (supported: gpt2, llama, bert)"));
  }
  absl::flat_hash_map<std::string, int32_t> vocab_map;
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    vocab_map[it.key()] = it.value().get<int32_t>();

  Json merges_json = Json::array();
  for (const std::string& m : merges) {
    size_t sp = m.find(' ');
    if (sp == std::string::npos) {
      return absl::InvalidArgumentError(
          tok::Cat(where, "tokenizer.ggml.merges entry \"", m, "\" is not \"left right\""));
    }
    merges_json.push_back(Json::array({m.substr(0, sp), m.substr(sp + 1)}));
  }

  std::optional<int32_t> bos = OptionalId(gguf, "tokenizer.ggml.bos_token_id");
  std::optional<int32_t> eos = OptionalId(gguf, "tokenizer.ggml.eos_token_id");
  std::optional<int32_t> unk = OptionalId(gguf, "tokenizer.ggml.unknown_token_id");
  auto token_at = [&](std::optional<int32_t> id) -> std::string {
    return id && *id >= 0 && static_cast<size_t>(*id) < tokens.size() ? tokens[*id] : std::string();
  };
  bool add_bos = OptionalBool(gguf, "tokenizer.ggml.add_bos_token", model_type == "llama");
  bool add_eos = OptionalBool(gguf, "tokenizer.ggml.add_eos_token", false);

  Json added = Json::array();
  if (model_type == "gpt2") {
    j["normalizer"] = nullptr;
    Json byte_level = {{"type", "ByteLevel"},
                       {"add_prefix_space", false},
                       {"trim_offsets", true},
                       {"use_regex", true}};
    if (const char* split = SplitForPre(pre)) {
      byte_level["use_regex"] = false;
      j["pre_tokenizer"] = {{"type", "Sequence"},
                            {"pretokenizers", Json::array({{{"type", "Split"},
                                                            {"pattern", {{"Regex", split}}},
                                                            {"behavior", "Isolated"},
                                                            {"invert", false}},
                                                           byte_level})}};
    } else {
      j["pre_tokenizer"] = byte_level;
    }
    j["model"] = {
        {"type", "BPE"}, {"vocab", vocab}, {"merges", merges_json}, {"ignore_merges", false}};
    j["decoder"] = {{"type", "ByteLevel"}};
  } else if (model_type == "llama") {
    if (merges_json.empty()) {
      std::vector<float> scores;
      if (gguf.FindMeta("tokenizer.ggml.scores") != nullptr) {
        ASSIGN_OR_RETURN(scores, gguf.GetFloatArray("tokenizer.ggml.scores"));
      }
      merges_json = MergesFromScores(tokens, scores, vocab_map);
    }
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = {{"type", "Metaspace"},
                          {"replacement", "\u2581"},
                          {"prepend_scheme", "first"},
                          {"split", false}};
    j["model"] = {{"type", "BPE"},
                  {"vocab", vocab},
                  {"merges", merges_json},
                  {"byte_fallback", true},
                  {"fuse_unk", true}};
    // No unk_token in the model, as transformers builds it: byte fallback covers every character.
    j["decoder"] = {
        {"type", "Sequence"},
        {"decoders",
         Json::array({{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  } else {  // bert
    j["normalizer"] = {{"type", "BertNormalizer"},
                       {"clean_text", true},
                       {"handle_chinese_chars", true},
                       {"strip_accents", nullptr},
                       {"lowercase", true}};
    j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
    std::string unk_token = unk ? spelled[*unk] : "[UNK]";
    j["model"] = {{"type", "WordPiece"},
                  {"vocab", vocab},
                  {"unk_token", unk_token},
                  {"continuing_subword_prefix", "##"},
                  {"max_input_chars_per_word", 100}};
    j["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}};
    // [CLS] a [SEP] (b [SEP]); llama.cpp stores [CLS] as BOS and [SEP] as EOS / separator.
    std::optional<int32_t> sep = OptionalId(gguf, "tokenizer.ggml.seperator_token_id");
    if (!sep) sep = eos;
    if (bos && sep) {
      Json cls_item = {{"SpecialToken", {{"id", spelled[*bos]}, {"type_id", 0}}}};
      Json sep_item = {{"SpecialToken", {{"id", spelled[*sep]}, {"type_id", 0}}}};
      Json a = {{"Sequence", {{"id", "A"}, {"type_id", 0}}}};
      Json b = {{"Sequence", {{"id", "B"}, {"type_id", 1}}}};
      j["post_processor"] = {
          {"type", "TemplateProcessing"},
          {"single", Json::array({cls_item, a, sep_item})},
          {"pair", Json::array({cls_item, a, sep_item, b, sep_item})},
          {"special_tokens",
           {{spelled[*bos], {{"id", spelled[*bos]}, {"ids", {*bos}}, {"tokens", {spelled[*bos]}}}},
            {spelled[*sep],
             {{"id", spelled[*sep]}, {"ids", {*sep}}, {"tokens", {spelled[*sep]}}}}}}};
    }
  }
  if (model_type != "bert" && (add_bos || add_eos)) {
    // transformers' update_post_processor: "<bos> $A <eos>" and "<bos> $A <eos> <bos> $B <eos>".
    Json single = Json::array(), pair = Json::array();
    Json specials = Json::object();
    auto special_item = [&](int32_t id) {
      const std::string& t = spelled[id];
      specials[t] = {{"id", t}, {"ids", {id}}, {"tokens", {t}}};
      return Json{{"SpecialToken", {{"id", t}, {"type_id", 0}}}};
    };
    auto valid = [&](std::optional<int32_t> id) {
      return id && *id >= 0 && static_cast<size_t>(*id) < tokens.size();
    };
    for (const char* seq : {"A", "B"}) {
      Json& items = std::string_view(seq) == "A" ? single : pair;
      if (add_bos && valid(bos)) items.push_back(special_item(*bos));
      items.push_back({{"Sequence", {{"id", seq}, {"type_id", 0}}}});
      if (add_eos && valid(eos)) items.push_back(special_item(*eos));
    }
    Json pair_all = single;
    for (const Json& item : pair) pair_all.push_back(item);
    j["post_processor"] = {{"type", "TemplateProcessing"},
                           {"single", single},
                           {"pair", pair_all},
                           {"special_tokens", specials}};
  }
  for (size_t i = 0; i < tokens.size() && i < types.size(); ++i) {
    // transformers also registers the unknown token as special (it is the tokenizer's unk_token).
    bool control =
        types[i] == kTokenTypeControl || (model_type == "llama" && types[i] == kTokenTypeUnknown);
    if (control && (model_type != "gpt2" || InByteAlphabet(tokens[i]))) {
      added.push_back(AddedTokenJson(spelled[i], vocab_map.at(spelled[i]), true));
    } else if (types[i] == kTokenTypeUserDefined) {
      added.push_back(AddedTokenJson(spelled[i], vocab_map.at(spelled[i]), false));
    }
  }
  j["added_tokens"] = added;

  auto pipeline = tok::PipelineFromJson(j);
  if (!pipeline.ok()) {
    return absl::Status(pipeline.status().code(), tok::Cat(where, pipeline.status().message()));
  }
  SpecialTokenInfo info;
  info.chat_template = OptionalString(gguf, "tokenizer.chat_template");
  if (bos) info.bos_id = *bos;
  if (eos) info.eos_ids.push_back(*eos);
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    if (auto id = OptionalId(gguf, key)) info.eos_ids.push_back(*id);
  }
  if (eos) info.eos_token = token_at(eos);
  return TokenizerBuilder::Make(std::move(*pipeline), info);
}

}  // namespace tpserve
