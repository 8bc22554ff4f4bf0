// The GPU worker path end to end, on the CUDA emulator (tests/testing/cuda_emulator): the
// coordinator and tpserve-worker-emu processes (the worker's own sources built against the
// emulated CUDA runtime, cuBLAS and NCCL) on loopback, serving SmolLM2-135M with
// --device cuda:0. What this shows: the worker's CUDA device (memory sizing from cudaMemGetInfo,
// the KV pool, one-rank NCCL, host-aware collectives), the CUDA backend and its kernels answer
// real gRPC requests with the tokens transformers computes; and at TP=2, two emulated GPUs in two
// processes over Gloo (activations staged through host memory). Sampling runs on the device
// where the request needs nothing from the logits but a token. Not a GPU: see that folder's
// README.md.
#include <filesystem>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "tests/integration/local_cluster.h"
#include "tests/integration/serving_client.h"

namespace tpserve::testing {
namespace {

std::string SmolLm2() { return ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf"; }

// Golden greedy tokens (transformers, fp32) against what the cluster streams, for two prompts.
void ExpectGoldenGreedy(v1::Inference::Stub& stub, int tokens) {
  const nlohmann::json golden = ExpectedGolden("smollm2-135m-q4_1");
  for (int i : {0, 2}) {
    const auto prompt = golden["cases"][i]["input_ids"].get<std::vector<int32_t>>();
    const auto all = golden["cases"][i]["greedy"].get<std::vector<int32_t>>();
    const Streamed got = Generate(stub, Greedy(prompt, tokens), absl::Seconds(120));
    ASSERT_TRUE(got.status.ok()) << got.status.error_message();
    EXPECT_EQ(got.ids, std::vector<int32_t>(all.begin(), all.begin() + tokens)) << "case " << i;
  }
}

TEST(ServingCudaEmulatorTest, OneEmulatedGpuServesTheGoldenTokens) {
  if (!std::filesystem::exists(SmolLm2())) GTEST_SKIP() << SmolLm2() << " is missing";
  LocalCluster cluster(SmolLm2(), 1, {"--max-context", "256"},
                       {"--device", "cuda:0", "--dtype", "fp32"});
  const absl::Status up = cluster.WaitHealth(true, absl::Seconds(120));
  ASSERT_TRUE(up.ok()) << up;
  std::unique_ptr<v1::Inference::Stub> stub = cluster.Stub();
  absl::StatusOr<v1::ModelInfo> info = Info(*stub);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->device(), "cuda");
  EXPECT_GT(info->kv_blocks(), 0);
  ExpectGoldenGreedy(*stub, 12);

  // A seeded draw is made on the device (the logits stay there) unless the request needs the
  // logits on the host: asking for log-probs moves the same draw to the host sampler. Both must
  // give the same tokens, and the host one its log-probs.
  const nlohmann::json golden = ExpectedGolden("smollm2-135m-q4_1");
  const auto prompt = golden["cases"][1]["input_ids"].get<std::vector<int32_t>>();
  for (const auto& [temperature, top_p, seed] :
       {std::tuple{0.8f, 0.9f, 1234}, std::tuple{1.2f, 1.0f, 99}}) {
    const v1::GenerateRequest on_device = Sampled(prompt, 10, temperature, top_p, seed);
    v1::GenerateRequest on_host = on_device;
    on_host.mutable_output()->set_logprobs(true);
    const Streamed a = Generate(*stub, on_device, absl::Seconds(120));
    const Streamed b = Generate(*stub, on_host, absl::Seconds(120));
    ASSERT_TRUE(a.status.ok()) << a.status.error_message();
    ASSERT_TRUE(b.status.ok()) << b.status.error_message();
    EXPECT_EQ(a.ids.size(), 10u);
    EXPECT_EQ(a.ids, b.ids) << "temperature " << temperature << ", seed " << seed;
  }
}

TEST(ServingCudaEmulatorTest, TwoEmulatedGpusOverGlooServeTheGoldenTokens) {
  if (!std::filesystem::exists(SmolLm2())) GTEST_SKIP() << SmolLm2() << " is missing";
  LocalCluster cluster(SmolLm2(), 2, {"--max-context", "256"},
                       {"--device", "cuda:0", "--dtype", "fp32", "--collectives", "gloo"});
  const absl::Status up = cluster.WaitHealth(true, absl::Seconds(120));
  ASSERT_TRUE(up.ok()) << up;
  std::unique_ptr<v1::Inference::Stub> stub = cluster.Stub();
  ExpectGoldenGreedy(*stub, 8);
}

}  // namespace
}  // namespace tpserve::testing
