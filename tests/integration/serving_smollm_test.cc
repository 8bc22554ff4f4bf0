// The real model, SmolLM2-135M (Q4_1 GGUF) at TP=2 on loopback: a seeded, sampled request and a
// greedy one give the same tokens alone and among 31 concurrent requests (few tokens each:
// SmolLM2 runs at ~5-10 tokens/s per stream on this machine), and a 300 ms gRPC deadline ends a
// long generation (seconds on this model, whatever the machine's load) and frees its blocks.
// A client that freezes mid-stream (its connection open, nothing answered) is dropped by the
// server's keepalive and its request aborted.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/local_cluster.h"
#include "tests/integration/serving_client.h"
#include "tests/testing/child_process.h"

namespace tpserve::testing {
namespace {

class ServingSmolLm2Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string model = ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (!std::filesystem::exists(model)) return;  // SetUp skips
    cluster_ = new LocalCluster(model, 2, {"--max-context", "256"});
    const absl::Status up = cluster_->WaitHealth(true, absl::Seconds(120));
    ASSERT_TRUE(up.ok()) << up;
    stub_ = cluster_->Stub().release();
  }
  static void TearDownTestSuite() {
    delete stub_;
    delete cluster_;
    stub_ = nullptr;
    cluster_ = nullptr;
  }
  void SetUp() override {
    if (cluster_ == nullptr)
      GTEST_SKIP() << "SmolLM2 not in " << ModelsDir() << " (fetch-models.sh)";
    ASSERT_NE(stub_, nullptr) << "the cluster did not start";
    golden_ = ExpectedGolden("smollm2-135m-q4_1");
  }
  std::vector<int32_t> Prompt(int i) const {
    return golden_["cases"][i]["input_ids"].get<std::vector<int32_t>>();
  }
  // The first `n` golden greedy tokens of case `i`.
  std::vector<int32_t> GoldenGreedy(int i, int n) const {
    const auto all = golden_["cases"][i]["greedy"].get<std::vector<int32_t>>();
    return std::vector<int32_t>(all.begin(), all.begin() + n);
  }

  static LocalCluster* cluster_;
  static v1::Inference::Stub* stub_;
  nlohmann::json golden_;
};

LocalCluster* ServingSmolLm2Test::cluster_ = nullptr;
v1::Inference::Stub* ServingSmolLm2Test::stub_ = nullptr;

TEST_F(ServingSmolLm2Test, SeededAndGreedyRequestsAreBatchInvariant) {
  constexpr int kTokens = 8;
  const auto prompt = [&](int i) { return Prompt(i); };

  const v1::GenerateRequest sampled = Sampled(prompt(0), kTokens, 0.8f, 0.9f, 1234);
  const v1::GenerateRequest greedy = Greedy(prompt(2), kTokens);
  const Streamed sampled_alone = Generate(*stub_, sampled, absl::Seconds(60));
  ASSERT_TRUE(sampled_alone.status.ok()) << sampled_alone.status.error_message();
  ASSERT_EQ(sampled_alone.ids.size(), static_cast<size_t>(kTokens));
  const Streamed greedy_alone = Generate(*stub_, greedy, absl::Seconds(60));
  ASSERT_TRUE(greedy_alone.status.ok()) << greedy_alone.status.error_message();
  EXPECT_EQ(greedy_alone.ids, GoldenGreedy(2, kTokens));

  // 30 others: random token prompts of 4..18 tokens, greedy or sampled with their own seeds,
  // kTokens + 4 new tokens so that they outlive the two.
  std::vector<v1::GenerateRequest> others;
  for (int i = 0; i < 30; ++i) {
    const std::vector<int32_t> p = RandomPrompt(500 + i, 4 + (i * 5) % 15, 49152);
    others.push_back(i % 3 == 0 ? Greedy(p, kTokens + 4)
                                : Sampled(p, kTokens + 4, 0.6f + 0.1f * (i % 6), 0.95f, 77 + i));
  }
  const BatchRun run = RunInsideABatch(*stub_, {sampled, greedy}, others, /*min_running=*/20,
                                       absl::Seconds(30), absl::Seconds(180));
  const Streamed& sampled_batched = run.targets[0];
  const Streamed& greedy_batched = run.targets[1];
  const std::vector<Streamed>& results = run.others;

  ASSERT_TRUE(sampled_batched.status.ok()) << sampled_batched.status.error_message();
  ASSERT_TRUE(greedy_batched.status.ok()) << greedy_batched.status.error_message();
  EXPECT_EQ(sampled_batched.ids, sampled_alone.ids);
  EXPECT_EQ(greedy_batched.ids, greedy_alone.ids);
  EXPECT_GE(run.max_running, 20) << "the requests did not run as one batch";
  // Others still running when both targets had ended: they shared every step of the two.
  std::printf("[  figures ] max running %d, others outliving the two %d\n", run.max_running,
              run.others_outliving);
  EXPECT_GE(run.others_outliving, 10);
  for (size_t i = 0; i < others.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << i << ": " << results[i].status.error_message();
    EXPECT_EQ(results[i].ids.size(), static_cast<size_t>(kTokens + 4)) << i;
  }
}

