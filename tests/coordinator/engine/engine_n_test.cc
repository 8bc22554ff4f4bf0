// n > 1 completions through the engine loop with a fake StepExecutor whose sampled token is a
// function of the plan's (seed, step_index) only, like a counter-based sampler: what each
// completion gets tells which seed and step counter the engine planned for it. Checks the fork
// (children share the prompt's full blocks), seeds (completion i == an n = 1 request with seed +
// i), per-completion finish reasons and usage, aborts that free everything, preemption of forked
// children, and the engine observer's reports.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "coordinator/engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tpserve::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

constexpr int kVocab = 97;

// The token a completion with `seed` samples at output position `step`.
TokenId TokenFor(uint64_t seed, int step) {
  return static_cast<TokenId>((seed * 13 + static_cast<uint64_t>(step) * 5 + 3) % kVocab);
}

class SeededExecutor : public StepExecutor {
 public:
  absl::StatusOr<StepOutput> Execute(const StepPlan& plan) override {
    absl::MutexLock lock(&mu_);
    plans_.push_back(plan);
    ++executing_;
    mu_.Await(absl::Condition(
        +[](SeededExecutor* e) { return e->pause_at_ == 0 || e->executing_ < e->pause_at_; },
        this));
    StepOutput out;
    for (const PlanSequence& s : plan.sequences) {
      if (!s.sample) continue;
      out.tokens.push_back({.seq_id = s.seq_id, .token = TokenFor(s.sampling.seed, s.step_index)});
    }
    if (delay_ > absl::ZeroDuration()) absl::SleepFor(delay_);
    return out;
  }
  bool ready() const override { return true; }

  // Step number `n` (1-based) waits in Execute until Resume(); 0: never wait.
  void PauseAt(int n) {
    absl::MutexLock lock(&mu_);
    pause_at_ = n;
  }
  bool WaitPaused(absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(
        absl::Condition(
            +[](SeededExecutor* e) { return e->pause_at_ > 0 && e->executing_ >= e->pause_at_; },
            this),
        timeout);
  }
  void Resume() { PauseAt(0); }
  void set_delay(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    delay_ = d;
  }
  std::vector<StepPlan> plans() const {
    absl::MutexLock lock(&mu_);
    return plans_;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<StepPlan> plans_;
  int executing_ = 0;
  int pause_at_ = 0;
  absl::Duration delay_;
};

// Outputs per completion index; Wait() returns once the done output arrived.
struct Collector {
  absl::Mutex mu;
  std::vector<RequestOutput> outputs;
  bool done = false;
  int dones = 0;

  RequestSink Sink() {
    return [this](RequestOutput o) {
      absl::MutexLock lock(&mu);
      EXPECT_FALSE(done) << "output after the done one";
      done = o.done;
      dones += o.done ? 1 : 0;
      outputs.push_back(std::move(o));
    };
  }
  bool Wait(absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&mu);
    return mu.AwaitWithTimeout(absl::Condition(&done), timeout);
  }
  std::vector<TokenId> Ids(int index) {
    absl::MutexLock lock(&mu);
    std::vector<TokenId> ids;
    for (const auto& o : outputs) {
      if (o.index != index) continue;
      for (const auto& t : o.tokens) ids.push_back(t.id);
    }
    return ids;
  }
  // The output that ended completion `index` (the one with its finish reason).
  std::vector<RequestOutput> Ends(int index) {
    absl::MutexLock lock(&mu);
    std::vector<RequestOutput> ends;
    for (const auto& o : outputs) {
      if (o.index == index && o.finish_reason != FinishReason::kNone) ends.push_back(o);
    }
    return ends;
  }
  int Count(int index) {
    absl::MutexLock lock(&mu);
    int n = 0;
    for (const auto& o : outputs) n += o.index == index ? 1 : 0;
    return n;
  }
};

EngineConfig Config() {
  EngineConfig c;
  c.vocab_size = kVocab;
  c.scheduler.num_blocks = 64;
  c.scheduler.block_size = 4;
  c.scheduler.max_model_len = 64;
  c.scheduler.max_num_batched_tokens = 32;
  c.scheduler.max_num_seqs = 8;
  c.scheduler.max_waiting = 4;
  c.scheduler.eos_token_ids = {2};
  return c;
}

RequestOptions Opts(int n, uint64_t seed, int max_tokens, int prompt_len = 9) {
  RequestOptions o;
  for (int i = 0; i < prompt_len; ++i) o.prompt.push_back(10 + i);
  o.n = n;
  o.max_tokens = max_tokens;
  o.sampling.seed = seed;
  o.sampling.temperature = 1.0f;
  o.ignore_eos = true;
  return o;
}

std::vector<TokenId> Expected(uint64_t seed, int count) {
  std::vector<TokenId> ids;
  for (int k = 0; k < count; ++k) ids.push_back(TokenFor(seed, k));
  return ids;
}

