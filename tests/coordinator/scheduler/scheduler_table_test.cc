// Table-driven scheduler tests: each row is one iteration with what arrives before it and the
// expected step plan and queues after it. Expected values follow from the policy in scheduler.h
// (the comments show the arithmetic); after the last row every finished sequence's output must
// equal unpaged reference generation, so nothing was lost or duplicated on the way.
#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/scheduler/fake_engine.h"

namespace tpserve::scheduler {
namespace {

using testing::FakeEngine;
using testing::MakePrompt;
using testing::ReferenceGenerate;

struct Planned {
  SeqId id;
  int start;
  int n;
  bool sample;
  std::vector<BlockId> table = {};  // checked when not empty
};

struct Iteration {
  std::vector<std::pair<SeqId, std::pair<int, int>>> add = {};  // id → (prompt len, max_tokens)
  std::vector<SeqId> abort = {};                                // before Schedule
  std::vector<SeqId> abort_after_schedule = {};                 // between Schedule and Update
  std::vector<Planned> scheduled = {};
  std::vector<SeqId> preempted = {};
  std::vector<FinishedSequence> finished = {};
  std::vector<SeqId> running = {};  // queues after the Update
  std::vector<SeqId> waiting = {};
  std::vector<SeqId> preempted_queue = {};
  int free_blocks = -1;  // in the step's usage figures; -1: not checked
};

struct Scenario {
  std::string name;
  SchedulerConfig config;
  std::vector<Iteration> iterations;
  std::map<SeqId, std::vector<SeqId>> forks = {};  // parent → children, forked at first sample
};

SchedulerConfig Config(int num_blocks, int budget, int max_seqs, bool chunked = true,
                       bool prefix = true, int chunk_cap = 0) {
  SchedulerConfig c;
  c.num_blocks = num_blocks;
  c.block_size = 4;
  c.max_num_batched_tokens = budget;
  c.max_num_seqs = max_seqs;
  c.enable_chunked_prefill = chunked;
  c.enable_prefix_caching = prefix;
  c.max_prefill_chunk = chunk_cap;
  c.max_model_len = 256;
  return c;
}

constexpr auto kLen = FinishReason::kLength;
constexpr auto kAbort = FinishReason::kAborted;

// The prompt of a sequence in these tables: distinct per id, except ids >= 100 which extend the
// prompt of id - 100 (to share a prefix).
std::vector<TokenId> PromptFor(SeqId id, int len) {
  if (id >= 100) {
    std::vector<TokenId> p = MakePrompt(len, static_cast<int>(id - 100));
    for (int i = 10; i < len; ++i) p[i] = static_cast<TokenId>(900 + i);
    return p;
  }
  return MakePrompt(len, static_cast<int>(id));
}

void RunScenario(const Scenario& sc) {
  SCOPED_TRACE(sc.name);
  auto created = Scheduler::Create(sc.config);
  ASSERT_TRUE(created.ok()) << created.status();
  Scheduler& s = **created;
  FakeEngine engine(s);
  for (const auto& [parent, children] : sc.forks) engine.RequestForks(parent, children);
  std::map<SeqId, SequenceSpec> specs;
  std::map<SeqId, int> sample_index;
  for (const auto& [parent, children] : sc.forks) {
    for (size_t k = 0; k < children.size(); ++k) sample_index[children[k]] = int(k) + 1;
  }

  for (size_t it = 0; it < sc.iterations.size(); ++it) {
    SCOPED_TRACE("iteration " + std::to_string(it));
    const Iteration& row = sc.iterations[it];
    for (const auto& [id, lens] : row.add) {
      SequenceSpec spec{
          .id = id, .prompt = PromptFor(id, lens.first), .stop = {.max_tokens = lens.second}};
      specs[id] = spec;
      ASSERT_TRUE(s.Add(spec).ok());
    }
    for (SeqId id : row.abort) engine.Abort(id);
    for (SeqId id : row.abort_after_schedule) engine.AbortAfterSchedule(id);

    const SchedulerOutput out = engine.Step();
    ASSERT_EQ(out.scheduled.size(), row.scheduled.size());
    for (size_t i = 0; i < row.scheduled.size(); ++i) {
      const Planned& want = row.scheduled[i];
      const ScheduledSequence& got = out.scheduled[i];
      SCOPED_TRACE("scheduled[" + std::to_string(i) + "]");
      EXPECT_EQ(got.seq_id, want.id);
      EXPECT_EQ(got.start_position, want.start);
      EXPECT_EQ(static_cast<int>(got.tokens.size()), want.n);
      EXPECT_EQ(got.sample, want.sample);
      if (!want.table.empty()) {
        EXPECT_EQ(got.block_table, want.table);
      }
    }
    EXPECT_EQ(out.preempted, row.preempted);
    EXPECT_EQ(out.finished, row.finished);
    const QueueSnapshot q = s.Queues();
    EXPECT_EQ(q.running, row.running);
    EXPECT_EQ(q.waiting, row.waiting);
    EXPECT_EQ(q.preempted, row.preempted_queue);
    if (row.free_blocks >= 0) {
      EXPECT_EQ(out.blocks.free, row.free_blocks);
    }
  }

  // Output accounting against unpaged generation.
  for (const auto& [id, reason] : engine.finished()) {
    SeqId root = id;
    for (const auto& [parent, children] : sc.forks) {
      for (SeqId c : children) root = c == id ? parent : root;
    }
    const SequenceSpec& spec = specs.at(root);
    const auto ref = ReferenceGenerate(spec.prompt, spec.stop, s.max_seq_len(),
                                       sc.config.eos_token_ids, sample_index[id]);
    if (reason == kAbort) {
      const auto& got = engine.output(id);
      ASSERT_LE(got.size(), ref.tokens.size());
      EXPECT_TRUE(std::equal(got.begin(), got.end(), ref.tokens.begin())) << "sequence " << id;
    } else {
      EXPECT_EQ(engine.output(id), ref.tokens) << "sequence " << id;
      EXPECT_EQ(reason, ref.reason) << "sequence " << id;
    }
  }
  EXPECT_FALSE(s.HasUnfinished());
  EXPECT_EQ(s.block_manager().Usage().used, 0);
}

TEST(SchedulerTableTest, DecodesFirstThenChunksThenAdmission) {
  // Budget 8 tokens a step, block size 4, 64 blocks.
  RunScenario(
      {"mixed",
       Config(64, 8, 4),
       {
           // A's 6-token prompt fits; B gets the 2 tokens left (a chunk, no sample).
           // Blocks: A ceil(6/4)=2, B ceil(2/4)=1 → 61 free.
           {.add = {{1, {6, 3}}, {2, {10, 2}}},
            .scheduled = {{1, 0, 6, true}, {2, 0, 2, false}},
            .running = {1, 2},
            .free_blocks = 61},
           // A decodes first (1 token), B's next chunk takes the other 7. A 7 → 2, B 9 → 3 blocks.
           {.scheduled = {{1, 6, 1, true}, {2, 2, 7, false}}, .running = {1, 2}, .free_blocks = 59},
           // B has 1 prompt token left: it rides in the decode pass. A reaches max_tokens 3.
           {.scheduled = {{1, 7, 1, true}, {2, 9, 1, true}}, .running = {2}, .free_blocks = 59},
           // A's blocks are back (2 as cached-free). B decodes, C is admitted whole: B 11 → 3,
           // C 3 → 1 block in use → 60 free. Both end (B at 2 tokens, C at 1).
           {.add = {{3, {3, 1}}},
            .scheduled = {{2, 10, 1, true}, {3, 0, 3, true}},
            .finished = {{1, kLen}},
            .running = {},
            .free_blocks = 60},
           {.finished = {{2, kLen}, {3, kLen}}, .free_blocks = 64},
       }});
}

TEST(SchedulerTableTest, SequenceLimitKeepsFcfsOrder) {
  RunScenario(
      {"max_num_seqs",
       Config(64, 16, 2),
       {
           {.add = {{1, {4, 2}}, {2, {4, 3}}, {3, {4, 1}}},
            .scheduled = {{1, 0, 4, true}, {2, 0, 4, true}},
            .running = {1, 2},
            .waiting = {3}},
           {.scheduled = {{1, 4, 1, true}, {2, 4, 1, true}}, .running = {2}, .waiting = {3}},
           {.scheduled = {{2, 5, 1, true}, {3, 0, 4, true}}, .finished = {{1, kLen}}},
           {.finished = {{2, kLen}, {3, kLen}}},
       }});
}

TEST(SchedulerTableTest, WithoutChunkingTheHeadWaitsForRoomAndIsNotOvertaken) {
  RunScenario(
      {"no_chunking",
       Config(64, 8, 4, /*chunked=*/false),
       {
           // A takes 5 of 8; B (6) does not fit the 3 left and C (2) may not overtake it.
           {.add = {{1, {5, 4}}, {2, {6, 1}}, {3, {2, 1}}},
            .scheduled = {{1, 0, 5, true}},
            .running = {1},
            .waiting = {2, 3}},
           // A's decode leaves 7: B fits whole, then 1 left for C (2): C waits.
           {.scheduled = {{1, 5, 1, true}, {2, 0, 6, true}}, .running = {1}, .waiting = {3}},
           {.scheduled = {{1, 6, 1, true}, {3, 0, 2, true}},
            .finished = {{2, kLen}},
            .running = {1}},
           {.scheduled = {{1, 7, 1, true}}, .finished = {{3, kLen}}},
           {.finished = {{1, kLen}}},
       }});
}

TEST(SchedulerTableTest, PrefillChunkCap) {
  RunScenario({"chunk_cap",
               Config(64, 16, 4, true, true, /*chunk_cap=*/3),
               {
                   {.add = {{1, {7, 1}}, {2, {2, 1}}},
                    .scheduled = {{1, 0, 3, false}, {2, 0, 2, true}},
                    .running = {1}},
                   {.scheduled = {{1, 3, 3, false}}, .finished = {{2, kLen}}, .running = {1}},
                   {.scheduled = {{1, 6, 1, true}}},
                   {.finished = {{1, kLen}}},
               }});
}

TEST(SchedulerTableTest, PrefixHitIsCountedAsComputed) {
  // Sequence 100 extends sequence 0's first 10 prompt tokens. Sequence 0 commits its 2 full
  // blocks (8 tokens); 100 starts at position 8 on top of blocks 0 and 1.
  RunScenario({"prefix_hit",
               Config(64, 64, 4),
               {
                   {.add = {{0, {10, 1}}}, .scheduled = {{0, 0, 10, true, {0, 1, 2}}}},
                   // 0's table [0,1,2] was freed tail first: 2 is plain free and is reused first.
                   {.add = {{100, {13, 1}}},
                    .scheduled = {{100, 8, 5, true, {0, 1, 2, 3}}},
                    .finished = {{0, kLen}}},
                   {.finished = {{100, kLen}}},
               }});
}

TEST(SchedulerTableTest, PreemptionByRecomputeWithPrefixCache) {
  // 5 blocks of 4 tokens. A and B (6-token prompts) take 2 blocks each, 1 stays free.
  RunScenario(
      {"preempt_prefix",
       Config(5, 64, 4),
       {
           {.add = {{1, {6, 5}}, {2, {6, 4}}},
            .scheduled = {{1, 0, 6, true, {0, 1}}, {2, 0, 6, true, {2, 3}}},
            .running = {1, 2},
            .free_blocks = 1},
           {.scheduled = {{1, 6, 1, true}, {2, 6, 1, true}}, .running = {1, 2}, .free_blocks = 1},
           {.scheduled = {{1, 7, 1, true}, {2, 7, 1, true}}, .running = {1, 2}, .free_blocks = 1},
           // Position 8 needs a third block each: A takes block 4, B (the newest) is preempted. Its
           // 2 full blocks stay cached (2 cached-free blocks). No admission in a preempting step.
           {.scheduled = {{1, 8, 1, true, {0, 1, 4}}},
            .preempted = {2},
            .running = {1},
            .preempted_queue = {2},
            .free_blocks = 2},
           // B (6 + 3 outputs = 9 tokens) would hit its 2 cached blocks but needs 1 more: none.
           {.scheduled = {{1, 9, 1, true}}, .preempted_queue = {2}, .free_blocks = 2},
           // A finished and freed 4 (plain). B re-prefills only its last token, on top of its
           // cached blocks: prompt + outputs are intact, nothing is generated twice.
           {.scheduled = {{2, 8, 1, true, {2, 3, 4}}}, .finished = {{1, kLen}}, .free_blocks = 2},
           {.finished = {{2, kLen}}, .free_blocks = 5},
       }});
}

TEST(SchedulerTableTest, PreemptionByRecomputeWithoutPrefixCache) {
  RunScenario(
      {"preempt_recompute",
       Config(5, 64, 4, true, /*prefix=*/false),
       {
           {.add = {{1, {6, 5}}, {2, {6, 4}}},
            .scheduled = {{1, 0, 6, true}, {2, 0, 6, true}},
            .running = {1, 2}},
           {.scheduled = {{1, 6, 1, true}, {2, 6, 1, true}}, .running = {1, 2}},
           {.scheduled = {{1, 7, 1, true}, {2, 7, 1, true}}, .running = {1, 2}},
           {.scheduled = {{1, 8, 1, true}},
            .preempted = {2},
            .running = {1},
            .preempted_queue = {2},
            .free_blocks = 2},
           // 9 tokens need 3 blocks, 2 free.
           {.scheduled = {{1, 9, 1, true}}, .preempted_queue = {2}},
           // Whole re-prefill: 6 prompt + 3 output tokens from position 0, then the 4th token.
           {.scheduled = {{2, 0, 9, true, {0, 1, 4}}}, .finished = {{1, kLen}}},
           {.finished = {{2, kLen}}, .free_blocks = 5},
       }});
}

TEST(SchedulerTableTest, AbortFreesBlocksAtTheNextStep) {
  RunScenario({"abort",
               Config(16, 64, 2),
               {
                   {.add = {{1, {6, 9}}, {2, {5, 9}}, {3, {4, 9}}},
                    .scheduled = {{1, 0, 6, true}, {2, 0, 5, true}},
                    .running = {1, 2},
                    .waiting = {3}},
                   // Running 1 and waiting 3 go; only 2 holds blocks: ceil(6/4) = 2 → 14 free.
                   {.abort = {1, 3},
                    .scheduled = {{2, 5, 1, true}},
                    .finished = {{1, kAbort}, {3, kAbort}},
                    .running = {2},
                    .free_blocks = 14},
                   // Aborted while its step runs: its token is dropped, it leaves at the next step.
                   {.abort_after_schedule = {2}, .scheduled = {{2, 6, 1, true}}, .running = {2}},
                   {.finished = {{2, kAbort}}, .free_blocks = 16},
               }});
}

TEST(SchedulerTableTest, ForkSharesThePromptBlocks) {
  // P's 10-token prompt fills blocks 0, 1 and half of 2. Children 11 and 12 share 0 and 1 and
  // recompute tokens 8..9 plus feed their own first token in their own third block.
  RunScenario({.name = "fork",
               .config = Config(16, 32, 4),
               .iterations =
                   {
                       {.add = {{1, {10, 3}}},
                        .scheduled = {{1, 0, 10, true, {0, 1, 2}}},
                        .running = {1, 11, 12}},
                       {.scheduled = {{1, 10, 1, true, {0, 1, 2}},
                                      {11, 8, 3, true, {0, 1, 3}},
                                      {12, 8, 3, true, {0, 1, 4}}},
                        .running = {1, 11, 12},
                        .free_blocks = 11},
                       {.scheduled = {{1, 11, 1, true}, {11, 11, 1, true}, {12, 11, 1, true}}},
                       {.finished = {{1, kLen}, {11, kLen}, {12, kLen}}, .free_blocks = 16},
                   },
               .forks = {{1, {11, 12}}}});
}

}  // namespace
}  // namespace tpserve::scheduler
