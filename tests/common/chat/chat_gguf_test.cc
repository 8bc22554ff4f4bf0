// End to end as the server does it: the chat template and special tokens come from a real GGUF
// through the tokenizer, the rendered prompt matches transformers, and the tokenizer sees the
// template's special tokens in it. Skips when the model is not fetched (scripts/fetch-models.sh).
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "common/chat/chat_template.h"
#include "common/format/gguf.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace tpserve {
namespace {

std::string ModelsDir() {
  const char* env = std::getenv("TPSERVE_MODELS");
  if (env != nullptr && *env != '\0') return env;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/tpserve/models";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

size_t CountSubstr(const std::string& s, const std::string& sub) {
  size_t n = 0;
  for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
  return n;
}

TEST(ChatGgufTest, SmolLM2TemplateFromGgufRendersLikeTransformers) {
  const std::string path = ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path))
    GTEST_SKIP() << path << " not found (scripts/fetch-models.sh)";
  auto gguf = GgufFile::Open(path);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  auto tok = Tokenizer::FromGguf(**gguf);
  ASSERT_TRUE(tok.ok()) << tok.status();

  // The committed copy is the GGUF's template, byte for byte.
  const std::string dir = "tests/data/golden/chat/";
  ASSERT_EQ((*tok)->chat_template(), ReadFile(dir + "templates/smollm2-135m-instruct.jinja"));
  auto t = ChatTemplate::Parse((*tok)->chat_template());
  ASSERT_TRUE(t.ok()) << t.status();

  const auto goldens = nlohmann::ordered_json::parse(ReadFile(dir + "chat_goldens.json"));
  const auto start_id = (*tok)->TokenToId("<|im_start|>");
  ASSERT_TRUE(start_id.has_value());
  int checked = 0;
  for (const auto& c : goldens["cases"]) {
    if (c["template"] != "smollm2-135m-instruct" || !c.contains("expected")) continue;
    const auto& ctx = c["context"];
    if (!ctx["tools"].is_null()) continue;
    SCOPED_TRACE(c["conversation"].get<std::string>());
    EXPECT_EQ((*tok)->bos_token(), ctx["bos_token"].get<std::string>());
    EXPECT_EQ((*tok)->eos_token(), ctx["eos_token"].get<std::string>());
    auto prompt = RenderChat(*t, nlohmann::json::parse(ctx["messages"].dump()),
                             ctx["add_generation_prompt"].get<bool>(), (*tok)->bos_token(),
                             (*tok)->eos_token());
    if (!prompt.ok()) {  // Only content that is not a string (content parts) may fail here.
      EXPECT_FALSE(ctx["messages"][0]["content"].is_string()) << prompt.status();
      continue;
    }
    EXPECT_EQ(*prompt, c["expected"].get<std::string>());

    // Each "<|im_start|>" the template wrote is one special token, not split into pieces.
    auto ids = (*tok)->Encode(*prompt, /*add_special_tokens=*/false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(static_cast<size_t>(std::count(ids->begin(), ids->end(), *start_id)),
              CountSubstr(*prompt, "<|im_start|>"));
    auto text = (*tok)->Decode(*ids);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, *prompt);
    ++checked;
  }
  EXPECT_GE(checked, 20);
}

}  // namespace
}  // namespace tpserve