// Stats are refreshed at the end of the step that delivered the last output: wait for them.
EngineStats WaitForEmptyPool(Engine& engine) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  EngineStats s = engine.stats();
  while ((s.blocks.used > 0 || s.running > 0) && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
    s = engine.stats();
  }
  return s;
}

const PlanSequence* Find(const StepPlan& plan, SeqId id) {
  for (const PlanSequence& s : plan.sequences) {
    if (s.seq_id == id) return &s;
  }
  return nullptr;
}

TEST(EngineNTest, ChildrenShareThePromptBlocksAndRecomputeOnlyTheTail) {
  SeededExecutor exec;
  exec.PauseAt(3);  // step 1: prompt prefill; 2: decode + children's tails; 3: three decodes
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector c;
  // 9 prompt tokens, 4 per block: blocks 0 and 1 full, block 2 holds token 8.
  ASSERT_TRUE((*engine)->Submit("r", Opts(3, 100, 4), c.Sink()).ok());
  ASSERT_TRUE(exec.WaitPaused());
  const EngineStats paused = (*engine)->stats();
  // Each sequence holds 3 blocks (10 tokens); the 2 full prompt blocks are shared by all three:
  // 2 shared + 3 own tails = 5 blocks, not 9.
  EXPECT_EQ(paused.blocks.used, 5);
  EXPECT_EQ(paused.running, 3);
  exec.Resume();
  ASSERT_TRUE(c.Wait());

  const std::vector<StepPlan> plans = exec.plans();
  ASSERT_GE(plans.size(), 2u);
  ASSERT_EQ(plans[0].sequences.size(), 1u);  // only completion 0 prefills the prompt
  const PlanSequence& parent = plans[0].sequences[0];
  EXPECT_EQ(parent.tokens.size(), 9u);
  ASSERT_EQ(parent.block_table.size(), 3u);
  for (SeqId child = parent.seq_id + 1; child <= parent.seq_id + 2; ++child) {
    const PlanSequence* s = Find(plans[1], child);
    ASSERT_NE(s, nullptr) << "child " << child;
    EXPECT_EQ(s->start_position, 8);  // recomputes only the partial block: token 8
    EXPECT_THAT(s->tokens, ElementsAre(18));
    EXPECT_TRUE(s->sample);
    EXPECT_EQ(s->step_index, 0);
    ASSERT_EQ(s->block_table.size(), 3u);
    EXPECT_EQ(s->block_table[0], parent.block_table[0]);
    EXPECT_EQ(s->block_table[1], parent.block_table[1]);
    EXPECT_NE(s->block_table[2], parent.block_table[2]);
  }
  EXPECT_EQ(WaitForEmptyPool(**engine).blocks.used, 0);
}

TEST(EngineNTest, PromptOnABlockBoundaryLeavesTheLastBlockToRecompute) {
  SeededExecutor exec;
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector c;
  ASSERT_TRUE((*engine)->Submit("r", Opts(2, 5, 2, /*prompt_len=*/8), c.Sink()).ok());
  ASSERT_TRUE(c.Wait());
  const std::vector<StepPlan> plans = exec.plans();
  ASSERT_GE(plans.size(), 2u);
  const PlanSequence& parent = plans[0].sequences[0];
  const PlanSequence* child = Find(plans[1], parent.seq_id + 1);
  ASSERT_NE(child, nullptr);
  EXPECT_EQ(child->start_position, 4);  // shares block 0, recomputes block 1 (tokens 4..7)
  EXPECT_THAT(child->tokens, ElementsAre(14, 15, 16, 17));
  EXPECT_EQ(child->block_table[0], parent.block_table[0]);
  EXPECT_THAT(c.Ids(1), ElementsAreArray(Expected(6, 2)));
}

TEST(EngineNTest, CompletionIUsesSeedPlusIAndCompletionZeroEqualsNOne) {
  SeededExecutor exec;
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector n3, n1;
  ASSERT_TRUE((*engine)->Submit("n3", Opts(3, 1000, 5), n3.Sink()).ok());
  ASSERT_TRUE(n3.Wait());
  ASSERT_TRUE((*engine)->Submit("n1", Opts(1, 1000, 5), n1.Sink()).ok());
  ASSERT_TRUE(n1.Wait());
  EXPECT_EQ(n3.Ids(0), n1.Ids(0));
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(n3.Ids(i), ElementsAreArray(Expected(1000 + i, 5))) << "completion " << i;
    const std::vector<RequestOutput> ends = n3.Ends(i);
    ASSERT_EQ(ends.size(), 1u) << "completion " << i;
    EXPECT_EQ(ends[0].finish_reason, FinishReason::kLength);
    EXPECT_EQ(ends[0].usage.prompt_tokens, 9);
    EXPECT_EQ(ends[0].usage.completion_tokens, 5);
    EXPECT_EQ(ends[0].usage.seed, 1000u + i);
  }
  EXPECT_EQ(n3.dones, 1);
  EXPECT_EQ((*engine)->stats().requests_finished, 2);
}

