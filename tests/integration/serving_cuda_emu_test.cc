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
  // The decode steps ran as a recorded CUDA graph (the default), replayed after the first.
  EXPECT_NE(cluster.ReadLog("worker0").find("decode, 1 rows"), std::string::npos) << cluster.Logs();
}

// Sampling on the device (the default) against the host sampler (--host-sampling), each worker on
// an emulated GPU in fp32: greedy and seeded requests with penalties, logit bias and log-probs give
// the same tokens and log-probs, so the device path is the host's semantics and not only the
// host's RNG. The device side's decode steps are recorded CUDA graphs, the host side's op by op.
TEST(ServingCudaEmulatorTest, DeviceSamplingEqualsHostSampling) {
  if (!std::filesystem::exists(SmolLm2())) GTEST_SKIP() << SmolLm2() << " is missing";
  LocalCluster device(SmolLm2(), 1, {"--max-context", "256"},
                      {"--device", "cuda:0", "--dtype", "fp32"});
  // The host side also runs its steps op by op (no CUDA graphs): the device side's recorded
  // steps are compared with that too.
  LocalCluster host(
      SmolLm2(), 1, {"--max-context", "256"},
      {"--device", "cuda:0", "--dtype", "fp32", "--host-sampling", "--cuda-graph-max-batch", "0"});
  for (LocalCluster* c : {&device, &host}) {
    const absl::Status up = c->WaitHealth(true, absl::Seconds(120));
    ASSERT_TRUE(up.ok()) << up;
  }
  std::unique_ptr<v1::Inference::Stub> on_device = device.Stub(), on_host = host.Stub();

  const nlohmann::json golden = ExpectedGolden("smollm2-135m-q4_1");
  std::vector<v1::GenerateRequest> requests;
  for (int i : {0, 1}) {
    const auto prompt = golden["cases"][i]["input_ids"].get<std::vector<int32_t>>();
    v1::GenerateRequest plain = Sampled(prompt, 10, 0.8f, 0.9f, 1234 + i);
    requests.push_back(plain);
    v1::GenerateRequest adjusted = i == 0 ? Greedy(prompt, 10) : plain;
    adjusted.mutable_sampling()->set_repetition_penalty(1.3f);
    adjusted.mutable_sampling()->set_presence_penalty(0.4f);
    adjusted.mutable_sampling()->set_frequency_penalty(0.2f);
    (*adjusted.mutable_sampling()
          ->mutable_logit_bias())[golden["cases"][i]["greedy"][1].get<int32_t>()] = -5.0f;
    (*adjusted.mutable_sampling()->mutable_logit_bias())[28] = 1.5f;
    adjusted.mutable_output()->set_logprobs(true);
    adjusted.mutable_output()->set_top_logprobs(3);
    requests.push_back(adjusted);
  }
  for (size_t k = 0; k < requests.size(); ++k) {
    SCOPED_TRACE("request " + std::to_string(k));
    const Streamed a = Generate(*on_device, requests[k], absl::Seconds(120));
    const Streamed b = Generate(*on_host, requests[k], absl::Seconds(120));
    ASSERT_TRUE(a.status.ok()) << a.status.error_message();
    ASSERT_TRUE(b.status.ok()) << b.status.error_message();
    ASSERT_EQ(a.ids.size(), 10u);
    EXPECT_EQ(a.ids, b.ids);
    ASSERT_EQ(a.tokens.size(), b.tokens.size());
    for (size_t t = 0; t < a.tokens.size(); ++t) {
      EXPECT_NEAR(a.tokens[t].logprob(), b.tokens[t].logprob(), 1e-4) << "token " << t;
      ASSERT_EQ(a.tokens[t].top_logprobs_size(), b.tokens[t].top_logprobs_size());
      for (int j = 0; j < a.tokens[t].top_logprobs_size(); ++j) {
        EXPECT_EQ(a.tokens[t].top_logprobs(j).id(), b.tokens[t].top_logprobs(j).id());
        EXPECT_NEAR(a.tokens[t].top_logprobs(j).logprob(), b.tokens[t].top_logprobs(j).logprob(),
                    1e-4);
      }
    }
    if (requests[k].output().top_logprobs() > 0) {
      EXPECT_EQ(a.tokens.at(0).top_logprobs_size(), 3);
      EXPECT_LT(a.tokens.at(0).logprob(), 0.0f);
    }
  }
  EXPECT_NE(device.ReadLog("worker0").find("as a CUDA graph"), std::string::npos);
  EXPECT_EQ(host.ReadLog("worker0").find("as a CUDA graph"), std::string::npos)
      << "--cuda-graph-max-batch 0 recorded a step";
}

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
  // Alone, each decode step was a recorded 1-row graph; together, the steps were padded to
  // larger recorded sizes: the same tokens either way.
  const std::string log = cluster.ReadLog("worker0");
  EXPECT_NE(log.find("decode, 1 rows"), std::string::npos) << cluster.Logs();
  int sizes = 0;
  for (const char* size : {"decode, 2 rows", "decode, 4 rows", "decode, 8 rows"}) {
    sizes += log.find(size) != std::string::npos;
  }
  EXPECT_GE(sizes, 1) << "no step of several sequences was recorded:\n" << cluster.Logs();
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
