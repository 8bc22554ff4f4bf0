// Limits of the serving engine end to end, on a real coordinator + 2 workers on loopback serving
// a tiny golden checkpoint: the waiting-queue limit answers RESOURCE_EXHAUSTED at once instead of
// hanging, --no-prefix-cache caches nothing, and bad options answer INVALID_ARGUMENT naming the
// field (the cases cluster_test.cc does not cover).
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/local_cluster.h"
#include "tests/integration/serving_client.h"

namespace tpserve::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kModel[] = "llama-mha";  // vocab 256, 256 positions

// One sequence runs, one may wait; every other request is refused while they are there.
TEST(ServingLimitsTest, QueueLimitPrefixCacheOffAndBadOptions) {
  LocalCluster cluster(
      absl::StrCat(kGoldenModels, "/", kModel), 2,
      {"--max-seqs", "1", "--max-waiting", "1", "--kv-block-size", "4", "--no-prefix-cache"});
  const absl::Status up = cluster.WaitHealth(true, absl::Seconds(90));
  ASSERT_TRUE(up.ok()) << up;
  auto stub = cluster.Stub();
  const nlohmann::json golden = ExpectedGolden(kModel);
  const auto prompt = [&](int i) {
    return golden["cases"][i]["input_ids"].get<std::vector<int32_t>>();
  };
  const auto greedy = [&](int i) {
    return golden["cases"][i]["greedy"].get<std::vector<int32_t>>();
  };

  // The running one: long enough to still run while the others arrive. Its tokens must be those
  // of the same request alone, which the golden pins for its first 16.
  grpc::ClientContext running_ctx;
  running_ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
  auto running = stub->Generate(&running_ctx, Greedy(prompt(0), 240));
  std::vector<int32_t> running_ids;
  v1::GenerateResponse resp;
  ASSERT_TRUE(running->Read(&resp)) << cluster.Logs();
  for (const v1::Token& t : resp.tokens()) running_ids.push_back(t.id());

  // The waiting one.
  Streamed waited;
  std::thread waiter([&] { waited = Generate(*stub, Greedy(prompt(1), 16)); });
  const absl::Time until = absl::Now() + absl::Seconds(10);
  absl::StatusOr<v1::ServerStats> s;
  do {
    absl::SleepFor(absl::Milliseconds(5));
    s = Stats(*stub);
    ASSERT_TRUE(s.ok()) << s.status();
  } while (s->waiting() < 1 && absl::Now() < until);
  ASSERT_EQ(s->waiting(), 1) << s->ShortDebugString();
  EXPECT_EQ(s->running(), 1);

  // Both refused, at once (not after the running request ends).
  for (int i = 0; i < 2; ++i) {
    const Streamed refused = Generate(*stub, Greedy(prompt(2), 16), absl::Seconds(30));
    EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << refused.status.error_message();
    EXPECT_THAT(refused.status.error_message(), HasSubstr("queue"));
    EXPECT_LT(refused.took, absl::Seconds(2));
    EXPECT_TRUE(refused.ids.empty());
  }

  while (running->Read(&resp)) {
    for (const v1::Token& t : resp.tokens()) running_ids.push_back(t.id());
  }
  const grpc::Status running_status = running->Finish();
  ASSERT_TRUE(running_status.ok()) << running_status.error_message();
  ASSERT_EQ(running_ids.size(), 240u);
  EXPECT_EQ(std::vector<int32_t>(running_ids.begin(), running_ids.begin() + 16), greedy(0));
  waiter.join();
  ASSERT_TRUE(waited.status.ok()) << waited.status.error_message();
  EXPECT_EQ(waited.ids, greedy(1));
  EXPECT_GT(waited.last.usage().queue_time_ms(), 0);

  // --no-prefix-cache: the same 37-token prompt twice computes every prompt token both times.
  absl::StatusOr<v1::ServerStats> before = Stats(*stub);
  ASSERT_TRUE(before.ok()) << before.status();
  for (int i = 0; i < 2; ++i) {
    const Streamed r = Generate(*stub, Greedy(prompt(2), 16));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.ids, greedy(2));
    EXPECT_EQ(r.last.usage().cached_prompt_tokens(), 0);
  }
  absl::StatusOr<v1::ServerStats> after = Stats(*stub);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->prefix_cache_hit_tokens(), 0);
  EXPECT_EQ(after->prompt_tokens() - before->prompt_tokens(),
            2 * static_cast<int64_t>(prompt(2).size()));

  // Bad options (those cluster_test.cc does not try): INVALID_ARGUMENT naming the field, and the
  // server serves on.
  struct Bad {
    std::string field;
    std::function<void(v1::GenerateRequest&)> set;
  };
  const std::vector<Bad> bad = {
      {"sampling.temperature", [](auto& r) { r.mutable_sampling()->set_temperature(101); }},
      {"sampling.top_k", [](auto& r) { r.mutable_sampling()->set_top_k(-1); }},
      {"sampling.min_p", [](auto& r) { r.mutable_sampling()->set_min_p(1.5f); }},
      {"sampling.repetition_penalty",
       [](auto& r) { r.mutable_sampling()->set_repetition_penalty(0); }},
      {"sampling.presence_penalty", [](auto& r) { r.mutable_sampling()->set_presence_penalty(3); }},
      {"sampling.frequency_penalty",
       [](auto& r) { r.mutable_sampling()->set_frequency_penalty(-2.5f); }},
      {"sampling.logit_bias[7]",
       [](auto& r) { (*r.mutable_sampling()->mutable_logit_bias())[7] = 200; }},
      {"sampling.logit_bias",
       [](auto& r) { (*r.mutable_sampling()->mutable_logit_bias())[99999] = 1; }},
      {"stopping.min_tokens", [](auto& r) { r.mutable_stopping()->set_min_tokens(-1); }},
      {"stopping.stop",
       [](auto& r) {
         for (int i = 0; i < 17; ++i) r.mutable_stopping()->add_stop(absl::StrCat("s", i));
       }},
      {"stopping.stop[0]", [](auto& r) { r.mutable_stopping()->add_stop(std::string(300, 'x')); }},
      {"output.top_logprobs", [](auto& r) { r.mutable_output()->set_top_logprobs(21); }},
      {"n", [](auto& r) { r.set_n(17); }},
      {"model", [](auto& r) { r.set_model("not-this-one"); }},
  };
  for (const Bad& b : bad) {
    v1::GenerateRequest req = Greedy(prompt(0), 4);
    b.set(req);
    const Streamed r = Generate(*stub, req, absl::Seconds(30));
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << b.field << ": " << r.status.error_message();
    EXPECT_THAT(r.status.error_message(), HasSubstr(b.field + ":"));
  }
  const Streamed ok = Generate(*stub, Greedy(prompt(0), 16));
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.ids, greedy(0));
}

}  // namespace
}  // namespace tpserve::testing
