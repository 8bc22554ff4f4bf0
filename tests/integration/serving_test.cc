// The serving engine end to end (issue 5's Proof): a real tpserve-coordinator and 2 real
// tpserve-worker processes on loopback serving a tiny golden checkpoint, driven over gRPC.
// Batch invariance of seeded sampling, prefix-cache hits, cancellation and Abort, preemption under
// a tiny KV budget, n > 1 (deadlines: serving_smollm_test.cc, where a generation surely outlasts
// 300 ms). Expected tokens come from the transformers goldens
// (tests/data/golden/models/README.md) or from the same request run alone.
#include <algorithm>
#include <cstdio>
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

constexpr char kModel[] = "llama-gqa-llama3";  // vocab 384, 256 positions, 2 KV heads
constexpr int kBlockSize = 4;                  // tokens per KV block: prompts span many blocks
// Each worker's --memory-budget for the shared cluster: ~1 MiB of weights and step activations
// plus ~2000 KV blocks of 1 KiB, far more than the tests need (no preemption there).
constexpr int64_t kBudget = 3 << 20;
// Coordinator flags shared by the clusters of this file (the budget arithmetic of the
// preemption test needs the same activation sizes, which depend on these two).
const std::vector<std::string> kEngineArgs = {
    "--kv-block-size", std::to_string(kBlockSize), "--max-batch-tokens", "256", "--max-seqs", "64"};

std::string ModelPath() { return absl::StrCat(kGoldenModels, "/", kModel); }

// One cluster for the suite: shared by every test when the binary runs them all, one per test
// under ctest (gtest_discover_tests runs each test in its own process).
class ServingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ =
        new LocalCluster(ModelPath(), 2, kEngineArgs, {"--memory-budget", std::to_string(kBudget)});
    const absl::Status up = cluster_->WaitHealth(true, absl::Seconds(90));
    ASSERT_TRUE(up.ok()) << up;
    stub_ = cluster_->Stub().release();
    absl::StatusOr<v1::ModelInfo> info = Info(*stub_);
    ASSERT_TRUE(info.ok()) << info.status();
    info_ = new v1::ModelInfo(*info);
  }
  static void TearDownTestSuite() {
    delete info_;
    delete stub_;
    delete cluster_;  // stops the processes
    info_ = nullptr;
    stub_ = nullptr;
    cluster_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(info_, nullptr) << "the shared cluster did not start";
    golden_ = ExpectedGolden(kModel);
  }
  // Prompt and greedy continuation of golden case `i`.
  std::vector<int32_t> GoldenPrompt(int i) const {
    return golden_["cases"][i]["input_ids"].get<std::vector<int32_t>>();
  }
  std::vector<int32_t> GoldenGreedy(int i) const {
    return golden_["cases"][i]["greedy"].get<std::vector<int32_t>>();
  }

  static LocalCluster* cluster_;
  static v1::Inference::Stub* stub_;
  static v1::ModelInfo* info_;
  nlohmann::json golden_;
};

LocalCluster* ServingTest::cluster_ = nullptr;
v1::Inference::Stub* ServingTest::stub_ = nullptr;
v1::ModelInfo* ServingTest::info_ = nullptr;

int Usage(const Streamed& r, int32_t (v1::Usage::*field)() const) {
  return (r.last.usage().*field)();
}

