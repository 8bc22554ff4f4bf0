// The real SmolLM2-135M-Instruct.Q4_1.gguf against values gguf-py read from it (smollm2.json).
#include <chrono>
#include <filesystem>

#include "common/format/gguf.h"
#include "common/format/model_config.h"
#include "gtest/gtest.h"
#include "tests/common/format/format_test_util.h"

namespace tpserve {
namespace {

using testing::Golden;
using testing::ModelsDir;
using testing::ReadJson;

class SmolLM2Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (!std::filesystem::exists(path)) return;
    auto f = GgufFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    file_ = f->release();
  }
  static void TearDownTestSuite() {
    delete file_;
    file_ = nullptr;
  }
  void SetUp() override {
    if (file_ == nullptr) GTEST_SKIP() << "SmolLM2 GGUF not found under " << ModelsDir();
    golden_ = ReadJson(Golden("smollm2.json"));
  }

  // Dequantised rows [r0, r1) of a tensor, read through ViewSlice.
  std::vector<float> Rows(const std::string& name, int64_t r0, int64_t r1, int64_t c0 = 0,
                          int64_t c1 = -1) {
    auto t = file_->Get(name);
    EXPECT_TRUE(t.ok()) << t.status();
    auto v = ViewSlice(**t, {r0, r1, c0, c1});
    EXPECT_TRUE(v.ok()) << v.status();
    auto out = ViewToFloat(*v);
    EXPECT_TRUE(out.ok()) << out.status();
    return *out;
  }

  static GgufFile* file_;
  nlohmann::json golden_;
};
GgufFile* SmolLM2Test::file_ = nullptr;

TEST_F(SmolLM2Test, HeaderAndMetadata) {
  EXPECT_EQ(file_->version(), golden_["version"].get<uint32_t>());
  EXPECT_EQ(file_->tensors().size(), golden_["tensor_count"].get<size_t>());
  EXPECT_EQ(file_->MetaKeys().size(), golden_["kv_count"].get<size_t>());
  for (const auto& [key, want] : golden_["meta"].items()) {
    SCOPED_TRACE(key);
    if (want.is_string()) {
      EXPECT_EQ(*file_->GetString(key), want.get<std::string>());
    } else if (want.is_boolean()) {
      EXPECT_EQ(*file_->GetBool(key), want.get<bool>());
    } else if (want.is_number_integer()) {
      EXPECT_EQ(*file_->GetInt(key), want.get<int64_t>());
    } else {
      EXPECT_EQ(*file_->GetFloat(key), want.get<double>());
    }
  }
}

