// Scheduler API edges: input validation, load shedding, the Schedule/Update protocol, fork
// reference counts, recovery after a failed step.
#include "coordinator/scheduler/scheduler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/scheduler/fake_engine.h"

namespace tpserve::scheduler {
namespace {

using ::testing::ElementsAre;
using testing::FakeEngine;
using ::testing::HasSubstr;
using testing::MakePrompt;

SchedulerConfig SmallConfig() {
  SchedulerConfig c;
  c.num_blocks = 16;
  c.block_size = 4;
  c.max_num_batched_tokens = 32;
  c.max_num_seqs = 4;
  c.max_waiting = 2;
  c.max_model_len = 40;
  return c;
}

std::unique_ptr<Scheduler> Make(const SchedulerConfig& c) {
  auto s = Scheduler::Create(c);
  EXPECT_TRUE(s.ok()) << s.status();
  return std::move(s).value();
}

TEST(SchedulerConfigTest, NamesTheBadField) {
  SchedulerConfig c = SmallConfig();
  c.block_size = 0;
  EXPECT_THAT(c.Validate().message(), HasSubstr("block_size"));
  c = SmallConfig();
  c.max_num_batched_tokens = 2;
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.Validate().message(), HasSubstr("max_num_batched_tokens"));
  c = SmallConfig();
  c.max_prefill_chunk = -1;
  EXPECT_THAT(c.Validate().message(), HasSubstr("max_prefill_chunk"));
  EXPECT_FALSE(Scheduler::Create(c).ok());
}

TEST(SchedulerApiTest, RejectsBadSequencesNamingTheField) {
  auto s = Make(SmallConfig());
  absl::Status st = s->Add({.id = 1, .prompt = {}});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("prompt"));
  st = s->Add({.id = 1, .prompt = MakePrompt(41, 1)});  // context length 40
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("41 tokens"));
  st = s->Add({.id = 1, .prompt = {1}, .stop = {.max_tokens = 0}});
  EXPECT_THAT(st.message(), HasSubstr("max_tokens"));
  st = s->Add({.id = 1, .prompt = {1}, .stop = {.max_tokens = 2, .min_tokens = 3}});
  EXPECT_THAT(st.message(), HasSubstr("min_tokens"));
  ASSERT_TRUE(s->Add({.id = 1, .prompt = {1}}).ok());
  EXPECT_EQ(s->Add({.id = 1, .prompt = {1}}).code(), absl::StatusCode::kAlreadyExists);
}

TEST(SchedulerApiTest, PromptLongerThanThePoolIsRejected) {
  SchedulerConfig c = SmallConfig();
  c.num_blocks = 4;  // 16 tokens of KV, below the 40-token context
  auto s = Make(c);
  EXPECT_EQ(s->max_seq_len(), 16);
  EXPECT_THAT(s->Add({.id = 1, .prompt = MakePrompt(17, 1)}).message(),
              HasSubstr("KV cache 16 tokens"));
  EXPECT_TRUE(s->Add({.id = 2, .prompt = MakePrompt(16, 1)}).ok());
}

TEST(SchedulerApiTest, FullWaitingQueueShedsLoad) {
  auto s = Make(SmallConfig());  // max_waiting 2
  ASSERT_TRUE(s->Add({.id = 1, .prompt = {1, 2}}).ok());
  ASSERT_TRUE(s->Add({.id = 2, .prompt = {1, 2}}).ok());
  const absl::Status st = s->Add({.id = 3, .prompt = {1, 2}});
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(st.message(), HasSubstr("limit is 2"));
  FakeEngine engine(*s);
  engine.Step();  // both admitted: the queue has room again
  EXPECT_TRUE(s->Add({.id = 3, .prompt = {1, 2}}).ok());
}