// A seeded, sampled request (and a greedy one) gives the same tokens alone and inside a batch of
// 31 other requests with other prompts, lengths, seeds and options that run at the same time.
TEST_F(ServingTest, SeededAndGreedyRequestsAreBatchInvariant) {
  const int vocab = info_->vocab_size();
  const v1::GenerateRequest sampled = Sampled(GoldenPrompt(1), 24, 0.8f, 0.9f, 1234);
  const v1::GenerateRequest greedy = Greedy(GoldenPrompt(2), 16);

  const Streamed sampled_alone = Generate(*stub_, sampled);
  ASSERT_TRUE(sampled_alone.status.ok()) << sampled_alone.status.error_message();
  ASSERT_EQ(sampled_alone.ids.size(), 24u);
  EXPECT_EQ(sampled_alone.last.usage().seed(), 1234u);
  const Streamed greedy_alone = Generate(*stub_, greedy);
  ASSERT_TRUE(greedy_alone.status.ok()) << greedy_alone.status.error_message();
  EXPECT_EQ(greedy_alone.ids, GoldenGreedy(2));
  // The comparison below can fail: sampling really changes the tokens (vs greedy and vs another
  // seed), and the same seed alone reproduces them.
  EXPECT_NE(sampled_alone.ids, Generate(*stub_, Greedy(GoldenPrompt(1), 24)).ids);
  EXPECT_NE(sampled_alone.ids,
            Generate(*stub_, Sampled(GoldenPrompt(1), 24, 0.8f, 0.9f, 4321)).ids);
  EXPECT_EQ(sampled_alone.ids, Generate(*stub_, sampled).ids);

  // 30 others: random prompts of 3..45 tokens, 40..64 new tokens, a mix of greedy and sampled
  // with other seeds, top_k, top_p, min_p and penalties. They start first and outlive the two.
  std::vector<v1::GenerateRequest> others;
  for (int i = 0; i < 30; ++i) {
    const std::vector<int32_t> prompt = RandomPrompt(100 + i, 3 + (i * 7) % 43, vocab);
    const int max_tokens = 40 + (i * 5) % 25;
    if (i % 4 == 0) {
      others.push_back(Greedy(prompt, max_tokens));
      continue;
    }
    v1::GenerateRequest r =
        Sampled(prompt, max_tokens, 0.5f + 0.1f * (i % 8), 0.8f + 0.02f * (i % 10), 1000 + i);
    if (i % 3 == 0) r.mutable_sampling()->set_top_k(5 + i);
    if (i % 5 == 0) r.mutable_sampling()->set_min_p(0.05f);
    if (i % 7 == 0) r.mutable_sampling()->set_repetition_penalty(1.2f);
    if (i % 6 == 1) r.mutable_sampling()->set_presence_penalty(0.5f);
    others.push_back(r);
  }
  // The two start once most of the others run (the batch is then a mix of their prefill chunks
  // and the others' decodes).
  const BatchRun run = RunInsideABatch(*stub_, {sampled, greedy}, others, /*min_running=*/20,
                                       absl::Seconds(10), absl::Seconds(120));
  const Streamed& sampled_batched = run.targets[0];
  const Streamed& greedy_batched = run.targets[1];
  const std::vector<Streamed>& other_results = run.others;

  ASSERT_TRUE(sampled_batched.status.ok()) << sampled_batched.status.error_message();
  ASSERT_TRUE(greedy_batched.status.ok()) << greedy_batched.status.error_message();
  EXPECT_EQ(sampled_batched.ids, sampled_alone.ids);
  EXPECT_EQ(greedy_batched.ids, GoldenGreedy(2));
  EXPECT_GE(run.max_running, 20) << "the requests did not run as one batch";
  // Others still running when both targets had ended: they shared every step of the two.
  std::printf("[  figures ] max running %d, others outliving the two %d\n", run.max_running,
              run.others_outliving);
  EXPECT_GE(run.others_outliving, 10);
  for (size_t i = 0; i < others.size(); ++i) {
    ASSERT_TRUE(other_results[i].status.ok())
        << i << ": " << other_results[i].status.error_message();
    EXPECT_EQ(static_cast<int>(other_results[i].ids.size()), others[i].stopping().max_tokens())
        << i;
  }
  EXPECT_TRUE(WaitIdle(*stub_, absl::Seconds(5)).ok());
}

// The same long prompt twice: the second reuses its whole cached blocks (all but the block of
// the last prompt token, which must be computed to sample from), the output is unchanged, and
// ServerStats moves by the same amounts.
TEST_F(ServingTest, PrefixCacheReusesWholeBlocksWithTheSameOutput) {
  const std::vector<int32_t> prompt = RandomPrompt(77, 38, info_->vocab_size());  // 9.5 blocks
  // BlockManager::FindCachedPrefix: whole blocks, leaving at least the last prompt token.
  const int reusable = (static_cast<int>(prompt.size()) - 1) / kBlockSize * kBlockSize;
  absl::StatusOr<v1::ServerStats> before = Stats(*stub_);
  ASSERT_TRUE(before.ok()) << before.status();
  const Streamed first = Generate(*stub_, Greedy(prompt, 12));
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_EQ(Usage(first, &v1::Usage::cached_prompt_tokens), 0);
  absl::StatusOr<v1::ServerStats> middle = Stats(*stub_);
  ASSERT_TRUE(middle.ok()) << middle.status();
  EXPECT_EQ(middle->prefix_cache_hit_tokens(), before->prefix_cache_hit_tokens());
  EXPECT_EQ(middle->prompt_tokens() - before->prompt_tokens(), static_cast<int64_t>(prompt.size()));

  const Streamed second = Generate(*stub_, Greedy(prompt, 12));
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  const int cached = Usage(second, &v1::Usage::cached_prompt_tokens);
  EXPECT_EQ(cached, reusable);
  EXPECT_EQ(Usage(second, &v1::Usage::prompt_tokens), static_cast<int>(prompt.size()));
  EXPECT_EQ(second.ids, first.ids);
  absl::StatusOr<v1::ServerStats> after = Stats(*stub_);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->prefix_cache_hit_tokens() - middle->prefix_cache_hit_tokens(), cached);
  EXPECT_EQ(after->prompt_tokens() - middle->prompt_tokens(),
            static_cast<int64_t>(prompt.size()) - cached);

  // Against the reference: a golden prompt served from the cache gives the golden tokens.
  const Streamed warm = Generate(*stub_, Greedy(GoldenPrompt(2), 16));
  const Streamed hit = Generate(*stub_, Greedy(GoldenPrompt(2), 16));
  ASSERT_TRUE(hit.status.ok()) << hit.status.error_message();
  EXPECT_EQ(Usage(hit, &v1::Usage::cached_prompt_tokens),
            (static_cast<int>(GoldenPrompt(2).size()) - 1) / kBlockSize * kBlockSize);
  EXPECT_EQ(warm.ids, GoldenGreedy(2));
  EXPECT_EQ(hit.ids, GoldenGreedy(2));
}