// A 300 ms gRPC deadline on a 200-token generation (seconds on this model): DEADLINE_EXCEEDED
// soon after the deadline, the KV blocks are freed, and the next request is served correctly.
TEST_F(ServingSmolLm2Test, DeadlineEndsTheRequestAndFreesItsBlocks) {
  const Streamed r = Generate(*stub_, Greedy(Prompt(2), 200), absl::Milliseconds(300));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << r.status.error_message();
  EXPECT_LT(r.took, absl::Seconds(1));
  EXPECT_LT(r.ids.size(), 200u);
  const absl::Status idle = WaitIdle(*stub_, absl::Seconds(5));
  EXPECT_TRUE(idle.ok()) << idle;
  const Streamed next = Generate(*stub_, Greedy(Prompt(0), 8), absl::Seconds(60));
  ASSERT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_EQ(next.ids, GoldenGreedy(0, 8));
}

}  // namespace
#ifdef TPSERVE_CLI_BIN
// A client process stopped mid-stream (SIGSTOP: a suspended laptop, a partition; its connection
// stays open and sends no reset) is noticed by the server's keepalive ping going unanswered: the
// connection is closed, the stream cancelled and the request aborted, seconds into a generation
// that would otherwise run for thousands of tokens.
TEST(ServingKeepaliveTest, FrozenClientIsDroppedAndItsRequestAborted) {
  const std::string model = ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(model)) GTEST_SKIP() << model << " not found (fetch-models.sh)";
  constexpr int kMaxTokens = 4000;
  LocalCluster cluster(
      model, 1, {"--max-context", "4096", "--keepalive-time-s", "1", "--keepalive-timeout-s", "1"});
  ASSERT_TRUE(cluster.WaitHealth(true, absl::Seconds(120)).ok()) << cluster.Logs();
  auto stub = cluster.Stub();
  const pid_t client =
      Spawn({TPSERVE_CLI_BIN, "generate", "--server", cluster.address(), "--max-tokens",
             std::to_string(kMaxTokens), "--ignore-eos", "Once upon a time"});
  ASSERT_GT(client, 0);
  absl::StatusOr<v1::ServerStats> s;
  for (const absl::Time until = absl::Now() + absl::Seconds(60); absl::Now() < until;) {
    s = Stats(*stub);
    if (s.ok() && s->running() == 1 && s->generation_tokens() > 0) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(s.ok() && s->running() == 1) << cluster.Logs();
  kill(client, SIGSTOP);
  const absl::Time frozen = absl::Now();
  const absl::Status idle = WaitIdle(*stub, absl::Seconds(30));
  const absl::Duration took = absl::Now() - frozen;
  kill(client, SIGKILL);
  WaitExit(client, absl::Seconds(10));
  EXPECT_TRUE(idle.ok()) << idle << cluster.Logs();
  s = Stats(*stub);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->running(), 0) << cluster.Logs();
  EXPECT_LT(took, absl::Seconds(10));
  EXPECT_LT(s->generation_tokens(), kMaxTokens / 2);  // cut short, not run to the end
  EXPECT_EQ(s->kv_blocks_used(), 0);
  // The server serves on.
  const Streamed next = Generate(*stub, Greedy({1, 9690, 314, 253}, 4));
  EXPECT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_EQ(next.ids.size(), 4u);
}
#endif

}  // namespace tpserve::testing
