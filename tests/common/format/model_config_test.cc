// ParseHfConfig against what transformers' config classes read from the same config.json
// (hf_config/*/config.json, hf_configs.json); ValidateConfig and missing-field errors.
#include "common/format/model_config.h"

#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/format/format_test_util.h"

namespace tpserve {
namespace {

using ::testing::AllOf;
using testing::Golden;
using ::testing::HasSubstr;
using testing::ModelsDir;
using testing::ReadJson;
using testing::TempDir;
using testing::WriteText;

RopeScaling::Type RopeType(const std::string& s) {
  if (s == "linear") return RopeScaling::Type::kLinear;
  if (s == "llama3") return RopeScaling::Type::kLlama3;
  EXPECT_EQ(s, "default");
  return RopeScaling::Type::kNone;
}

class HfConfigTest : public ::testing::TestWithParam<const char*> {};

TEST_P(HfConfigTest, MatchesTransformers) {
  const std::string name = GetParam();
  const nlohmann::json want = ReadJson(Golden("hf_configs.json"))[name];
  auto c = ParseHfConfig(Golden("hf_config/" + name + "/config.json"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, want["architecture"].get<std::string>());
  EXPECT_EQ(c->hidden_size, want["hidden_size"].get<int64_t>());
  EXPECT_EQ(c->num_layers, want["num_layers"].get<int64_t>());
  EXPECT_EQ(c->num_heads, want["num_heads"].get<int64_t>());
  EXPECT_EQ(c->num_kv_heads, want["num_kv_heads"].get<int64_t>());
  EXPECT_EQ(c->head_dim, want["head_dim"].get<int64_t>());
  EXPECT_EQ(c->intermediate_size, want["intermediate_size"].get<int64_t>());
  EXPECT_EQ(c->vocab_size, want["vocab_size"].get<int64_t>());
  EXPECT_EQ(c->max_position, want["max_position"].get<int64_t>());
  EXPECT_EQ(c->rope_theta, want["rope_theta"].get<float>());
  EXPECT_EQ(c->rope_scaling.type, RopeType(want["rope_type"].get<std::string>()));
  if (c->rope_scaling.type != RopeScaling::Type::kNone) {
    EXPECT_EQ(c->rope_scaling.factor, want["rope_factor"].get<float>());
  }
  if (c->rope_scaling.type == RopeScaling::Type::kLlama3) {
    EXPECT_EQ(c->rope_scaling.low_freq_factor, want["low_freq_factor"].get<float>());
    EXPECT_EQ(c->rope_scaling.high_freq_factor, want["high_freq_factor"].get<float>());
    EXPECT_EQ(c->rope_scaling.original_max_position, want["original_max_position"].get<int64_t>());
  }
  EXPECT_EQ(c->rms_norm_eps, want["rms_norm_eps"].get<float>());
  EXPECT_EQ(c->tie_word_embeddings, want["tie_word_embeddings"].get<bool>());
  EXPECT_EQ(c->attention_bias, want["attention_bias"].get<bool>());
  EXPECT_EQ(c->mlp_bias, want["mlp_bias"].get<bool>());
  EXPECT_EQ(c->bos_token_id, want["bos_token_id"].get<int64_t>());
  EXPECT_EQ(c->eos_token_ids, want["eos_token_ids"].get<std::vector<int64_t>>());
  EXPECT_EQ(c->sliding_window, want["sliding_window"].get<int64_t>());
  EXPECT_EQ(c->hidden_act, want["hidden_act"].get<std::string>());
  EXPECT_FALSE(c->rope_interleaved);  // HF checkpoints: rotate-half
  EXPECT_TRUE(ValidateConfig(*c).ok()) << ValidateConfig(*c);
}

INSTANTIATE_TEST_SUITE_P(Configs, HfConfigTest,
                         ::testing::Values("llama3", "qwen2", "mistral", "llama_legacy"));

TEST(HfConfigTest, GenerationConfigOverridesEos) {
  const nlohmann::json want = ReadJson(Golden("hf_configs.json"))["llama3"];
  auto c = ParseHfConfig(Golden("hf_config/llama3/config.json"));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(MergeGenerationConfig(Golden("hf_config/llama3/generation_config.json"), &*c).ok());
  EXPECT_EQ(c->eos_token_ids, want["generation_eos_token_ids"].get<std::vector<int64_t>>());
  // Absent file: nothing changes, no error.
  const auto before = c->eos_token_ids;
  EXPECT_TRUE(MergeGenerationConfig(Golden("hf_config/qwen2/generation_config.json"), &*c).ok());
  EXPECT_EQ(c->eos_token_ids, before);
}

TEST(HfConfigTest, RealMiniLMConfig) {
  const std::string path = ModelsDir() + "/all-MiniLM-L6-v2/config.json";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not found";
  const nlohmann::json want = ReadJson(Golden("hf_configs.json"))["minilm"];
  auto c = ParseHfConfig(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, want["architecture"].get<std::string>());
  EXPECT_EQ(c->hidden_size, want["hidden_size"].get<int64_t>());
  EXPECT_EQ(c->num_layers, want["num_layers"].get<int64_t>());
  EXPECT_EQ(c->num_heads, want["num_heads"].get<int64_t>());
  EXPECT_EQ(c->num_kv_heads, want["num_heads"].get<int64_t>());
  EXPECT_EQ(c->intermediate_size, want["intermediate_size"].get<int64_t>());
  EXPECT_EQ(c->vocab_size, want["vocab_size"].get<int64_t>());
  EXPECT_EQ(c->max_position, want["max_position"].get<int64_t>());
  EXPECT_EQ(c->rms_norm_eps, want["layer_norm_eps"].get<float>());
  EXPECT_EQ(c->hidden_act, want["hidden_act"].get<std::string>());
  EXPECT_EQ(c->tie_word_embeddings, want["tie_word_embeddings"].get<bool>());
  EXPECT_TRUE(ValidateConfig(*c).ok()) << ValidateConfig(*c);
}

TEST(HfConfigTest, MissingRequiredFieldNamesFileAndField) {
  TempDir dir;
  nlohmann::json j = ReadJson(Golden("hf_config/qwen2/config.json"));
  j.erase("num_attention_heads");
  WriteText(dir.file("config.json"), j.dump());
  auto c = ParseHfConfig(dir.file("config.json"));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()),
              AllOf(HasSubstr(dir.file("config.json")), HasSubstr("num_attention_heads")));
}

TEST(HfConfigTest, MistypedAndUnsupported) {
  nlohmann::json j = ReadJson(Golden("hf_config/qwen2/config.json"));
  j["hidden_size"] = "64";
  auto c = ParseHfConfigText(j.dump(), "cfg");
  EXPECT_THAT(std::string(c.status().message()), AllOf(HasSubstr("cfg"), HasSubstr("hidden_size")));
  j = ReadJson(Golden("hf_config/qwen2/config.json"));
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  c = ParseHfConfigText(j.dump(), "cfg");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("yarn"));
  EXPECT_FALSE(ParseHfConfigText("{not json", "cfg").ok());
  EXPECT_EQ(ParseHfConfig("/nonexistent/config.json").status().code(), absl::StatusCode::kNotFound);
}