// A stream cancelled by its client and another aborted by id from a second connection both end
// (CANCELLED / finish_reason ABORTED), their KV blocks are freed, and the server serves on.
TEST_F(ServingTest, CancelAndAbortFreeTheBlocks) {
  const int vocab = info_->vocab_size();
  grpc::ClientContext cancelled_ctx;
  cancelled_ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto cancelled = stub_->Generate(&cancelled_ctx, Greedy(RandomPrompt(5, 20, vocab), 230));

  v1::GenerateRequest to_abort = Greedy(RandomPrompt(6, 20, vocab), 230);
  to_abort.set_request_id("e2e-abort-me");
  grpc::ClientContext aborted_ctx;
  aborted_ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto aborted = stub_->Generate(&aborted_ctx, to_abort);

  v1::GenerateResponse resp;
  ASSERT_TRUE(cancelled->Read(&resp)) << cluster_->Logs();
  ASSERT_TRUE(aborted->Read(&resp)) << cluster_->Logs();
  EXPECT_EQ(resp.request_id(), "e2e-abort-me");
  absl::StatusOr<v1::ServerStats> busy = Stats(*stub_);
  ASSERT_TRUE(busy.ok()) << busy.status();
  EXPECT_EQ(busy->running(), 2);
  EXPECT_GT(busy->kv_blocks_used(), 0);

  cancelled_ctx.TryCancel();
  int cancelled_tokens = 1;
  while (cancelled->Read(&resp)) cancelled_tokens += resp.tokens_size();
  EXPECT_EQ(cancelled->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(cancelled_tokens, 230);

  {
    auto other = StubOnNewConnection(cluster_->address());
    grpc::ClientContext ctx;
    v1::AbortRequest req;
    req.set_request_id("e2e-abort-me");
    v1::AbortResponse ignored;
    const grpc::Status st = other->Abort(&ctx, req, &ignored);
    EXPECT_TRUE(st.ok()) << st.error_message();
  }
  int aborted_tokens = 1;
  v1::GenerateResponse last;
  while (aborted->Read(&resp)) {
    aborted_tokens += resp.tokens_size();
    last = resp;
  }
  const grpc::Status aborted_status = aborted->Finish();
  EXPECT_TRUE(aborted_status.ok()) << aborted_status.error_message();
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_ABORTED);
  EXPECT_LT(aborted_tokens, 230);
  EXPECT_EQ(last.usage().completion_tokens(), aborted_tokens);

  const absl::Status idle = WaitIdle(*stub_, absl::Seconds(5));
  EXPECT_TRUE(idle.ok()) << idle;
  const Streamed next = Generate(*stub_, Greedy(GoldenPrompt(0), 16));
  ASSERT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_EQ(next.ids, GoldenGreedy(0));
}

