// Batch invariance on the real model: SmolLM2-135M (Q4_1 GGUF) at TP=2 on loopback. A seeded,
// sampled request and a greedy one give the same tokens alone and among 31 concurrent requests
// (few tokens each: SmolLM2 runs at ~5-10 tokens/s per stream on this machine).
#include <atomic>
#include <filesystem>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/local_cluster.h"
#include "tests/integration/serving_client.h"

namespace tpserve::testing {
namespace {

TEST(ServingSmolLm2Test, SeededAndGreedyRequestsAreBatchInvariant) {
  const std::string model = ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(model)) GTEST_SKIP() << model << " not found (fetch-models.sh)";
  const nlohmann::json golden = ExpectedGolden("smollm2-135m-q4_1");
  const auto prompt = [&](int i) {
    return golden["cases"][i]["input_ids"].get<std::vector<int32_t>>();
  };
  constexpr int kTokens = 8;
  const std::vector<int32_t> golden_greedy =
      golden["cases"][2]["greedy"].get<std::vector<int32_t>>();

  LocalCluster cluster(model, 2, {"--max-context", "256"});
  const absl::Status up = cluster.WaitHealth(true, absl::Seconds(120));
  ASSERT_TRUE(up.ok()) << up;
  auto stub = cluster.Stub();

  const v1::GenerateRequest sampled = Sampled(prompt(0), kTokens, 0.8f, 0.9f, 1234);
  const v1::GenerateRequest greedy = Greedy(prompt(2), kTokens);
  const Streamed sampled_alone = Generate(*stub, sampled, absl::Seconds(60));
  ASSERT_TRUE(sampled_alone.status.ok()) << sampled_alone.status.error_message();
  ASSERT_EQ(sampled_alone.ids.size(), static_cast<size_t>(kTokens));
  const Streamed greedy_alone = Generate(*stub, greedy, absl::Seconds(60));
  ASSERT_TRUE(greedy_alone.status.ok()) << greedy_alone.status.error_message();
  EXPECT_EQ(greedy_alone.ids,
            std::vector<int32_t>(golden_greedy.begin(), golden_greedy.begin() + kTokens));

  // 30 others: random token prompts of 4..18 tokens, greedy or sampled with their own seeds,
  // kTokens + 4 new tokens so that they outlive the two.
  std::vector<v1::GenerateRequest> others;
  for (int i = 0; i < 30; ++i) {
    const std::vector<int32_t> p = RandomPrompt(500 + i, 4 + (i * 5) % 15, 49152);
    others.push_back(i % 3 == 0 ? Greedy(p, kTokens + 4)
                                : Sampled(p, kTokens + 4, 0.6f + 0.1f * (i % 6), 0.95f, 77 + i));
  }
  std::vector<Streamed> results(others.size());
  std::atomic<int> max_running{0};
  std::atomic<bool> done{false};
  std::thread monitor([&] {
    while (!done) {
      absl::StatusOr<v1::ServerStats> s = Stats(*stub);
      if (s.ok()) max_running = std::max(max_running.load(), s->running());
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  std::vector<std::thread> threads;
  for (size_t i = 0; i < others.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = Generate(*stub, others[i], absl::Seconds(180)); });
  }
  const absl::Time until = absl::Now() + absl::Seconds(30);
  while (max_running < 20 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(10));
  Streamed sampled_batched, greedy_batched;
  std::latch go(2);
  std::thread a([&] {
    go.arrive_and_wait();
    sampled_batched = Generate(*stub, sampled, absl::Seconds(180));
  });
  std::thread b([&] {
    go.arrive_and_wait();
    greedy_batched = Generate(*stub, greedy, absl::Seconds(180));
  });
  a.join();
  b.join();
  for (auto& t : threads) t.join();
  done = true;
  monitor.join();

  ASSERT_TRUE(sampled_batched.status.ok()) << sampled_batched.status.error_message();
  ASSERT_TRUE(greedy_batched.status.ok()) << greedy_batched.status.error_message();
  EXPECT_EQ(sampled_batched.ids, sampled_alone.ids);
  EXPECT_EQ(greedy_batched.ids, greedy_alone.ids);
  EXPECT_GE(max_running.load(), 20) << "the requests did not run as one batch";
  for (size_t i = 0; i < others.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << i << ": " << results[i].status.error_message();
    EXPECT_EQ(results[i].ids.size(), static_cast<size_t>(kTokens + 4)) << i;
  }
}

}  // namespace
}  // namespace tpserve::testing
