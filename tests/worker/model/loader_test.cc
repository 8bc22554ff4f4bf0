// Model loading errors name the file, the tensor and the problem.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/worker/model/golden.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/model/llama.h"
#include "worker/model/model_loader.h"
#include "worker/parallel/communicator.h"

namespace tpserve {
namespace {

namespace fs = std::filesystem;

// A copy of the llama-mha checkpoint whose config.json is edited by `edit`.
std::string EditedCheckpoint(const std::string& name,
                             const std::function<void(nlohmann::json&)>& edit) {
  const fs::path src = fs::path(testing::kGoldenDir) / "llama-mha";
  const fs::path dir = fs::temp_directory_path() /
                       ("tpserve_loader_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(src / "model.safetensors", dir / "model.safetensors");
  nlohmann::json config = nlohmann::json::parse(std::ifstream(src / "config.json"));
  edit(config);
  std::ofstream(dir / "config.json") << config.dump(2);
  return dir.string();
}

absl::Status Load(const std::string& path) {
  auto files = OpenModelFiles(path);
  if (!files.ok()) return files.status();
  CpuBackend backend(1);
  LocalCommunicator comm;
  return LoadCausalLm(*files, SingleRankPlan(files->config), backend, comm).status();
}

TEST(ModelLoader, LoadsAGoodCheckpoint) {
  EXPECT_TRUE(Load(std::string(testing::kGoldenDir) + "/llama-mha").ok());
}

TEST(ModelLoader, ShapeMismatchNamesFileTensorAndShapes) {
  const std::string dir =
      EditedCheckpoint("ffn", [](nlohmann::json& c) { c["intermediate_size"] = 96; });
  const absl::Status st = Load(dir);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(st.message());
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.layers.0.mlp.gate_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[96, 64]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[128, 64]"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(ModelLoader, MissingTensorNamesIt) {
  const std::string dir =
      EditedCheckpoint("layers", [](nlohmann::json& c) { c["num_hidden_layers"] = 3; });
  const absl::Status st = Load(dir);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(st.message().find("model.layers.2."), std::string::npos) << st;
  fs::remove_all(dir);
}

TEST(ModelLoader, UnsupportedArchitecture) {
  const std::string dir =
      EditedCheckpoint("arch", [](nlohmann::json& c) { c["model_type"] = "gpt_neox"; });
  const absl::Status st = Load(dir);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("gpt_neox"), std::string::npos) << st;
  fs::remove_all(dir);
}

TEST(ModelLoader, BadPaths) {
  EXPECT_EQ(Load("/nonexistent/model.gguf").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Load(std::string(testing::kGoldenDir) + "/README.md").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Load(std::string(testing::kGoldenDir)).code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace tpserve
