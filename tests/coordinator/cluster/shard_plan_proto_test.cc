// The shard plan survives the trip through the control-plane message, and bad messages are
// refused (a worker must never load a slice from a corrupt plan).
#include "proto/shard_plan_proto.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tpserve {
namespace {

using ::testing::HasSubstr;

TEST(ShardPlanProtoTest, RoundTripsEveryRankOfAPlan) {
  ShardInputs in{.num_heads = 9,
                 .num_kv_heads = 3,
                 .ffn_size = 1536,
                 .vocab_size = 49152,
                 .world_size = 2,
                 .ffn_alignment = 32};
  absl::StatusOr<ShardPlan> plan = MakeShardPlan(in);
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (const RankShard& shard : plan->ranks) {
    const v1::RankShard p = RankShardToProto(shard);
    // Through bytes, as on the wire.
    v1::RankShard parsed;
    ASSERT_TRUE(parsed.ParseFromString(p.SerializeAsString()));
    absl::StatusOr<RankShard> back = RankShardFromProto(parsed);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, shard);
  }
}

TEST(ShardPlanProtoTest, RejectsBadRangesAndRanks) {
  v1::RankShard p = RankShardToProto(RankShard{.rank = 1,
                                               .world_size = 2,
                                               .q_heads = {6, 9},
                                               .kv_heads = {2, 3},
                                               .ffn_columns = {768, 1536},
                                               .vocab = {24576, 49152}});
  v1::RankShard reversed = p;
  reversed.mutable_vocab()->set_end(100);
  absl::StatusOr<RankShard> r = RankShardFromProto(reversed);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("vocab range [24576, 100)"));

  v1::RankShard outside = p;
  outside.set_rank(2);
  EXPECT_EQ(RankShardFromProto(outside).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tpserve
