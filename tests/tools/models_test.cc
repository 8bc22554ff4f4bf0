#include "tools/models.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace tpserve {
namespace {

using ::testing::HasSubstr;

nlohmann::json Golden() {
  std::ifstream f("tests/data/golden/tools/models.json");
  EXPECT_TRUE(f.good()) << "run from the repository root";
  return nlohmann::json::parse(f);
}

// The type holding most elements, then the others by element count, as the golden lists them.
std::string DtypeText(const nlohmann::json& by_dtype) {
  std::vector<std::pair<int64_t, std::string>> order;
  for (const auto& [k, v] : by_dtype.items()) order.emplace_back(-v.get<int64_t>(), k);
  std::sort(order.begin(), order.end());
  std::string s = order[0].second;
  for (size_t i = 1; i < order.size(); ++i) {
    s += (i == 1 ? " (+" : ", ") + order[i].second;
  }
  return order.size() > 1 ? s + ")" : s;
}

TEST(ModelsTest, DescribesTheCachedModelsLikeTheReferenceReaders) {
  const std::string dir = ModelsDir("");
  if (!std::filesystem::is_directory(dir)) GTEST_SKIP() << "no model cache at " << dir;
  absl::StatusOr<std::vector<ModelSummary>> models = ListModels(dir);
  ASSERT_TRUE(models.ok()) << models.status();
  int compared = 0;
  const nlohmann::json golden = Golden();
  for (const auto& [name, want] : golden.items()) {
    auto it = std::find_if(models->begin(), models->end(),
                           [&](const ModelSummary& m) { return m.name == name; });
    if (it == models->end()) continue;  // not in this cache
    SCOPED_TRACE(name);
    EXPECT_EQ(it->error, "");
    EXPECT_EQ(it->format, want["format"]);
    EXPECT_EQ(it->architecture, want["architecture"]);
    EXPECT_EQ(it->parameters, want["parameters"].get<int64_t>());
    EXPECT_EQ(it->context_length, want["context_length"].get<int64_t>());
    EXPECT_EQ(it->size_bytes, want["size_bytes"].get<int64_t>());
    EXPECT_EQ(it->weight_dtype, DtypeText(want["elements_by_dtype"]));
    ++compared;
  }
  if (compared == 0) GTEST_SKIP() << "none of the golden models is in " << dir;
}

TEST(ModelsTest, DirComesFromTheFlagThenTheEnvironment) {
  EXPECT_EQ(ModelsDir("/x/y"), "/x/y");
  const char* old = std::getenv("TPSERVE_MODELS");
  const std::string saved = old != nullptr ? old : "";
  setenv("TPSERVE_MODELS", "/from/env", 1);
  EXPECT_EQ(ModelsDir(""), "/from/env");
  unsetenv("TPSERVE_MODELS");
  EXPECT_THAT(ModelsDir(""), HasSubstr("/.cache/tpserve/models"));
  if (old != nullptr) setenv("TPSERVE_MODELS", saved.c_str(), 1);
}

TEST(ModelsTest, ErrorsNameThePath) {
  absl::StatusOr<std::vector<ModelSummary>> none = ListModels("/nonexistent/models");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(none.status().message(), HasSubstr("/nonexistent/models"));

  const std::string tmp = ::testing::TempDir() + "/tpserve_models_test";
  std::filesystem::create_directories(tmp);
  {
    std::ofstream(tmp + "/broken.gguf") << "not a gguf file";
    std::ofstream(tmp + "/notes.txt") << "ignored";
  }
  absl::StatusOr<std::vector<ModelSummary>> listed = ListModels(tmp);
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);  // notes.txt is not a model
  EXPECT_EQ((*listed)[0].name, "broken.gguf");
  EXPECT_THAT((*listed)[0].error, HasSubstr("broken.gguf"));
  EXPECT_FALSE(DescribeModel(tmp + "/notes.txt").ok());
  std::filesystem::remove_all(tmp);
}

TEST(ModelsTest, HumanReadableSizes) {
  EXPECT_EQ(HumanCount(950), "950");
  EXPECT_EQ(HumanCount(134515008), "134.5M");
  EXPECT_EQ(HumanCount(7'240'000'000), "7.2B");
  EXPECT_EQ(HumanBytes(98362432), "93.8 MiB");
  EXPECT_EQ(HumanBytes(512), "512 B");
}

}  // namespace
}  // namespace tpserve