// Workers with a --memory-budget that leaves room for only kTinyPool KV blocks, twelve concurrent
// requests (two with n = 2) that need several times that: the engine preempts and recomputes, and
// every request still gets exactly the greedy tokens it gets alone on an unconstrained cluster (the
// goldens for the golden prompts), none lost or duplicated.
TEST_F(ServingTest, PreemptionUnderATinyKvBudgetKeepsEveryToken) {
  constexpr int kTinyPool = 24;  // blocks of 4 tokens: the largest request needs 18
  // The budget: a probe cluster's minus the blocks it has beyond kTinyPool. A worker keeps
  // (budget - weights - activations) / bytes_per_block blocks (worker/service/memory_budget.cc),
  // at most --max-seqs x context / block size; the same weights and activations here (same model,
  // TP, --max-batch-tokens, --max-seqs), and a block holds K and V in the KV dtype ModelInfo
  // reports for every layer, block_size tokens and the rank's KV heads. The shared cluster may
  // sit at the cap (an fp16 cache fits twice the blocks), so a probe with half its budget says
  // where the linear part is.
  const int local_kv_heads = std::max(1, (info_->num_kv_heads() + 1) / 2);
  ASSERT_TRUE(info_->kv_cache_dtype() == "fp16" || info_->kv_cache_dtype() == "fp32")
      << "kv_cache_dtype \"" << info_->kv_cache_dtype() << "\"";
  const int64_t element_bytes = info_->kv_cache_dtype() == "fp16" ? 2 : 4;
  const int64_t bytes_per_block = int64_t{2} * info_->num_layers() * kBlockSize * local_kv_heads *
                                  info_->head_dim() * element_bytes;
  const int64_t cap = int64_t{64} * ((info_->context_length() + kBlockSize - 1) / kBlockSize);
  int64_t budget = 0;
  {
    const int64_t probe_budget = kBudget / 2;
    LocalCluster probe(ModelPath(), 2, kEngineArgs,
                       {"--memory-budget", std::to_string(probe_budget)});
    const absl::Status up = probe.WaitHealth(true, absl::Seconds(90));
    ASSERT_TRUE(up.ok()) << up;
    auto stub = probe.Stub();
    absl::StatusOr<v1::ModelInfo> info = Info(*stub);
    ASSERT_TRUE(info.ok()) << info.status();
    ASSERT_GT(info->kv_blocks(), kTinyPool);
    ASSERT_LT(info->kv_blocks(), cap) << "the probe's pool is capped; lower its budget";
    budget = probe_budget - (info->kv_blocks() - kTinyPool) * bytes_per_block;
  }

  struct Case {
    v1::GenerateRequest req;
    std::vector<std::vector<int32_t>> expected;  // by completion index
  };
  std::vector<Case> cases;
  for (int i = 0; i < 3; ++i) cases.push_back({Greedy(GoldenPrompt(i), 16), {GoldenGreedy(i)}});
  for (int i = 0; i < 7; ++i) {  // 10..28 prompt tokens + 40 new: 13..17 blocks each
    const v1::GenerateRequest req =
        Greedy(RandomPrompt(300 + i, 10 + 3 * i, info_->vocab_size()), 40);
    const Streamed alone = Generate(*stub_, req);
    ASSERT_TRUE(alone.status.ok()) << alone.status.error_message();
    ASSERT_EQ(alone.ids.size(), 40u);
    cases.push_back({req, {alone.ids}});
  }
  // Two seeded n = 2 requests (completions forked from shared prompt blocks; 3 + 2 x 8 blocks):
  // completion i must equal n = 1 with seed + i.
  for (int i = 0; i < 2; ++i) {
    const std::vector<int32_t> prompt = RandomPrompt(400 + i, 12, info_->vocab_size());
    v1::GenerateRequest req = Sampled(prompt, 32, 0.8f, 0.9f, 50 + 10 * i);
    req.set_n(2);
    Case c{req, {}};
    for (int k = 0; k < 2; ++k) {
      const Streamed alone = Generate(*stub_, Sampled(prompt, 32, 0.8f, 0.9f, 50 + 10 * i + k));
      ASSERT_TRUE(alone.status.ok()) << alone.status.error_message();
      c.expected.push_back(alone.ids);
    }
    cases.push_back(c);
  }

  LocalCluster tiny(ModelPath(), 2, kEngineArgs, {"--memory-budget", std::to_string(budget)});
  const absl::Status up = tiny.WaitHealth(true, absl::Seconds(90));
  ASSERT_TRUE(up.ok()) << up;
  auto stub = tiny.Stub();
  absl::StatusOr<v1::ModelInfo> info = Info(*stub);
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->kv_blocks(), kTinyPool) << "the budget arithmetic above no longer matches the "
                                             "worker's sizing; logs:\n"
                                          << tiny.Logs();

  std::vector<Streamed> results(cases.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < cases.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = Generate(*stub, cases[i].req); });
  }
  for (auto& t : threads) t.join();

  int recomputations = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << i << ": " << results[i].status.error_message() << "\n"
                                        << tiny.Logs();
    ASSERT_EQ(results[i].by_index.size(), cases[i].expected.size()) << "request " << i;
    for (size_t k = 0; k < cases[i].expected.size(); ++k) {
      EXPECT_EQ(results[i].by_index[k], cases[i].expected[k]) << "request " << i << "." << k;
      EXPECT_EQ(results[i].usage_by_index[k].completion_tokens(),
                static_cast<int>(cases[i].expected[k].size()))
          << i << "." << k;
      recomputations += results[i].usage_by_index[k].recomputations();
    }
    EXPECT_EQ(results[i].last.finish_reason(), v1::FINISH_REASON_LENGTH) << i;
  }
  absl::StatusOr<v1::ServerStats> stats = Stats(*stub);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->kv_blocks_total(), kTinyPool);
  std::printf("[  figures ] %d KV blocks: %lld preemptions, %d recomputations\n", kTinyPool,
              static_cast<long long>(stats->preemptions()), recomputations);
  EXPECT_GT(stats->preemptions(), 0);
  EXPECT_GT(recomputations, 0);
  // No worker recovery here: every recomputation is one preemption.
  EXPECT_EQ(recomputations, stats->preemptions());
  const absl::Status idle = WaitIdle(*stub, absl::Seconds(5));
  EXPECT_TRUE(idle.ok()) << idle;
}

