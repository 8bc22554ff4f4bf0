// Policy tests of the engine loop with a fake StepExecutor (no workers): what reaches the plan,
// how sampled tokens become outputs and finish reasons, aborts, failed steps, validation.
#include "coordinator/engine/engine.h"

#include <atomic>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tpserve::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Samples (last fed token + 1) % vocab for every sampled sequence; records the plans.
class FakeExecutor : public StepExecutor {
 public:
  absl::StatusOr<StepOutput> Execute(const StepPlan& plan) override {
    absl::MutexLock lock(&mu_);
    plans_.push_back(plan);
    if (delay_ > absl::ZeroDuration()) absl::SleepFor(delay_);
    if (fail_at_step_ > 0 && static_cast<int>(plans_.size()) == fail_at_step_) {
      ready_ = false;
      return absl::UnavailableError("rank 1: connection lost");
    }
    StepOutput out;
    for (const PlanSequence& s : plan.sequences) {
      if (!s.sample) continue;
      out.tokens.push_back(
          {.seq_id = s.seq_id, .token = (s.tokens.back() + 1) % 100, .logprob = -0.5f});
    }
    return out;
  }
  bool ready() const override {
    absl::MutexLock lock(&mu_);
    return ready_;
  }
  std::string not_ready_reason() const override { return "rank 1 lost"; }

  std::vector<StepPlan> plans() const {
    absl::MutexLock lock(&mu_);
    return plans_;
  }
  void set_fail_at_step(int n) {
    absl::MutexLock lock(&mu_);
    fail_at_step_ = n;
  }
  void set_delay(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    delay_ = d;
  }
  void set_ready(bool r) {
    absl::MutexLock lock(&mu_);
    ready_ = r;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<StepPlan> plans_;
  int fail_at_step_ = 0;
  absl::Duration delay_;
  bool ready_ = true;
};

// Collects a request's outputs; Wait() returns once the last one arrived.
struct Collector {
  absl::Mutex mu;
  std::vector<RequestOutput> outputs;
  bool done = false;

  RequestSink Sink() {
    return [this](RequestOutput o) {
      absl::MutexLock lock(&mu);
      EXPECT_FALSE(done) << "output after the last one";
      done = o.last();
      outputs.push_back(std::move(o));
    };
  }
  bool Wait(absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&mu);
    return mu.AwaitWithTimeout(absl::Condition(&done), timeout);
  }
  std::vector<TokenId> Ids() {
    absl::MutexLock lock(&mu);
    std::vector<TokenId> ids;
    for (const auto& o : outputs) {
      for (const auto& t : o.tokens) ids.push_back(t.id);
    }
    return ids;
  }
  RequestOutput Last() {
    absl::MutexLock lock(&mu);
    return outputs.back();
  }
};

EngineConfig Config() {
  EngineConfig c;
  c.vocab_size = 100;
  c.scheduler.num_blocks = 64;
  c.scheduler.block_size = 4;
  c.scheduler.max_model_len = 64;
  c.scheduler.max_num_batched_tokens = 32;
  c.scheduler.max_num_seqs = 8;
  c.scheduler.max_waiting = 4;
  c.scheduler.eos_token_ids = {2};
  return c;
}

RequestOptions Opts(std::vector<TokenId> prompt, int max_tokens) {
  RequestOptions o;
  o.prompt = std::move(prompt);
  o.max_tokens = max_tokens;
  return o;
}