TEST(SchedulerApiTest, FanOutCountsAgainstTheQueueLimit) {
  auto s = Make(SmallConfig());  // max_waiting 2, max_num_seqs 4
  EXPECT_THAT(s->Add({.id = 1, .prompt = {1, 2}, .fan_out = 3}).message(), HasSubstr("n: 3"));
  EXPECT_EQ(s->Add({.id = 1, .prompt = {1, 2}, .fan_out = 0}).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(s->Add({.id = 1, .prompt = {1, 2}, .fan_out = 2}).ok());
  EXPECT_EQ(s->waiting_demand(), 2);
  // One sequence waits, but it stands for two: the queue is full.
  EXPECT_EQ(s->Add({.id = 2, .prompt = {1, 2}}).code(), absl::StatusCode::kResourceExhausted);
}

TEST(SchedulerApiTest, FanOutHoldsPlacesInTheBatchFromAdmission) {
  SchedulerConfig c = SmallConfig();
  c.max_num_seqs = 3;
  c.max_waiting = 8;
  auto s = Make(c);
  ASSERT_TRUE(
      s->Add({.id = 1, .prompt = MakePrompt(5, 1), .stop = {.max_tokens = 4}, .fan_out = 2}).ok());
  ASSERT_TRUE(s->Add({.id = 10, .prompt = MakePrompt(5, 2), .stop = {.max_tokens = 4}}).ok());
  ASSERT_TRUE(s->Add({.id = 11, .prompt = MakePrompt(5, 3), .stop = {.max_tokens = 4}}).ok());
  auto out = s->Schedule();
  ASSERT_TRUE(out.ok());
  // Sequence 1 holds two places (itself and its fork to come), 10 the third; 11 waits although
  // only two sequences run.
  ASSERT_EQ(out->scheduled.size(), 2u);
  EXPECT_EQ(out->scheduled[0].seq_id, 1);
  EXPECT_EQ(out->scheduled[1].seq_id, 10);
  EXPECT_EQ(s->num_running(), 2);
  EXPECT_EQ(s->running_demand(), 3);
  ASSERT_TRUE(s->Fork(1, 2).ok());  // takes the held place: never past max_num_seqs
  EXPECT_EQ(s->num_running(), 3);
  EXPECT_EQ(s->running_demand(), 3);
  ASSERT_TRUE(s->Update({{{1, 7}, {2, 8}, {10, 9}}}).ok());
  out = s->Schedule();
  ASSERT_TRUE(out.ok());
  for (const ScheduledSequence& sch : out->scheduled) EXPECT_NE(sch.seq_id, 11);
  EXPECT_EQ(s->num_running(), 3);
  EXPECT_TRUE(s->CheckInvariants().ok()) << s->CheckInvariants();
}

TEST(SchedulerApiTest, AnAbortedParentReleasesTheForksItHeld) {
  SchedulerConfig c = SmallConfig();
  c.max_num_seqs = 3;
  c.max_waiting = 8;
  auto s = Make(c);
  ASSERT_TRUE(
      s->Add({.id = 1, .prompt = MakePrompt(5, 1), .stop = {.max_tokens = 4}, .fan_out = 3}).ok());
  ASSERT_TRUE(s->Add({.id = 10, .prompt = MakePrompt(5, 2), .stop = {.max_tokens = 4}}).ok());
  auto out = s->Schedule();
  ASSERT_TRUE(out.ok());
  ASSERT_EQ(out->scheduled.size(), 1u);  // 1 holds all three places
  ASSERT_TRUE(s->Abort(1).ok());
  ASSERT_TRUE(s->Update({}).ok());
  out = s->Schedule();
  ASSERT_TRUE(out.ok());
  ASSERT_EQ(out->scheduled.size(), 1u);
  EXPECT_EQ(out->scheduled[0].seq_id, 10);
  EXPECT_EQ(s->running_demand(), 1);
}

TEST(SchedulerApiTest, ScheduleUpdateProtocolIsEnforced) {
  auto s = Make(SmallConfig());
  ASSERT_TRUE(s->Add({.id = 1, .prompt = {1, 2, 3}}).ok());
  ASSERT_TRUE(s->Add({.id = 2, .prompt = {4, 5, 6}}).ok());
  auto out = s->Schedule();
  ASSERT_TRUE(out.ok());
  ASSERT_EQ(out->scheduled.size(), 2u);
  EXPECT_EQ(s->Schedule().status().code(), absl::StatusCode::kFailedPrecondition);
  // Missing, unknown and duplicated tokens are refused and change nothing.
  EXPECT_THAT(s->Update({{{1, 7}}}).status().message(), HasSubstr("no token for sequence 2"));
  EXPECT_EQ(s->Update({{{1, 7}, {2, 7}, {9, 7}}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s->Update({{{1, 7}, {1, 8}, {2, 7}}}).status().message(), HasSubstr("two tokens"));
  EXPECT_EQ(s->Find(1)->num_output(), 0);
  ASSERT_TRUE(s->Update({{{1, 7}, {2, 8}}}).ok());
  EXPECT_THAT(s->Find(1)->output(), ElementsAre(7));
  EXPECT_TRUE(s->Schedule().ok());
  EXPECT_EQ(s->Abort(42).code(), absl::StatusCode::kNotFound);
}

TEST(SchedulerApiTest, ForkRefCountsAndRelease) {
  auto s = Make(SmallConfig());
  ASSERT_TRUE(s->Add({.id = 1, .prompt = MakePrompt(9, 3), .stop = {.max_tokens = 2}}).ok());
  EXPECT_EQ(s->Fork(1, 2).code(), absl::StatusCode::kFailedPrecondition);  // not sampled yet
  auto out = s->Schedule();
  ASSERT_TRUE(out.ok());
  ASSERT_TRUE(s->Fork(1, 2).ok());
  ASSERT_TRUE(s->Fork(1, 3).ok());
  EXPECT_EQ(s->Fork(1, 3).code(), absl::StatusCode::kAlreadyExists);
  const BlockManager& bm = s->block_manager();
  // 9 tokens: blocks 0, 1 full (shared by 3 sequences), block 2 holds 1 token (parent only).
  EXPECT_THAT(bm.Table(2), ElementsAre(0, 1));
  EXPECT_EQ(bm.RefCount(0), 3);
  EXPECT_EQ(bm.RefCount(1), 3);
  EXPECT_EQ(bm.RefCount(2), 1);
  EXPECT_EQ(s->Find(2)->num_computed(), 8);
  ASSERT_TRUE(s->Update({{{1, 10}, {2, 11}, {3, 12}}}).ok());
  EXPECT_TRUE(s->CheckInvariants().ok()) << s->CheckInvariants();
  ASSERT_TRUE(s->Abort(1).ok());
  out = s->Schedule();
  ASSERT_TRUE(out.ok());
  EXPECT_FALSE(bm.Has(1));
  EXPECT_EQ(bm.RefCount(0), 2);  // the children still hold the prompt blocks
  EXPECT_EQ(bm.RefCount(1), 2);
  // Each child now feeds tokens 8..9 into a tail block of its own: 2 shared + 2 own blocks.
  EXPECT_EQ(bm.Usage().used, 4);
  ASSERT_EQ(out->scheduled.size(), 2u);
  EXPECT_EQ(out->scheduled[0].start_position, 8);
  EXPECT_EQ(out->scheduled[0].tokens.size(), 2u);
  ASSERT_TRUE(s->Update({{{2, 5}, {3, 6}}}).ok());  // both reach max_tokens 2
  EXPECT_EQ(bm.Usage().used, 0);
  EXPECT_FALSE(s->HasUnfinished());
  EXPECT_TRUE(s->CheckInvariants().ok()) << s->CheckInvariants();
}

TEST(SchedulerApiTest, ForkWithOwnStepRecomputesTheTailAndSamplesItself) {
  auto s = Make(SmallConfig());
  // 8 tokens: two full blocks. The child shares only block 0 so that it has a token to feed.
  ASSERT_TRUE(s->Add({.id = 1, .prompt = MakePrompt(8, 3), .stop = {.max_tokens = 2}}).ok());
  ASSERT_TRUE(s->Schedule().ok());
  ASSERT_TRUE(s->Fork(1, 2, Scheduler::ForkFirstToken::kOwnStep).ok());
  const BlockManager& bm = s->block_manager();
  EXPECT_THAT(bm.Table(2), ElementsAre(0));
  EXPECT_EQ(bm.RefCount(0), 2);
  EXPECT_EQ(bm.RefCount(1), 1);
  EXPECT_EQ(s->Find(2)->num_computed(), 4);
  EXPECT_FALSE(s->Find(2)->awaiting_token());
  // The pending Update owes a token to the parent only.
  EXPECT_THAT(s->Update({{{1, 7}, {2, 7}}}).status().message(), HasSubstr("not sampled"));
  ASSERT_TRUE(s->Update({{{1, 7}}}).ok());
  auto out = s->Schedule();
  ASSERT_TRUE(out.ok());
  ASSERT_EQ(out->scheduled.size(), 2u);
  const ScheduledSequence& child = out->scheduled[1];
  EXPECT_EQ(child.seq_id, 2);
  EXPECT_EQ(child.start_position, 4);
  EXPECT_EQ(child.tokens.size(), 4u);
  EXPECT_TRUE(child.sample);
  EXPECT_EQ(child.num_output_tokens, 0);
  EXPECT_EQ(out->scheduled[0].num_output_tokens, 1);
  ASSERT_TRUE(s->Update({{{1, 5}, {2, 6}}}).ok());
  EXPECT_THAT(s->Find(2)->output(), ElementsAre(6));
  EXPECT_TRUE(s->CheckInvariants().ok()) << s->CheckInvariants();
}

TEST(SchedulerApiTest, StopStringAbortKeepsItsReason) {
  auto s = Make(SmallConfig());
  FakeEngine engine(*s);
  ASSERT_TRUE(s->Add({.id = 1, .prompt = {1, 2}, .stop = {.max_tokens = 9}}).ok());
  engine.Step();
  ASSERT_TRUE(s->Abort(1, FinishReason::kStopString).ok());
  const SchedulerOutput out = engine.Step();
  EXPECT_THAT(out.finished, ElementsAre(FinishedSequence{1, FinishReason::kStopString}));
  EXPECT_EQ(s->counters().aborted, 1);
}

TEST(SchedulerApiTest, EosEndsUnlessIgnored) {
  SchedulerConfig c = SmallConfig();
  c.eos_token_ids = {7};
  auto s = Make(c);
  ASSERT_TRUE(s->Add({.id = 1, .prompt = {1}, .stop = {.max_tokens = 5}}).ok());
  ASSERT_TRUE(s->Add({.id = 2, .prompt = {1}, .stop = {.max_tokens = 5, .ignore_eos = true}}).ok());
  ASSERT_TRUE(s->Schedule().ok());
  auto up = s->Update({{{1, 7}, {2, 7}}});
  ASSERT_TRUE(up.ok());
  EXPECT_THAT(up->finished, ElementsAre(FinishedSequence{1, FinishReason::kEos}));
  EXPECT_NE(s->Find(2), nullptr);
}

TEST(SchedulerApiTest, OlderPrefillPreemptsANewerScheduledDecode) {
  // 5 blocks of 4. A (16-token prompt, chunks capped at 4) is admitted before B (2 tokens), so
  // B decodes while A is still prefilling. At step 3 B's decode is planned first (it takes the
  // last free block), then A's final chunk needs a block: the newest running sequence, B, is
  // preempted although its decode was already planned; that plan is withdrawn.
  SchedulerConfig c = SmallConfig();
  c.num_blocks = 5;
  c.max_num_batched_tokens = 8;
  c.max_prefill_chunk = 4;
  auto s = Make(c);
  FakeEngine engine(*s);
  const SequenceSpec a{.id = 1, .prompt = MakePrompt(16, 1), .stop = {.max_tokens = 2}};
  const SequenceSpec b{.id = 2, .prompt = MakePrompt(2, 2), .stop = {.max_tokens = 5}};
  ASSERT_TRUE(s->Add(a).ok());
  ASSERT_TRUE(s->Add(b).ok());
  for (int step = 0; step < 3; ++step) {
    const SchedulerOutput out = engine.Step();
    ASSERT_EQ(out.scheduled.size(), 2u) << "step " << step;
    EXPECT_TRUE(out.preempted.empty());
  }
  SchedulerOutput out = engine.Step();
  ASSERT_EQ(out.scheduled.size(), 1u);
  EXPECT_EQ(out.scheduled[0].seq_id, 1);
  EXPECT_EQ(out.scheduled[0].start_position, 12);
  EXPECT_EQ(out.scheduled[0].tokens.size(), 4u);
  EXPECT_TRUE(out.scheduled[0].sample);
  EXPECT_EQ(out.num_batched_tokens, 4);
  EXPECT_THAT(out.preempted, ElementsAre(2));
  EXPECT_EQ(s->Find(2)->num_output(), 3);  // steps 0..2; the withdrawn decode added none
  for (int step = 0; step < 10 && s->HasUnfinished(); ++step) engine.Step();
  ASSERT_FALSE(s->HasUnfinished());
  for (const SequenceSpec* spec : {&a, &b}) {
    const auto ref = testing::ReferenceGenerate(spec->prompt, spec->stop, s->max_seq_len(), {});
    EXPECT_EQ(engine.output(spec->id), ref.tokens) << "sequence " << spec->id;
  }
  EXPECT_EQ(s->counters().preemptions, 1);
}

TEST(SchedulerApiTest, RecoverFromFailedStepRequeuesEverythingForRecompute) {
  auto s = Make(SmallConfig());
  FakeEngine engine(*s);
  ASSERT_TRUE(s->Add({.id = 1, .prompt = MakePrompt(9, 1), .stop = {.max_tokens = 9}}).ok());
  ASSERT_TRUE(s->Add({.id = 2, .prompt = MakePrompt(5, 2), .stop = {.max_tokens = 9}}).ok());
  engine.Step();
  engine.Step();
  ASSERT_TRUE(s->Schedule().ok());  // this step "fails" on the workers: no Update
  s->RecoverFromFailedStep();
  const QueueSnapshot q = s->Queues();
  EXPECT_TRUE(q.running.empty());
  EXPECT_THAT(q.waiting, ElementsAre(1, 2));
  EXPECT_EQ(s->block_manager().Usage().used, 0);
  EXPECT_EQ(s->block_manager().Usage().cached, 0);
  EXPECT_TRUE(s->CheckInvariants().ok()) << s->CheckInvariants();
  // Both re-prefill prompt + the 2 outputs they had.
  auto out = s->Schedule();
  ASSERT_TRUE(out.ok());
  ASSERT_EQ(out->scheduled.size(), 2u);
  EXPECT_EQ(out->scheduled[0].start_position, 0);
  EXPECT_EQ(out->scheduled[0].tokens.size(), 11u);
  EXPECT_EQ(out->scheduled[1].tokens.size(), 7u);
  EXPECT_EQ(out->scheduled[0].num_output_tokens, 2);
}

}  // namespace
}  // namespace tpserve::scheduler
