// Parity with Hugging Face `tokenizers` / `transformers` on the committed corpus (3k+ entries:
// prose, Chinese, Japanese, code, emoji/ZWJ, whitespace runs, digits, special-token strings, empty
// strings), for every tokenizer kind: encode ids, decode text with and without special tokens, and
// the streaming detokenizer's concatenated output.
#include <filesystem>
#include <memory>

#include "common/format/gguf.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/unicode.h"
#include "gtest/gtest.h"
#include "tests/common/tokenizer/golden_test_util.h"

namespace tpserve {
namespace {

using testing::GoldenEntry;

struct Kind {
  const char* name;    // test name
  const char* golden;  // <golden>.jsonl
  enum { kFolder, kJsonInModels, kGguf } source;
  const char* path;  // folder under the golden dir, or file under TPSERVE_MODELS
};

std::string PrintKind(const ::testing::TestParamInfo<Kind>& info) { return info.param.name; }
void PrintTo(const Kind& k, std::ostream* os) { *os << k.name; }

class TokenizerParityTest : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    const Kind& k = GetParam();
    std::string path;
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok;
    switch (k.source) {
      case Kind::kFolder:
        tok = Tokenizer::FromHfFolder(std::string(testing::kGoldenDir) + "/" + k.path);
        break;
      case Kind::kJsonInModels:
        path = testing::ModelsDir() + "/" + k.path;
        if (!std::filesystem::exists(path))
          GTEST_SKIP() << path << " not found (scripts/fetch-models.sh)";
        tok = Tokenizer::FromTokenizerJson(path);
        break;
      case Kind::kGguf: {
        path = std::string(k.path).find('/') == std::string::npos
                   ? testing::ModelsDir() + "/" + k.path
                   : std::string(testing::kGoldenDir) + "/" + (k.path + 1);  // "/x.gguf": committed
        if (!std::filesystem::exists(path))
          GTEST_SKIP() << path << " not found (scripts/fetch-models.sh)";
        auto gguf = GgufFile::Open(path);
        ASSERT_TRUE(gguf.ok()) << gguf.status();
        tok = Tokenizer::FromGguf(**gguf);
        break;
      }
    }
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = std::move(*tok);
    entries_ = testing::LoadGolden(k.golden);
    ASSERT_GT(entries_.size(), 3000u) << "golden files for " << k.name << " missing or short";
  }

  std::unique_ptr<Tokenizer> tok_;
  std::vector<GoldenEntry> entries_;
};

using tok::IsValidUtf8;

std::string Ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += std::to_string(id) + " ";
  return s;
}

TEST_P(TokenizerParityTest, EncodeMatchesReference) {
  int mismatches = 0;
  for (size_t i = 0; i < entries_.size(); ++i) {
    const GoldenEntry& e = entries_[i];
    auto ids = tok_->Encode(e.text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    if (*ids != e.ids && ++mismatches <= 5) {
      ADD_FAILURE() << "entry " << i << " \"" << e.text << "\"\n  got:  " << Ids(*ids)
                    << "\n  want: " << Ids(e.ids);
    }
    if (e.ns) {
      auto ns = tok_->Encode(e.text, /*add_special_tokens=*/false);
      ASSERT_TRUE(ns.ok());
      if (*ns != *e.ns && ++mismatches <= 5) {
        ADD_FAILURE() << "entry " << i << " (no special tokens)\n  got:  " << Ids(*ns)
                      << "\n  want: " << Ids(*e.ns);
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << entries_.size() << " entries";
}

TEST_P(TokenizerParityTest, DecodeMatchesReference) {
  int mismatches = 0;
  for (size_t i = 0; i < entries_.size(); ++i) {
    const GoldenEntry& e = entries_[i];
    if (e.dec) {
      auto dec = tok_->Decode(e.ids);
      ASSERT_TRUE(dec.ok()) << dec.status();
      if (*dec != *e.dec && ++mismatches <= 5) {
        ADD_FAILURE() << "entry " << i << "\n  got:  \"" << *dec << "\"\n  want: \"" << *e.dec
                      << "\"";
      }
    }
    auto skip = tok_->Decode(e.ids, /*skip_special_tokens=*/true);
    ASSERT_TRUE(skip.ok()) << skip.status();
    if (*skip != e.skip && ++mismatches <= 5) {
      ADD_FAILURE() << "entry " << i << " (skip special)\n  got:  \"" << *skip << "\"\n  want: \""
                    << e.skip << "\"";
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << entries_.size() << " entries";
}

// Streaming: the deltas never split a UTF-8 character and concatenate to the one-shot decode.
TEST_P(TokenizerParityTest, IncrementalDetokenizerMatchesDecode) {
  int mismatches = 0;
  for (bool skip : {false, true}) {
    for (size_t i = 0; i < entries_.size(); ++i) {
      const GoldenEntry& e = entries_[i];
      IncrementalDetokenizer inc(*tok_, skip);
      std::string all;
      for (int32_t id : e.ids) {
        auto delta = inc.Push(id);
        ASSERT_TRUE(delta.ok()) << delta.status();
        ASSERT_TRUE(IsValidUtf8(*delta)) << "entry " << i << ": a delta splits a character";
        all += *delta;
      }
      all += inc.Flush();
      auto want = tok_->Decode(e.ids, skip);
      ASSERT_TRUE(want.ok());
      if (all != *want && ++mismatches <= 5) {
        ADD_FAILURE() << "entry " << i << " skip=" << skip << "\n  got:  \"" << all
                      << "\"\n  want: \"" << *want << "\"";
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, TokenizerParityTest,
    ::testing::Values(
        Kind{"gpt2_bpe", "gpt2_bpe", Kind::kFolder, "gpt2_bpe"},
        Kind{"llama3_bpe", "llama3_bpe", Kind::kFolder, "llama3_bpe"},
        Kind{"qwen2_bpe", "qwen2_bpe", Kind::kFolder, "qwen2_bpe"},
        Kind{"sp_bpe", "sp_bpe", Kind::kFolder, "sp_bpe"},
        Kind{"sp_bpe_metaspace", "sp_bpe_metaspace", Kind::kFolder, "sp_bpe_metaspace"},
        Kind{"gpt2_prefix", "gpt2_prefix", Kind::kFolder, "gpt2_prefix"},
        Kind{"wordpiece_misc", "wordpiece_misc", Kind::kFolder, "wordpiece_misc"},
        Kind{"bpe_misc", "bpe_misc", Kind::kFolder, "bpe_misc"},
        Kind{"minilm", "minilm", Kind::kJsonInModels, "all-MiniLM-L6-v2/tokenizer.json"},
        Kind{"smollm2_gguf", "smollm2_gguf", Kind::kGguf, "SmolLM2-135M-Instruct.Q4_1.gguf"},
        // llama.cpp SentencePiece layout (merges recovered from scores) vs transformers.
        Kind{"sp_bpe_gguf", "sp_bpe_gguf", Kind::kGguf, "/sp_bpe.gguf"},
        // llama.cpp BERT layout of all-MiniLM's vocabulary vs the original tokenizer.json.
        Kind{"minilm_bert_gguf", "minilm", Kind::kGguf, "/minilm_bert.gguf"}),
    PrintKind);

}  // namespace
}  // namespace tpserve