TEST(EngineTest, GeneratesUntilMaxTokensAndReportsUsage) {
  FakeExecutor exec;
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector c;
  RequestOptions o = Opts({10, 11, 12}, 4);
  o.sampling.seed = 77;
  auto id = (*engine)->Submit("a", o, c.Sink());
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, "a");
  ASSERT_TRUE(c.Wait());
  EXPECT_THAT(c.Ids(), ElementsAre(13, 14, 15, 16));
  const RequestOutput last = c.Last();
  EXPECT_EQ(last.finish_reason, FinishReason::kLength);
  EXPECT_EQ(last.usage.prompt_tokens, 3);
  EXPECT_EQ(last.usage.completion_tokens, 4);
  EXPECT_EQ(last.usage.seed, 77u);
  EXPECT_FLOAT_EQ(last.tokens.back().logprob, -0.5f);

  // Plans: the prompt first, then one decode token per step with the RNG counter advancing.
  const std::vector<StepPlan> plans = exec.plans();
  ASSERT_EQ(plans.size(), 4u);
  EXPECT_THAT(plans[0].sequences[0].tokens, ElementsAre(10, 11, 12));
  EXPECT_EQ(plans[0].sequences[0].start_position, 0);
  EXPECT_THAT(plans[2].sequences[0].tokens, ElementsAre(14));
  EXPECT_EQ(plans[2].sequences[0].start_position, 4);
  EXPECT_EQ(plans[2].sequences[0].step_index, 2);
  EXPECT_EQ(plans[2].sequences[0].sampling.seed, 77u);
  EXPECT_EQ(plans[2].sequences[0].block_table.size(), 2u);  // 5 positions, 4 per block
  EXPECT_LT(plans[0].step_id, plans[1].step_id);
}

// When a client hears that its request ended, the engine's gauges (what /metrics and health
// report) already leave the request out: a scrape right after the last token must not count it
// as running or holding KV blocks.
TEST(EngineTest, GaugesLeaveAFinishedRequestOutBeforeItsClientHears) {
  FakeExecutor exec;
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  absl::Mutex mu;
  bool done = false;
  EngineStats at_end;
  auto sink = [&](RequestOutput o) {
    if (!o.last()) return;
    const EngineStats s = (*engine)->stats();  // on the engine's thread, in the delivery
    absl::MutexLock lock(&mu);
    at_end = s;
    done = true;
  };
  ASSERT_TRUE((*engine)->Submit("a", Opts({10, 11, 12}, 3), sink).ok());
  {
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(10)));
  }
  EXPECT_EQ(at_end.running, 0);
  EXPECT_EQ(at_end.waiting, 0);
  EXPECT_EQ(at_end.blocks.used, 0);
}

TEST(EngineTest, StopsAtEosUnlessIgnored) {
  FakeExecutor exec;
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector eos, ignore;
  ASSERT_TRUE((*engine)->Submit("", Opts({99}, 10), eos.Sink()).ok());  // 0, 1, 2 = EOS
  RequestOptions o = Opts({99}, 5);
  o.ignore_eos = true;
  ASSERT_TRUE((*engine)->Submit("", o, ignore.Sink()).ok());
  ASSERT_TRUE(eos.Wait());
  ASSERT_TRUE(ignore.Wait());
  EXPECT_THAT(eos.Ids(), ElementsAre(0, 1, 2));
  EXPECT_EQ(eos.Last().finish_reason, FinishReason::kEos);
  EXPECT_THAT(ignore.Ids(), ElementsAre(0, 1, 2, 3, 4));
  EXPECT_EQ(ignore.Last().finish_reason, FinishReason::kLength);
}

TEST(EngineTest, StopTokenIdsAndMinTokensSuppression) {
  FakeExecutor exec;
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector c;
  RequestOptions o = Opts({40}, 10);
  o.stop_token_ids = {43};
  o.min_tokens = 2;
  ASSERT_TRUE((*engine)->Submit("", o, c.Sink()).ok());
  ASSERT_TRUE(c.Wait());
  EXPECT_THAT(c.Ids(), ElementsAre(41, 42, 43));  // the stop token is kept in the ids
  EXPECT_EQ(c.Last().finish_reason, FinishReason::kStop);
  const std::vector<StepPlan> plans = exec.plans();
  // Before min_tokens the model's EOS and the stop ids are suppressed; after, nothing is.
  EXPECT_THAT(plans[0].sequences[0].suppressed_token_ids, ElementsAre(2, 43));
  EXPECT_THAT(plans[1].sequences[0].suppressed_token_ids, ElementsAre(2, 43));
  EXPECT_TRUE(plans[2].sequences[0].suppressed_token_ids.empty());
}