TEST_F(SmolLM2Test, TokenizerArrays) {
  auto tokens = file_->GetStringArray("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(tokens->size(), golden_["num_tokens"].get<size_t>());
  const auto head = golden_["tokens_head"].get<std::vector<std::string>>();
  EXPECT_EQ(std::vector<std::string>(tokens->begin(), tokens->begin() + head.size()), head);
  auto types = file_->GetIntArray("tokenizer.ggml.token_type");
  ASSERT_TRUE(types.ok()) << types.status();
  const auto types_head = golden_["token_types_head"].get<std::vector<int64_t>>();
  EXPECT_EQ(std::vector<int64_t>(types->begin(), types->begin() + types_head.size()), types_head);
  auto merges = file_->GetStringArray("tokenizer.ggml.merges");
  ASSERT_TRUE(merges.ok()) << merges.status();
  const auto merges_head = golden_["merges_head"].get<std::vector<std::string>>();
  EXPECT_EQ(std::vector<std::string>(merges->begin(), merges->begin() + merges_head.size()),
            merges_head);
}

TEST_F(SmolLM2Test, TensorDirectory) {
  for (const auto& want : golden_["tensors"]) {
    auto t = file_->Get(want["name"].get<std::string>());
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_STREQ(DTypeName((*t)->dtype), want["type"].get<std::string>().c_str());
    EXPECT_EQ((*t)->shape, want["shape"].get<std::vector<int64_t>>()) << (*t)->name;
    EXPECT_TRUE(CheckShape(**t, want["shape"].get<std::vector<int64_t>>()).ok());
  }
  EXPECT_EQ(file_->Find("output.weight") != nullptr, golden_["has_output_weight"].get<bool>());
}

TEST_F(SmolLM2Test, DequantisedRowsMatchGgufPy) {
  const auto& rows = golden_["rows"];
  EXPECT_EQ(Rows("blk.0.attn_q.weight", 0, 1),
            rows["blk.0.attn_q.weight[0]"].get<std::vector<float>>());  // Q4_1
  EXPECT_EQ(Rows("blk.0.attn_q.weight", 100, 101),
            rows["blk.0.attn_q.weight[100]"].get<std::vector<float>>());
  EXPECT_EQ(Rows("token_embd.weight", 0, 1),
            rows["token_embd.weight[0]"].get<std::vector<float>>());  // Q8_0
  EXPECT_EQ(Rows("token_embd.weight", 49151, -1),
            rows["token_embd.weight[49151]"].get<std::vector<float>>());
  EXPECT_EQ(Rows("blk.0.attn_norm.weight", 0, -1),
            rows["blk.0.attn_norm.weight"].get<std::vector<float>>());  // F32
}

TEST_F(SmolLM2Test, ColumnSliceOfQuantisedRow) {
  // Columns [64, 192) of row 100: blocks 2..5 of the Q4_1 row (a TP rank's input-dim slice).
  const auto full = golden_["rows"]["blk.0.attn_q.weight[100]"].get<std::vector<float>>();
  EXPECT_EQ(Rows("blk.0.attn_q.weight", 100, 101, 64, 192),
            std::vector<float>(full.begin() + 64, full.begin() + 192));
}

TEST_F(SmolLM2Test, ModelConfig) {
  auto c = ModelConfigFromGguf(*file_);
  ASSERT_TRUE(c.ok()) << c.status();
  const auto& m = golden_["meta"];
  EXPECT_EQ(c->architecture, m["general.architecture"].get<std::string>());
  EXPECT_EQ(c->num_layers, m["llama.block_count"].get<int64_t>());
  EXPECT_EQ(c->hidden_size, m["llama.embedding_length"].get<int64_t>());
  EXPECT_EQ(c->intermediate_size, m["llama.feed_forward_length"].get<int64_t>());
  EXPECT_EQ(c->num_heads, m["llama.attention.head_count"].get<int64_t>());
  EXPECT_EQ(c->num_kv_heads, m["llama.attention.head_count_kv"].get<int64_t>());
  EXPECT_EQ(c->head_dim, m["llama.rope.dimension_count"].get<int64_t>());
  EXPECT_EQ(c->max_position, m["llama.context_length"].get<int64_t>());
  EXPECT_EQ(c->vocab_size, m["llama.vocab_size"].get<int64_t>());
  EXPECT_EQ(c->rope_theta, m["llama.rope.freq_base"].get<float>());
  EXPECT_EQ(c->rms_norm_eps, m["llama.attention.layer_norm_rms_epsilon"].get<float>());
  EXPECT_EQ(c->bos_token_id, m["tokenizer.ggml.bos_token_id"].get<int64_t>());
  EXPECT_EQ(c->eos_token_ids,
            std::vector<int64_t>{m["tokenizer.ggml.eos_token_id"].get<int64_t>()});
  EXPECT_EQ(c->tie_word_embeddings, !golden_["has_output_weight"].get<bool>());
  EXPECT_EQ(c->attention_bias, golden_["has_attn_q_bias"].get<bool>());
  EXPECT_TRUE(c->rope_interleaved);  // llama GGUF: q/k permuted for NORM RoPE
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_EQ(c->rope_freqs_tensor, "");  // SmolLM2 has no Llama 3 RoPE scaling
  EXPECT_TRUE(ValidateConfig(*c).ok()) << ValidateConfig(*c);
}

}  // namespace
}  // namespace tpserve
