// MakeShardPlan: expected splits for real model shapes (DESIGN.md §3) and, for every TP degree a
// model allows, the invariants the model code relies on.
#include "worker/parallel/shard_plan.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tpserve {
namespace {

using ::testing::HasSubstr;

struct Model {
  std::string name;
  ShardInputs in;  // world_size filled per case
};

// Shapes from the models' config files.
const Model kSmolLM2{"SmolLM2-135M",
                     {.num_heads = 9,
                      .num_kv_heads = 3,
                      .ffn_size = 1536,
                      .vocab_size = 49152,
                      .ffn_alignment = 32}};
const Model kLlama3_8B{"Llama-3-8B",
                       {.num_heads = 32,
                        .num_kv_heads = 8,
                        .ffn_size = 14336,
                        .vocab_size = 128256,
                        .ffn_alignment = 256}};
const Model kMiniLM{"all-MiniLM-L6-v2 (MHA)",
                    {.num_heads = 12, .num_kv_heads = 12, .ffn_size = 1536, .vocab_size = 30522}};
const Model kOneKv{
    "MQA 8 heads / 1 KV",
    {.num_heads = 8, .num_kv_heads = 1, .ffn_size = 1000, .vocab_size = 1001, .ffn_alignment = 32}};

ShardInputs WithT(ShardInputs in, int t) {
  in.world_size = t;
  return in;
}

// Invariants of any valid plan.
void CheckInvariants(const ShardInputs& in, const ShardPlan& plan) {
  const int t = in.world_size;
  ASSERT_EQ(plan.ranks.size(), static_cast<size_t>(t));
  const int64_t group = in.num_heads / in.num_kv_heads;
  std::vector<int> q_owner(in.num_heads, 0), ffn_owner(in.ffn_size, 0),
      vocab_owner(in.vocab_size, 0);
  std::vector<int> kv_owner(in.num_kv_heads, 0);
  for (int r = 0; r < t; ++r) {
    const RankShard& s = plan.ranks[r];
    SCOPED_TRACE("rank " + std::to_string(r));
    EXPECT_EQ(s.rank, r);
    EXPECT_EQ(s.world_size, t);
    EXPECT_GT(s.q_heads.size(), 0);
    EXPECT_GT(s.kv_heads.size(), 0);
    EXPECT_GT(s.ffn_columns.size(), 0);
    EXPECT_GT(s.vocab.size(), 0);
    for (int64_t h = s.q_heads.begin; h < s.q_heads.end; ++h) {
      ++q_owner[h];
      // The KV head a query head reads lies in this rank's KV range.
      EXPECT_GE(h / group, s.kv_heads.begin) << "q head " << h;
      EXPECT_LT(h / group, s.kv_heads.end) << "q head " << h;
    }
    // Every KV head a rank owns is used by one of its query heads (no dead KV work).
    for (int64_t kv = s.kv_heads.begin; kv < s.kv_heads.end; ++kv) {
      ++kv_owner[kv];
      EXPECT_LT(s.q_heads.begin, (kv + 1) * group);
      EXPECT_GT(s.q_heads.end, kv * group);
    }
    EXPECT_EQ(s.ffn_columns.begin % in.ffn_alignment, 0);
    EXPECT_TRUE(s.ffn_columns.end % in.ffn_alignment == 0 || s.ffn_columns.end == in.ffn_size);
    for (int64_t c = s.ffn_columns.begin; c < s.ffn_columns.end; ++c) ++ffn_owner[c];
    for (int64_t v = s.vocab.begin; v < s.vocab.end; ++v) ++vocab_owner[v];
  }
  for (int64_t h = 0; h < in.num_heads; ++h) EXPECT_EQ(q_owner[h], 1) << "q head " << h;
  for (int64_t c = 0; c < in.ffn_size; ++c) ASSERT_EQ(ffn_owner[c], 1) << "ffn column " << c;
  for (int64_t v = 0; v < in.vocab_size; ++v) ASSERT_EQ(vocab_owner[v], 1) << "vocab row " << v;
  for (int64_t kv = 0; kv < in.num_kv_heads; ++kv) {
    // Split KV heads are owned once; replicated ones by T / n_kv or one more ranks.
    if (t <= in.num_kv_heads) {
      EXPECT_EQ(kv_owner[kv], 1) << "kv head " << kv;
    } else {
      EXPECT_GE(kv_owner[kv], t / in.num_kv_heads) << "kv head " << kv;
      EXPECT_LE(kv_owner[kv], t / in.num_kv_heads + 1) << "kv head " << kv;
    }
  }
}

TEST(ShardPlanTest, InvariantsForEveryAllowedDegree) {
  for (const Model& m : {kSmolLM2, kLlama3_8B, kMiniLM, kOneKv}) {
    for (int t = 1; t <= m.in.num_heads; ++t) {
      SCOPED_TRACE(m.name + " T=" + std::to_string(t));
      absl::StatusOr<ShardPlan> plan = MakeShardPlan(WithT(m.in, t));
      ASSERT_TRUE(plan.ok()) << plan.status();
      CheckInvariants(WithT(m.in, t), *plan);
    }
  }
}

TEST(ShardPlanTest, SingleRankOwnsTheWholeModel) {
  for (const Model& m : {kSmolLM2, kLlama3_8B, kMiniLM}) {
    absl::StatusOr<ShardPlan> plan = MakeShardPlan(WithT(m.in, 1));
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_EQ(plan->ranks.size(), 1u);
    EXPECT_EQ(plan->ranks[0], WholeModelShard(m.in)) << m.name;
  }
}

// Expected splits written from DESIGN.md §3: whole KV groups per rank, the first ranks take the
// remainder; FFN split in alignment blocks; vocab rows split evenly.
struct Expected {
  std::string name;
  ShardInputs in;
  std::vector<RankShard> ranks;
};

std::vector<Expected> ExpectedPlans() {
  return {
      // SmolLM2 TP=2: 3 KV groups of 3 query heads -> 2 groups (6 heads) and 1 group (3 heads).
      // FFN 1536 = 48 blocks of 32 -> 24 blocks each; vocab 49152 -> 24576 each.
      {"SmolLM2 T=2",
       WithT(kSmolLM2.in, 2),
       {{0, 2, {0, 6}, {0, 2}, {0, 768}, {0, 24576}},
        {1, 2, {6, 9}, {2, 3}, {768, 1536}, {24576, 49152}}}},
      // SmolLM2 TP=3: one group each; FFN 16 blocks each; vocab 16384 each.
      {"SmolLM2 T=3",
       WithT(kSmolLM2.in, 3),
       {{0, 3, {0, 3}, {0, 1}, {0, 512}, {0, 16384}},
        {1, 3, {3, 6}, {1, 2}, {512, 1024}, {16384, 32768}},
        {2, 3, {6, 9}, {2, 3}, {1024, 1536}, {32768, 49152}}}},
      // SmolLM2 TP=4 > 3 KV heads: KV head 0 is replicated on ranks 0 and 1, which split its
      // 3 query heads 2 + 1; FFN 48 blocks -> 12 each; vocab 12288 each.
      {"SmolLM2 T=4",
       WithT(kSmolLM2.in, 4),
       {{0, 4, {0, 2}, {0, 1}, {0, 384}, {0, 12288}},
        {1, 4, {2, 3}, {0, 1}, {384, 768}, {12288, 24576}},
        {2, 4, {3, 6}, {1, 2}, {768, 1152}, {24576, 36864}},
        {3, 4, {6, 9}, {2, 3}, {1152, 1536}, {36864, 49152}}}},
      // Llama-3-8B TP=3: 8 KV groups of 4 -> 3, 3, 2 groups; FFN 14336 = 56 blocks of 256 ->
      // 19, 19, 18 blocks; vocab 128256 = 3 x 42752.
      {"Llama-3-8B T=3",
       WithT(kLlama3_8B.in, 3),
       {{0, 3, {0, 12}, {0, 3}, {0, 4864}, {0, 42752}},
        {1, 3, {12, 24}, {3, 6}, {4864, 9728}, {42752, 85504}},
        {2, 3, {24, 32}, {6, 8}, {9728, 14336}, {85504, 128256}}}},
      // MHA TP=4: 12 heads, each its own KV head -> 3 each; vocab 30522 -> 7631, 7631, 7630, 7630.
      {"MiniLM T=4",
       WithT(kMiniLM.in, 4),
       {{0, 4, {0, 3}, {0, 3}, {0, 384}, {0, 7631}},
        {1, 4, {3, 6}, {3, 6}, {384, 768}, {7631, 15262}},
        {2, 4, {6, 9}, {6, 9}, {768, 1152}, {15262, 22892}},
        {3, 4, {9, 12}, {9, 12}, {1152, 1536}, {22892, 30522}}}},
      // FFN 1000 is not a multiple of 32: 32 blocks, the last one 8 columns short.
      {"MQA T=3",
       WithT(kOneKv.in, 3),
       {{0, 3, {0, 3}, {0, 1}, {0, 352}, {0, 334}},
        {1, 3, {3, 6}, {0, 1}, {352, 704}, {334, 668}},
        {2, 3, {6, 8}, {0, 1}, {704, 1000}, {668, 1001}}}},
  };
}

TEST(ShardPlanTest, ExpectedSplits) {
  for (const Expected& e : ExpectedPlans()) {
    SCOPED_TRACE(e.name);
    absl::StatusOr<ShardPlan> plan = MakeShardPlan(e.in);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_EQ(plan->ranks.size(), e.ranks.size());
    for (size_t r = 0; r < e.ranks.size(); ++r) {
      const RankShard& got = plan->ranks[r];
      const RankShard& want = e.ranks[r];
      SCOPED_TRACE("rank " + std::to_string(r));
      EXPECT_EQ(got.q_heads, want.q_heads) << got.q_heads.begin << ".." << got.q_heads.end;
      EXPECT_EQ(got.kv_heads, want.kv_heads) << got.kv_heads.begin << ".." << got.kv_heads.end;
      EXPECT_EQ(got.ffn_columns, want.ffn_columns)
          << got.ffn_columns.begin << ".." << got.ffn_columns.end;
      EXPECT_EQ(got.vocab, want.vocab) << got.vocab.begin << ".." << got.vocab.end;
      EXPECT_EQ(got, want);
    }
  }
}

struct Impossible {
  std::string name;
  ShardInputs in;
  std::string message;
};

TEST(ShardPlanTest, ImpossiblePlansAreInvalidArgument) {
  const std::vector<Impossible> cases = {
      {"T=0", WithT(kSmolLM2.in, 0), "must be >= 1"},
      {"T > query heads", WithT(kSmolLM2.in, 10), "larger than the model's 9 query heads"},
      {"heads not a multiple of KV heads",
       {.num_heads = 10, .num_kv_heads = 3, .ffn_size = 64, .vocab_size = 100, .world_size = 2},
       "not a multiple of 3 KV heads"},
      {"T > FFN blocks",
       {.num_heads = 8,
        .num_kv_heads = 8,
        .ffn_size = 512,
        .vocab_size = 100,
        .world_size = 4,
        .ffn_alignment = 256},
       "larger than the 2 FFN blocks"},
      {"T > vocab",
       {.num_heads = 8, .num_kv_heads = 8, .ffn_size = 512, .vocab_size = 3, .world_size = 4},
       "larger than the vocabulary"},
      {"zero heads",
       {.num_heads = 0, .num_kv_heads = 1, .ffn_size = 8, .vocab_size = 8},
       "must be positive"},
      {"bad alignment",
       {.num_heads = 2,
        .num_kv_heads = 1,
        .ffn_size = 8,
        .vocab_size = 8,
        .world_size = 1,
        .ffn_alignment = 0},
       "ffn_alignment"},
  };
  for (const Impossible& c : cases) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<ShardPlan> plan = MakeShardPlan(c.in);
    ASSERT_FALSE(plan.ok());
    EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(plan.status().message(), HasSubstr(c.message));
  }
}

}  // namespace
}  // namespace tpserve
