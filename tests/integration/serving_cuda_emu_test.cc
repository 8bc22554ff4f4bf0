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
#include <thread>
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

// What a user gets without flags: bf16 weights, fp16 KV pools, sampling on the device. Requests
// arriving together share steps (the device draw then gathers the sampled rows out of a step's
// logits); each must stream what it streams alone, and the first greedy token is transformers'
// (bf16 keeps it, CudaModel.Bf16LogitsWithinBf16Tolerance).
TEST(ServingCudaEmulatorTest, DefaultBf16ServesConcurrentRequestsAsAlone) {
  if (!std::filesystem::exists(SmolLm2())) GTEST_SKIP() << SmolLm2() << " is missing";
  LocalCluster cluster(SmolLm2(), 1, {"--max-context", "256"}, {"--device", "cuda:0"});
  const absl::Status up = cluster.WaitHealth(true, absl::Seconds(120));
  ASSERT_TRUE(up.ok()) << up;
  std::unique_ptr<v1::Inference::Stub> stub = cluster.Stub();
  absl::StatusOr<v1::ModelInfo> info = Info(*stub);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->compute_dtype(), "bf16");
  EXPECT_EQ(info->kv_cache_dtype(), "fp16");

  const nlohmann::json golden = ExpectedGolden("smollm2-135m-q4_1");
  std::vector<v1::GenerateRequest> requests;
  for (int i : {0, 1, 2}) {
    const auto prompt = golden["cases"][i]["input_ids"].get<std::vector<int32_t>>();
    requests.push_back(Greedy(prompt, 8));
    requests.push_back(Sampled(prompt, 8, 0.9f, 0.95f, 100 + i));
  }
  std::vector<Streamed> alone;
  for (const v1::GenerateRequest& r : requests) {
    alone.push_back(Generate(*stub, r, absl::Seconds(120)));
    ASSERT_TRUE(alone.back().status.ok()) << alone.back().status.error_message();
    ASSERT_EQ(alone.back().ids.size(), 8u);
  }
  std::vector<Streamed> together(requests.size());
  std::vector<std::thread> clients;
  for (size_t k = 0; k < requests.size(); ++k) {
    clients.emplace_back(
        [&, k] { together[k] = Generate(*stub, requests[k], absl::Seconds(120)); });
  }
  for (std::thread& t : clients) t.join();
  for (size_t k = 0; k < requests.size(); ++k) {
    ASSERT_TRUE(together[k].status.ok()) << together[k].status.error_message();
    EXPECT_EQ(together[k].ids, alone[k].ids) << "request " << k;
  }
  for (int i : {0, 1, 2}) {
    EXPECT_EQ(alone[2 * i].ids.at(0), golden["cases"][i]["greedy"][0].get<int32_t>())
        << "case " << i;
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