TEST(EngineNTest, EachCompletionHasItsOwnFinishReason) {
  SeededExecutor exec;
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  // Completion 1 (seed 8) samples this token at its second step; the others never do.
  RequestOptions o = Opts(3, 7, 6);
  const TokenId stop = TokenFor(8, 1);
  for (int i : {0, 2}) {
    for (TokenId t : Expected(7 + i, 6)) ASSERT_NE(t, stop) << "pick another stop token";
  }
  ASSERT_NE(TokenFor(8, 0), stop);
  o.stop_token_ids = {stop};
  Collector c;
  ASSERT_TRUE((*engine)->Submit("r", o, c.Sink()).ok());
  ASSERT_TRUE(c.Wait());
  EXPECT_EQ(c.Ends(0).at(0).finish_reason, FinishReason::kLength);
  EXPECT_EQ(c.Ends(1).at(0).finish_reason, FinishReason::kStop);
  EXPECT_EQ(c.Ends(1).at(0).usage.completion_tokens, 2);
  EXPECT_EQ(c.Ends(2).at(0).finish_reason, FinishReason::kLength);
  EXPECT_THAT(c.Ids(1), ElementsAre(TokenFor(8, 0), stop));
}

TEST(EngineNTest, AbortingAnNThreeRequestEndsEveryCompletionAndFreesEverything) {
  SeededExecutor exec;
  exec.set_delay(absl::Milliseconds(2));
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector c;
  ASSERT_TRUE((*engine)->Submit("r", Opts(3, 1, 50), c.Sink()).ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline && (c.Count(1) == 0 || c.Count(2) == 0)) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_TRUE((*engine)->Abort("r").ok());
  ASSERT_TRUE(c.Wait());
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(c.Ends(i).size(), 1u) << "completion " << i;
    EXPECT_EQ(c.Ends(i)[0].finish_reason, FinishReason::kAborted);
    EXPECT_LT(c.Ends(i)[0].usage.completion_tokens, 50);
  }
  EXPECT_EQ(c.dones, 1);
  EXPECT_EQ((*engine)->Abort("r").code(), absl::StatusCode::kNotFound);  // id released
  const EngineStats s = WaitForEmptyPool(**engine);
  EXPECT_EQ(s.blocks.used, 0);
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.waiting, 0);
}

TEST(EngineNTest, AbortBeforeTheForkEndsTheCompletionsThatNeverStarted) {
  SeededExecutor exec;
  exec.PauseAt(1);  // the prompt's prefill
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector c;
  ASSERT_TRUE((*engine)->Submit("r", Opts(3, 1, 8), c.Sink()).ok());
  ASSERT_TRUE(exec.WaitPaused());
  ASSERT_TRUE((*engine)->Abort("r").ok());
  exec.Resume();
  ASSERT_TRUE(c.Wait());
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(c.Ends(i).size(), 1u) << "completion " << i;
    EXPECT_EQ(c.Ends(i)[0].finish_reason, FinishReason::kAborted);
  }
  EXPECT_EQ(WaitForEmptyPool(**engine).blocks.used, 0);
}

TEST(EngineNTest, PreemptedChildrenRecomputeToTheSameTokens) {
  SeededExecutor exec;
  EngineConfig cfg = Config();
  // 5 prompt tokens + 12 outputs = 5 blocks per sequence; three of them sharing one prompt
  // block need 13 of these 8: the newest children are preempted and recomputed.
  cfg.scheduler.num_blocks = 8;
  auto engine = Engine::Create(cfg, exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector c;
  ASSERT_TRUE((*engine)->Submit("r", Opts(3, 40, 12, /*prompt_len=*/5), c.Sink()).ok());
  ASSERT_TRUE(c.Wait());
  int recomputations = 0;
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(c.Ids(i), ElementsAreArray(Expected(40 + i, 12))) << "completion " << i;
    recomputations += c.Ends(i).at(0).usage.recomputations;
  }
  EXPECT_GT(recomputations, 0);
  const EngineStats s = WaitForEmptyPool(**engine);
  EXPECT_EQ(s.blocks.used, 0);
  EXPECT_GT(s.preemptions, 0);
}

TEST(EngineNTest, RejectsNOutsideOneToSixteenOrPastTheBatch) {
  SeededExecutor exec;
  auto engine = Engine::Create(Config(), exec, nullptr);  // max_num_seqs 8
  ASSERT_TRUE(engine.ok()) << engine.status();
  for (int n : {0, 17, 9, 5}) {  // 9 passes the batch (8), 5 the queue limit (4)
    Collector c;
    auto st = (*engine)->Submit("", Opts(n, 1, 2), c.Sink());
    EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(st.status().message().substr(0, 2), "n:");
  }
}