// n = 3 with a seed: three completions, completion i equal to the same request with n = 1 and
// seed + i (so each is reproducible and completion 0 is the n = 1 result), streamed interleaved
// by index over Generate and returned as choices by Complete.
TEST_F(ServingTest, NCompletionsAreEachReproducible) {
  constexpr int kN = 3;
  constexpr int kTokens = 16;
  constexpr uint64_t kSeed = 42;
  v1::GenerateRequest req = Sampled(GoldenPrompt(1), kTokens, 0.8f, 0.9f, kSeed);
  req.set_n(kN);

  std::vector<std::vector<int32_t>> expected(kN);
  for (int i = 0; i < kN; ++i) {
    const Streamed one = Generate(*stub_, Sampled(GoldenPrompt(1), kTokens, 0.8f, 0.9f, kSeed + i));
    ASSERT_TRUE(one.status.ok()) << one.status.error_message();
    ASSERT_EQ(one.ids.size(), static_cast<size_t>(kTokens));
    expected[i] = one.ids;
  }
  EXPECT_NE(expected[0], expected[1]);  // the seeds matter: the comparisons below can fail
  EXPECT_NE(expected[1], expected[2]);

  // Generate: responses tagged with their index, one final response (finish_reason, usage) each.
  std::vector<std::vector<int32_t>> streamed(kN);
  std::vector<int> finals(kN, 0);
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    auto reader = stub_->Generate(&ctx, req);
    v1::GenerateResponse resp;
    while (reader->Read(&resp)) {
      ASSERT_GE(resp.index(), 0);
      ASSERT_LT(resp.index(), kN);
      ASSERT_EQ(finals[resp.index()], 0)
          << "a response after completion " << resp.index() << " ended";
      for (const v1::Token& t : resp.tokens()) streamed[resp.index()].push_back(t.id());
      if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        ++finals[resp.index()];
        EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_LENGTH);
        EXPECT_EQ(resp.usage().completion_tokens(), kTokens) << "completion " << resp.index();
      }
    }
    const grpc::Status st = reader->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  for (int i = 0; i < kN; ++i) {
    EXPECT_EQ(finals[i], 1) << "completion " << i;
    EXPECT_EQ(streamed[i], expected[i]) << "completion " << i;
  }

  // Complete: the same completions as choices; the top-level fields repeat choice 0.
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  v1::CompleteResponse done;
  const grpc::Status st = stub_->Complete(&ctx, req, &done);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(done.choices_size(), kN);
  for (int i = 0; i < kN; ++i) {
    EXPECT_EQ(done.choices(i).index(), i);
    std::vector<int32_t> ids;
    for (const v1::Token& t : done.choices(i).tokens()) ids.push_back(t.id());
    EXPECT_EQ(ids, expected[i]) << "choice " << i;
  }
  std::vector<int32_t> top;
  for (const v1::Token& t : done.tokens()) top.push_back(t.id());
  EXPECT_EQ(top, expected[0]);
  EXPECT_EQ(done.usage().completion_tokens(), kN * kTokens);
  EXPECT_EQ(done.usage().prompt_tokens(), static_cast<int>(GoldenPrompt(1).size()));
  const absl::Status idle = WaitIdle(*stub_, absl::Seconds(5));
  EXPECT_TRUE(idle.ok()) << idle;
}

}  // namespace
}  // namespace tpserve::testing