TEST(EngineTest, PenaltyTokensOnlyWhenAPenaltyIsActive) {
  FakeExecutor exec;
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector plain, penalised;
  ASSERT_TRUE((*engine)->Submit("", Opts({5, 6}, 2), plain.Sink()).ok());
  ASSERT_TRUE(plain.Wait());
  RequestOptions o = Opts({20, 21}, 2);
  o.sampling.presence_penalty = 0.5f;
  ASSERT_TRUE((*engine)->Submit("", o, penalised.Sink()).ok());
  ASSERT_TRUE(penalised.Wait());
  const std::vector<StepPlan> plans = exec.plans();
  ASSERT_EQ(plans.size(), 4u);
  EXPECT_TRUE(plans[1].sequences[0].penalty_tokens.empty());
  EXPECT_THAT(plans[3].sequences[0].penalty_tokens, ElementsAre(20, 21, 22));
}

TEST(EngineTest, ZeroMaxTokensFinishesWithoutAStep) {
  FakeExecutor exec;
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector c;
  ASSERT_TRUE((*engine)->Submit("", Opts({5, 6}, 0), c.Sink()).ok());
  ASSERT_TRUE(c.Wait());
  EXPECT_TRUE(c.Ids().empty());
  EXPECT_EQ(c.Last().finish_reason, FinishReason::kLength);
  EXPECT_EQ(c.Last().usage.prompt_tokens, 2);
  EXPECT_TRUE(exec.plans().empty());
}

TEST(EngineTest, AbortEndsTheStreamWithAborted) {
  FakeExecutor exec;
  exec.set_delay(absl::Milliseconds(5));
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector c;
  RequestOptions o = Opts({3}, 50);
  o.ignore_eos = true;
  ASSERT_TRUE((*engine)->Submit("x", o, c.Sink()).ok());
  while (c.Ids().size() < 2) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_TRUE((*engine)->Abort("x").ok());
  ASSERT_TRUE(c.Wait());
  EXPECT_EQ(c.Last().finish_reason, FinishReason::kAborted);
  EXPECT_LT(c.Ids().size(), 50u);
  EXPECT_EQ((*engine)->Abort("x").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*engine)->Abort("nope").code(), absl::StatusCode::kNotFound);
}

TEST(EngineTest, FailedStepEndsEveryRequestWithUnavailable) {
  FakeExecutor exec;
  exec.set_fail_at_step(3);
  // Steps that take a while, so that "b" is in before step 3 fails (instant steps let "a" reach
  // the failure first on a busy machine, and "b" was then refused as not ready).
  exec.set_delay(absl::Milliseconds(5));
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector a, b;
  RequestOptions o = Opts({3}, 20);
  o.ignore_eos = true;
  ASSERT_TRUE((*engine)->Submit("a", o, a.Sink()).ok());
  ASSERT_TRUE((*engine)->Submit("b", o, b.Sink()).ok());
  ASSERT_TRUE(a.Wait());
  ASSERT_TRUE(b.Wait());
  EXPECT_EQ(a.Last().error.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(a.Last().error.message()), HasSubstr("connection lost"));
  EXPECT_EQ(b.Last().error.code(), absl::StatusCode::kUnavailable);
  // Not ready: new requests are refused with the reason.
  Collector late;
  auto st = (*engine)->Submit("", o, late.Sink());
  EXPECT_EQ(st.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(st.status().message()), HasSubstr("rank 1 lost"));
  // Ready again: served again, ids of failed requests are free again.
  exec.set_ready(true);
  Collector again;
  ASSERT_TRUE((*engine)->Submit("a", Opts({7}, 2), again.Sink()).ok());
  ASSERT_TRUE(again.Wait());
  EXPECT_THAT(again.Ids(), ElementsAre(8, 9));
  EXPECT_EQ((*engine)->stats().failed_steps, 1);
}