TEST(ValidateConfigTest, ErrorsNameTheField) {
  auto c = ParseHfConfig(Golden("hf_config/llama3/config.json"));
  ASSERT_TRUE(c.ok()) << c.status();
  struct Case {
    void (*mutate)(ModelConfig&);
    const char* field;
  };
  const Case cases[] = {
      {[](ModelConfig& m) { m.num_kv_heads = 3; }, "num_kv_heads"},
      {[](ModelConfig& m) { m.num_heads = 5; }, "num_heads"},
      {[](ModelConfig& m) { m.hidden_size = 0; }, "hidden_size"},
      {[](ModelConfig& m) { m.vocab_size = -1; }, "vocab_size"},
      {[](ModelConfig& m) { m.rms_norm_eps = 0; }, "rms_norm_eps"},
      {[](ModelConfig& m) { m.rope_theta = -1; }, "rope_theta"},
      {[](ModelConfig& m) { m.eos_token_ids = {1000}; }, "eos_token_id"},
      {[](ModelConfig& m) { m.rope_scaling.factor = 0; }, "rope_scaling"},
  };
  for (const Case& k : cases) {
    ModelConfig m = *c;
    k.mutate(m);
    const absl::Status st = ValidateConfig(m);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << k.field;
    EXPECT_THAT(std::string(st.message()), HasSubstr(k.field));
  }
}

}  // namespace
}  // namespace tpserve
