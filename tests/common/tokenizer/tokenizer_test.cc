// Pairs, special-token metadata, bad input (invalid UTF-8, unknown ids, malformed tokenizer.json)
// and the streaming detokenizer's hold-back behaviour.
#include "common/tokenizer/tokenizer.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_format.h"
#include "common/format/gguf.h"
#include "common/tokenizer/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/tokenizer/golden_test_util.h"

namespace tpserve {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

std::string Golden(const std::string& name) {
  return std::string(testing::kGoldenDir) + "/" + name;
}

std::vector<std::string> Corpus() {
  std::vector<std::string> out;
  std::ifstream in(Golden("corpus.jsonl"));
  for (std::string line; std::getline(in, line);)
    out.push_back(Json::parse(line).get<std::string>());
  return out;
}

std::unique_ptr<Tokenizer> LoadFolder(const std::string& name) {
  auto tok = Tokenizer::FromHfFolder(Golden(name));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

void CheckPairs(const Tokenizer& tok, const std::string& golden) {
  auto corpus = Corpus();
  int n = 0, mismatches = 0;
  for (const std::string& line : testing::ReadLines(Golden(golden))) {
    ++n;
    Json g = Json::parse(line);
    auto ids = tok.EncodePair(corpus[g["a"].get<size_t>()], corpus[g["b"].get<size_t>()]);
    ASSERT_TRUE(ids.ok()) << ids.status();
    if (*ids != g["ids"].get<std::vector<int32_t>>()) ++mismatches;
  }
  EXPECT_EQ(n, 300);
  EXPECT_EQ(mismatches, 0);
}

TEST(TokenizerPairs, BertPairsMatchReference) {
  std::string path = testing::ModelsDir() + "/all-MiniLM-L6-v2/tokenizer.json";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not found";
  auto tok = Tokenizer::FromTokenizerJson(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  CheckPairs(**tok, "minilm_pairs.jsonl.gz");
}

TEST(TokenizerPairs, TemplatePairsMatchReference) {
  auto tok = LoadFolder("llama3_bpe");
  ASSERT_NE(tok, nullptr);
  CheckPairs(*tok, "llama3_bpe_pairs.jsonl.gz");
}

TEST(TokenizerPairs, RobertaPairsMatchReference) {
  auto tok = LoadFolder("gpt2_prefix");
  ASSERT_NE(tok, nullptr);
  CheckPairs(*tok, "gpt2_prefix_pairs.jsonl.gz");
}

TEST(TokenizerMetadata, HfFolderGivesBosEosFromTokenizerConfig) {
  auto tok = LoadFolder("llama3_bpe");
  ASSERT_NE(tok, nullptr);
  std::ifstream in(Golden("llama3_bpe/tokenizer_config.json"));
  Json cfg = Json::parse(in);
  EXPECT_EQ(tok->bos_token(), cfg["bos_token"].get<std::string>());
  EXPECT_EQ(tok->eos_token(), cfg["eos_token"].get<std::string>());
  ASSERT_GE(tok->bos_id(), 0);
  EXPECT_EQ(*tok->IdToToken(tok->bos_id()), tok->bos_token());
  ASSERT_EQ(tok->eos_ids().size(), 1u);
  EXPECT_EQ(*tok->IdToToken(tok->eos_ids()[0]), tok->eos_token());
  EXPECT_TRUE(tok->IsSpecial(tok->bos_id()));
  EXPECT_TRUE(tok->chat_template().empty());
  // The template processor puts BOS first.
  auto ids = tok->Encode("hello");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->front(), tok->bos_id());
}

// A folder as transformers 5 saves it (chat_template.jinja beside tokenizer_config.json) plus a
// generation_config.json with two EOS ids; expectations are what transformers reports for it.
TEST(TokenizerMetadata, TransformersFolderGivesChatTemplateAndEosIds) {
  auto tok = LoadFolder("qwen2_hf");
  ASSERT_NE(tok, nullptr);
  std::ifstream in(Golden("qwen2_hf_meta.json"));
  Json meta = Json::parse(in);
  EXPECT_EQ(tok->chat_template(), meta["chat_template"].get<std::string>());
  EXPECT_EQ(tok->eos_token(), meta["eos_token"].get<std::string>());
  EXPECT_EQ(tok->eos_ids(), meta["eos_ids"].get<std::vector<int32_t>>());
  ASSERT_TRUE(meta["bos_token"].is_null());
  EXPECT_EQ(tok->bos_id(), -1);
  EXPECT_EQ(tok->bos_token(), "");
  // Same tokenizer.json as qwen2_bpe: same ids.
  auto entries = testing::LoadGolden("qwen2_bpe");
  ASSERT_GT(entries.size(), 100u);
  for (size_t i = 0; i < 100; ++i) EXPECT_EQ(*tok->Encode(entries[i].text), entries[i].ids);
}

TEST(TokenizerMetadata, GgufGivesBosEosAndChatTemplate) {
  std::string path = testing::ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not found";
  auto gguf = GgufFile::Open(path);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  auto tok = Tokenizer::FromGguf(**gguf);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->bos_id(), *(*gguf)->GetInt("tokenizer.ggml.bos_token_id"));
  ASSERT_FALSE((*tok)->eos_ids().empty());
  EXPECT_EQ((*tok)->eos_ids()[0], *(*gguf)->GetInt("tokenizer.ggml.eos_token_id"));
  auto tokens = *(*gguf)->GetStringArray("tokenizer.ggml.tokens");
  EXPECT_EQ((*tok)->bos_token(), tokens[(*tok)->bos_id()]);
  EXPECT_EQ((*tok)->eos_token(), tokens[(*tok)->eos_ids()[0]]);
  EXPECT_EQ((*tok)->chat_template(), *(*gguf)->GetString("tokenizer.chat_template"));
  EXPECT_EQ((*tok)->vocab_size(), static_cast<int32_t>(tokens.size()));
  for (int32_t id : {0, 1, 2, 100, 9906, 49151}) {
    auto t = (*tok)->IdToToken(id);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ((*tok)->TokenToId(*t), id);
  }
}

// Invalid UTF-8 is replaced like Python's errors="replace" (goldens from the reference script),
// for every tokenizer kind, and never fails.
TEST(TokenizerBadInput, InvalidUtf8IsReplaced) {
  std::vector<std::unique_ptr<Tokenizer>> toks;
  for (const char* name : {"gpt2_bpe", "llama3_bpe", "qwen2_bpe", "sp_bpe", "sp_bpe_metaspace"}) {
    toks.push_back(LoadFolder(name));
    ASSERT_NE(toks.back(), nullptr);
  }
  std::ifstream in(Golden("invalid_utf8.jsonl"));
  int n = 0;
  for (std::string line; std::getline(in, line); ++n) {
    Json g = Json::parse(line);
    std::string hex = g["hex"].get<std::string>(), raw;
    for (size_t i = 0; i + 1 < hex.size(); i += 2)
      raw.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    std::string want = g["text"].get<std::string>();
    EXPECT_EQ(tok::SanitizeUtf8(raw), want) << hex;
    for (const auto& t : toks) {
      auto a = t->Encode(raw);
      auto b = t->Encode(want);
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_EQ(*a, *b) << hex;
    }
  }
  EXPECT_GE(n, 10);
}

TEST(TokenizerBadInput, UnknownIdsAreClearErrors) {
  auto tok = LoadFolder("sp_bpe");
  ASSERT_NE(tok, nullptr);
  for (int32_t bad : {tok->vocab_size(), -1, 1 << 30}) {
    std::vector<int32_t> ids = {5, bad};
    auto dec = tok->Decode(ids);
    ASSERT_FALSE(dec.ok());
    EXPECT_EQ(dec.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(dec.status().message()), HasSubstr("token id " + std::to_string(bad)));
    EXPECT_FALSE(tok->IdToToken(bad).ok());
    IncrementalDetokenizer inc(*tok);
    EXPECT_FALSE(inc.Push(bad).ok());
  }
}

struct Malformed {
  const char* json;
  const char* names;  // the error must name this field
};

TEST(TokenizerBadInput, MalformedTokenizerJsonNamesTheField) {
  const Malformed cases[] = {
      {"{not json", "not valid JSON"},
      {R"({"added_tokens": []})", "`model`"},
      {R"({"model": {"type": "BPE", "vocab": [1, 2], "merges": []}})", "`model.vocab`"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}})",
       "`model.merges[0]`"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []}})", "`model.vocab"},
      {R"({"model": {"type": "Unigram", "vocab": []}})", "`model.type`"},
      {R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})", "`model.unk_token`"},
      {R"({"normalizer": {"type": "Precompiled"}, "model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}})",
       "`normalizer.type`"},
      {R"({"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": 3}]},
           "model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}})",
       "`normalizer.normalizers[0].prepend`"},
      {R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"},
           "model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}})",
       "`pre_tokenizer.pattern`"},
      {R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways"},
           "model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}})",
       "`pre_tokenizer.behavior`"},
      {R"({"post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "[CLS]"}}]},
           "model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}})",
       "`post_processor.single[0]`"},
      {R"({"decoder": {"type": "CTC"}, "model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}})",
       "`decoder.type`"},
      {R"({"added_tokens": [{"id": 1}], "model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}})",
       "`added_tokens[0].content`"},
  };
  for (const Malformed& c : cases) {
    auto tok = Tokenizer::FromTokenizerJsonText(c.json, "test.json");
    ASSERT_FALSE(tok.ok()) << c.json;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(tok.status().message()), HasSubstr(c.names)) << c.json;
    EXPECT_THAT(std::string(tok.status().message()), HasSubstr("test.json")) << c.json;
  }
  EXPECT_EQ(Tokenizer::FromTokenizerJson("/nonexistent/tokenizer.json").status().code(),
            absl::StatusCode::kNotFound);
}

// Byte-level BPE without a normalizer is lossless: Decode(Encode(x)) == x, here on large and
// adversarial inputs (megabyte runs of one letter, of spaces, of newlines, random code points,
// special-token strings back to back), which must also finish quickly and not crash.
TEST(TokenizerBadInput, LargeInputsRoundTrip) {
  auto tok = LoadFolder("llama3_bpe");
  ASSERT_NE(tok, nullptr);
  std::mt19937 rng(1);
  std::string random;
  while (random.size() < (1 << 20)) {
    char32_t cp = rng() % 0x30000;
    if (cp >= 0xD800 && cp < 0xE000) continue;
    tok::AppendUtf8(cp, &random);
  }
  std::string specials;
  while (specials.size() < (1 << 18)) specials += "<|eot_id|><|begin_of_text|> <|eot_id";
  const std::string inputs[] = {std::string(1 << 20, 'a'), std::string(1 << 20, ' '),
                                std::string(1 << 18, '\n'), tok::SanitizeUtf8(random), specials};
  for (const std::string& text : inputs) {
    auto ids = tok->Encode(text, /*add_special_tokens=*/false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    auto back = tok->Decode(*ids);
    ASSERT_TRUE(back.ok());
    EXPECT_TRUE(*back == text) << "round trip differs for an input of " << text.size() << " bytes";
  }
}

// Encode is const and shared between request threads; the BPE cache must not corrupt results.
TEST(TokenizerThreads, ConcurrentEncodeMatchesReference) {
  auto tok = LoadFolder("qwen2_bpe");
  ASSERT_NE(tok, nullptr);
  auto entries = testing::LoadGolden("qwen2_bpe");
  ASSERT_GT(entries.size(), 1000u);
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = t; i < entries.size(); i += 2) {  // overlapping halves
        auto ids = tok->Encode(entries[i].text);
        if (!ids.ok() || *ids != entries[i].ids) ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// A character split across byte-fallback tokens is held back until it is complete.
TEST(IncrementalDetokenizer, HoldsBackPartialCharacters) {
  auto tok = LoadFolder("sp_bpe");
  ASSERT_NE(tok, nullptr);
  auto ids = tok->Encode("x 𓀀 y", /*add_special_tokens=*/false);  // U+13000: 4 byte tokens
  ASSERT_TRUE(ids.ok());
  std::vector<int32_t> byte_ids;
  for (int b : {0xF0, 0x93, 0x80, 0x80})
    byte_ids.push_back(*tok->TokenToId(absl::StrFormat("<0x%02X>", b)));
  auto at = std::search(ids->begin(), ids->end(), byte_ids.begin(), byte_ids.end());
  ASSERT_NE(at, ids->end()) << "expected the character as byte-fallback tokens";
  IncrementalDetokenizer inc(*tok);
  std::string all;
  for (size_t i = 0; i < ids->size(); ++i) {
    auto delta = inc.Push((*ids)[i]);
    ASSERT_TRUE(delta.ok());
    size_t k = i - (at - ids->begin());
    if (k < 3) {
      EXPECT_EQ(*delta, "") << "byte " << k << " of the character";
    } else if (k == 3) {
      EXPECT_THAT(*delta, HasSubstr("𓀀"));
    }
    all += *delta;
  }
  all += inc.Flush();
  EXPECT_EQ(all, *tok->Decode(*ids));
}

}  // namespace
}  // namespace tpserve