TEST(EngineTest, RejectsBadRequestsNamingTheField) {
  FakeExecutor exec;
  exec.set_delay(absl::Milliseconds(20));
  auto engine = Engine::Create(Config(), exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Engine& e = **engine;
  Collector c;
  auto code = [&](RequestOptions o) { return e.Submit("", o, c.Sink()).status(); };
  EXPECT_THAT(std::string(code(Opts({}, 1)).message()), HasSubstr("prompt: empty"));
  EXPECT_EQ(code(Opts({100}, 1)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Opts(std::vector<TokenId>(64, 1), 1)).code(), absl::StatusCode::kInvalidArgument);
  absl::Status past = code(Opts(std::vector<TokenId>(60, 1), 10));
  EXPECT_EQ(past.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(past.message()), HasSubstr("stopping.max_tokens"));
  RequestOptions stops = Opts({1}, 1);
  stops.stop = {"x"};
  EXPECT_EQ(code(stops).code(), absl::StatusCode::kFailedPrecondition);  // no tokenizer

  // Queue limit (max_waiting 4): the fifth waiting request is shed.
  std::vector<std::unique_ptr<Collector>> cs;
  int exhausted = 0;
  for (int i = 0; i < 12; ++i) {
    cs.push_back(std::make_unique<Collector>());
    RequestOptions o = Opts({1}, 30);
    o.ignore_eos = true;
    auto st = e.Submit("", o, cs.back()->Sink());
    if (st.status().code() == absl::StatusCode::kResourceExhausted) ++exhausted;
  }
  EXPECT_GT(exhausted, 0);
  auto dup = e.Submit("same", Opts({1}, 30), c.Sink());
  ASSERT_TRUE(dup.ok() || dup.status().code() == absl::StatusCode::kResourceExhausted);
  if (dup.ok()) {
    Collector d;
    EXPECT_EQ(e.Submit("same", Opts({1}, 3), d.Sink()).status().code(),
              absl::StatusCode::kAlreadyExists);
  }
  e.Stop();  // ends the rest with UNAVAILABLE
  for (auto& col : cs) {
    if (!col->outputs.empty()) {
      EXPECT_TRUE(col->Wait(absl::Seconds(1)));
    }
  }
}

TEST(EngineTest, ManyConcurrentRequestsAllFinish) {
  FakeExecutor exec;
  EngineConfig cfg = Config();
  cfg.scheduler.max_waiting = 64;
  cfg.scheduler.num_blocks = 16;  // forces preemption
  auto engine = Engine::Create(cfg, exec, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<std::unique_ptr<Collector>> cs;
  for (int i = 0; i < 16; ++i) {
    cs.push_back(std::make_unique<Collector>());
    RequestOptions o = Opts({i + 10, i + 11, i + 12, i + 13, i + 14}, 12);
    o.ignore_eos = true;
    ASSERT_TRUE((*engine)->Submit("", o, cs.back()->Sink()).ok());
  }
  for (int i = 0; i < 16; ++i) {
    ASSERT_TRUE(cs[i]->Wait());
    std::vector<TokenId> expect;
    for (int k = 0; k < 12; ++k) expect.push_back((i + 15 + k) % 100);
    EXPECT_EQ(cs[i]->Ids(), expect) << "request " << i;
    EXPECT_EQ(cs[i]->Last().finish_reason, FinishReason::kLength);
  }
  // Once everything finished, the queue figures (metrics, health) must say so, not keep the
  // values of the last scheduled step. They are refreshed at the end of the step that delivered
  // the last token, just after the sinks saw it.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while ((*engine)->stats().running != 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ((*engine)->stats().running, 0);
  EXPECT_EQ((*engine)->stats().waiting, 0);
  EXPECT_GT((*engine)->stats().steps, 0);
}

}  // namespace
}  // namespace tpserve::engine