TEST(EngineNTest, NCompletionsCountNAgainstTheQueueAndTheBatch) {
  SeededExecutor exec;
  exec.PauseAt(1);  // the loop thread waits inside step 1: later submissions stay queued
  EngineConfig config = Config();
  config.scheduler.max_num_seqs = 4;  // max_waiting 4 too
  auto engine = Engine::Create(config, exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Engine& e = **engine;
  Collector a, b, c, d;
  ASSERT_TRUE(e.Submit("a", Opts(4, 1, 3), a.Sink()).ok());  // the whole batch
  ASSERT_TRUE(exec.WaitPaused());
  ASSERT_TRUE(e.Submit("b", Opts(3, 2, 3), b.Sink()).ok());  // 3 of the 4 queue places
  const auto full = e.Submit("c", Opts(2, 3, 3), c.Sink());
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted) << full.status();
  ASSERT_TRUE(e.Submit("d", Opts(1, 4, 3), d.Sink()).ok());  // the last place
  exec.Resume();
  for (Collector* col : {&a, &b, &d}) ASSERT_TRUE(col->Wait());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(b.Ids(i), Expected(2 + i, 3)) << "completion " << i;
  // "a" held all 4 places from its admission, then "b" 3: no step ran more than 4 sequences.
  for (const StepPlan& plan : exec.plans()) EXPECT_LE(plan.sequences.size(), 4u);
  const EngineStats s = WaitForEmptyPool(e);
  EXPECT_EQ(s.blocks.used, 0);
}

class RecordingObserver : public EngineObserver {
 public:
  void OnTokenGaps(std::span<const absl::Duration> gaps) override {
    absl::MutexLock lock(&mu);
    num_gaps += static_cast<int>(gaps.size());
  }
  void OnRequestEnd(const RequestRecord& r) override {
    absl::MutexLock lock(&mu);
    records.push_back(r);
  }
  absl::Mutex mu;
  int num_gaps = 0;
  std::vector<RequestRecord> records;
};

TEST(EngineNTest, ObserverGetsEveryRequestAndEachTokenGap) {
  SeededExecutor exec;
  RecordingObserver obs;
  auto engine = Engine::Create(Config(), exec, nullptr, &obs);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector c;
  ASSERT_TRUE((*engine)->Submit("r", Opts(2, 3, 4), c.Sink()).ok());
  ASSERT_TRUE(c.Wait());
  (*engine)->Stop();
  absl::MutexLock lock(&obs.mu);
  ASSERT_EQ(obs.records.size(), 1u);
  const RequestRecord& r = obs.records[0];
  EXPECT_EQ(r.num_completions, 2);
  EXPECT_EQ(r.prompt_tokens, 9);
  EXPECT_EQ(r.completion_tokens, 8);
  EXPECT_EQ(r.finish_reason, FinishReason::kLength);
  EXPECT_FALSE(r.failed);
  EXPECT_NE(r.time_to_first_token, absl::InfiniteDuration());
  EXPECT_GE(r.e2e, r.time_to_first_token);
  EXPECT_EQ(obs.num_gaps, 2 * (4 - 1));  // every token after its completion's first
}

TEST(EngineNTest, IdleEngineReportsProgress) {
  SeededExecutor exec;
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector c;
  ASSERT_TRUE((*engine)->Submit("r", Opts(2, 3, 2), c.Sink()).ok());
  ASSERT_TRUE(c.Wait());
  absl::SleepFor(absl::Milliseconds(250));  // > idle_wait: the loop went round idle
  const EngineStats s = (*engine)->stats();
  EXPECT_FALSE(s.busy);
  EXPECT_LT(absl::Now() - s.last_progress, absl::Seconds(1));
}

TEST(EngineNTest, StuckStepLeavesTheEngineBusyWithoutProgress) {
  SeededExecutor exec;
  exec.PauseAt(2);
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector c;
  ASSERT_TRUE((*engine)->Submit("r", Opts(1, 3, 4), c.Sink()).ok());
  ASSERT_TRUE(exec.WaitPaused());
  const absl::Time before = (*engine)->stats().last_progress;
  absl::SleepFor(absl::Milliseconds(250));
  const EngineStats s = (*engine)->stats();
  EXPECT_TRUE(s.busy);
  EXPECT_EQ(s.last_progress, before);  // no step completed while it hangs
  exec.Resume();
  ASSERT_TRUE(c.Wait());
  EXPECT_GT((*engine)->stats().last_progress, before);
}

}  // namespace
}  // namespace tpserve::engine
