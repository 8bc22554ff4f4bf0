// BlockManager: allocation, sharing, prefix-cache hits, LRU eviction, usage figures. Block size 4
// throughout so the arithmetic stays visible: n tokens take ceil(n / 4) blocks.
#include "coordinator/scheduler/block_manager.h"

#include <numeric>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tpserve::scheduler {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::vector<TokenId> Iota(int n, TokenId start) {
  std::vector<TokenId> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

#define EXPECT_INVARIANTS(bm) EXPECT_TRUE((bm).CheckInvariants().ok()) << (bm).CheckInvariants()

TEST(BlockManagerTest, AllocatesGrowsAndFrees) {
  BlockManager bm(8, 4, /*enable_prefix_caching=*/true);
  ASSERT_TRUE(bm.AllocateNew(1, PrefixHit{}, 10));  // 10 tokens: 3 blocks
  EXPECT_THAT(bm.Table(1), ElementsAre(0, 1, 2));
  ASSERT_TRUE(bm.Grow(1, 12));  // still 3 blocks
  EXPECT_EQ(bm.Table(1).size(), 3u);
  ASSERT_TRUE(bm.Grow(1, 13));  // the 13th token (a decode) needs a 4th block
  EXPECT_THAT(bm.Table(1), ElementsAre(0, 1, 2, 3));
  BlockUsage u = bm.Usage();
  EXPECT_EQ(u.used, 4);
  EXPECT_EQ(u.free, 4);
  EXPECT_INVARIANTS(bm);

  EXPECT_FALSE(bm.Grow(1, 33));  // 9 blocks > 8: refused, nothing changes
  EXPECT_EQ(bm.Table(1).size(), 4u);
  EXPECT_FALSE(bm.AllocateNew(2, PrefixHit{}, 17));  // 5 blocks, 4 free
  EXPECT_FALSE(bm.Has(2));
  EXPECT_INVARIANTS(bm);

  bm.Free(1);
  u = bm.Usage();
  EXPECT_EQ(u.used, 0);
  EXPECT_EQ(u.free, 8);
  EXPECT_EQ(u.cached, 0);  // nothing was committed
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManagerTest, PrefixHitReusesCommittedBlocksAndLeavesLastTokenToCompute) {
  BlockManager bm(8, 4, true);
  const std::vector<TokenId> prompt = Iota(12, 100);  // 3 full blocks
  ASSERT_TRUE(bm.AllocateNew(1, PrefixHit{}, 12));
  bm.Commit(1, prompt, 12);
  EXPECT_EQ(bm.Usage().cached, 3);
  // Hash chain: block i is registered under H(hash of block i-1, its tokens).
  std::vector<BlockHash> expected;
  ExtendBlockHashes(prompt, 4, expected);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(bm.CachedHash(bm.Table(1)[i]), expected[i]);

  // The same 12 tokens: the last one must be computed, so only 2 blocks are reused.
  PrefixHit same = bm.FindCachedPrefix(prompt);
  EXPECT_THAT(same.blocks, ElementsAre(0, 1));
  // 13 tokens sharing all 12: 3 blocks reused.
  std::vector<TokenId> longer = prompt;
  longer.push_back(7);
  PrefixHit hit = bm.FindCachedPrefix(longer);
  EXPECT_THAT(hit.blocks, ElementsAre(0, 1, 2));
  EXPECT_EQ(hit.num_tokens(4), 12);
  ASSERT_TRUE(bm.AllocateNew(2, hit, 13));
  EXPECT_THAT(bm.Table(2), ElementsAre(0, 1, 2, 3));
  EXPECT_EQ(bm.RefCount(0), 2);
  EXPECT_EQ(bm.RefCount(2), 2);
  EXPECT_EQ(bm.RefCount(3), 1);
  EXPECT_EQ(bm.Usage().used, 4);
  // Only allocations that came with a lookup count: 12 of 13 tokens were hits.
  EXPECT_EQ(bm.Usage().prefix_query_tokens, 13);
  EXPECT_EQ(bm.Usage().prefix_hit_tokens, 12);
  EXPECT_DOUBLE_EQ(bm.Usage().hit_rate(), 12.0 / 13.0);

  // A prompt that differs in block 1 reuses only block 0.
  std::vector<TokenId> diverged = longer;
  diverged[5] = 999;
  EXPECT_THAT(bm.FindCachedPrefix(diverged).blocks, ElementsAre(0));
  diverged[0] = 999;
  EXPECT_THAT(bm.FindCachedPrefix(diverged).blocks, IsEmpty());
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManagerTest, OnlyComputedFullBlocksAreCommitted) {
  BlockManager bm(8, 4, true);
  const std::vector<TokenId> prompt = Iota(10, 0);
  ASSERT_TRUE(bm.AllocateNew(1, PrefixHit{}, 6));  // a first chunk of 6 tokens
  bm.Commit(1, prompt, 6);                         // 1 full block so far
  EXPECT_EQ(bm.Usage().cached, 1);
  EXPECT_TRUE(bm.CachedHash(bm.Table(1)[0]).has_value());
  EXPECT_FALSE(bm.CachedHash(bm.Table(1)[1]).has_value());
  ASSERT_TRUE(bm.Grow(1, 10));
  bm.Commit(1, prompt, 10);  // 2 full blocks; the third holds 2 tokens
  EXPECT_EQ(bm.Usage().cached, 2);
  EXPECT_FALSE(bm.CachedHash(bm.Table(1)[2]).has_value());
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManagerTest, DisabledPrefixCachingNeverHits) {
  BlockManager bm(8, 4, false);
  const std::vector<TokenId> prompt = Iota(9, 0);
  ASSERT_TRUE(bm.AllocateNew(1, PrefixHit{}, 9));
  bm.Commit(1, prompt, 9);
  EXPECT_EQ(bm.Usage().cached, 0);
  EXPECT_THAT(bm.FindCachedPrefix(prompt).blocks, IsEmpty());
  bm.Free(1);
  EXPECT_EQ(bm.Usage().cached_free, 0);
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManagerTest, FreedCachedBlocksAreEvictedLeastRecentlyUsedFirst) {
  BlockManager bm(6, 4, true);
  const std::vector<TokenId> a = Iota(9, 0);    // blocks 0,1 full, 2 partial
  const std::vector<TokenId> b = Iota(8, 500);  // blocks 3,4 full
  ASSERT_TRUE(bm.AllocateNew(1, PrefixHit{}, 9));
  ASSERT_TRUE(bm.AllocateNew(2, PrefixHit{}, 8));
  EXPECT_THAT(bm.Table(2), ElementsAre(3, 4));
  bm.Commit(1, a, 9);
  bm.Commit(2, b, 8);
  bm.Free(1);  // tail first: 2 is plain free (partial), then 1, 0 to the LRU list
  bm.Free(2);  // then 4, 3
  EXPECT_THAT(bm.EvictionOrder(), ElementsAre(1, 0, 4, 3));
  BlockUsage u = bm.Usage();
  EXPECT_EQ(u.used, 0);
  EXPECT_EQ(u.free, 6);
  EXPECT_EQ(u.cached_free, 4);
  EXPECT_EQ(u.cached, 4);

  // A hit takes block 0 out of the LRU list; freeing it again makes it most recent.
  std::vector<TokenId> a_again(a.begin(), a.begin() + 5);
  PrefixHit hit = bm.FindCachedPrefix(a_again);
  EXPECT_THAT(hit.blocks, ElementsAre(0));
  // Block 0 plus one fresh block: plain free blocks go first, the last freed (2) on top.
  ASSERT_TRUE(bm.AllocateNew(3, hit, 5));
  EXPECT_THAT(bm.Table(3), ElementsAre(0, 2));
  EXPECT_THAT(bm.EvictionOrder(), ElementsAre(1, 4, 3));
  EXPECT_EQ(bm.Usage().evictions, 0);
  bm.Free(3);
  EXPECT_THAT(bm.EvictionOrder(), ElementsAre(1, 4, 3, 0));

  // Needing 3 blocks with 2 plain free (2, 5) evicts the least recently used cached block, 1.
  ASSERT_TRUE(bm.AllocateNew(4, PrefixHit{}, 12));
  EXPECT_THAT(bm.Table(4), ElementsAre(2, 5, 1));
  EXPECT_EQ(bm.Usage().evictions, 1);
  EXPECT_FALSE(bm.CachedHash(1).has_value());
  EXPECT_THAT(bm.EvictionOrder(), ElementsAre(4, 3, 0));
  // a's block 1 is gone, so a now hits only block 0.
  EXPECT_THAT(bm.FindCachedPrefix(a).blocks, ElementsAre(0));
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManagerTest, HitOnEvictableBlocksCountsThemAsTaken) {
  // 3 blocks, all cached and free. A 17-token prompt (5 blocks) hits all 3 and needs 2 more:
  // taking the hits leaves none allocatable, so it is refused and nothing changes.
  BlockManager bm(3, 4, true);
  const std::vector<TokenId> a = Iota(12, 0);
  ASSERT_TRUE(bm.AllocateNew(1, PrefixHit{}, 12));
  bm.Commit(1, a, 12);
  bm.Free(1);
  std::vector<TokenId> longer = a;
  longer.insert(longer.end(), {1, 2, 3, 4, 5});  // 17 tokens: 5 blocks; hit 3 → 2 fresh
  PrefixHit hit = bm.FindCachedPrefix(longer);
  EXPECT_EQ(hit.blocks.size(), 3u);
  EXPECT_FALSE(bm.AllocateNew(2, hit, 17));
  EXPECT_EQ(bm.Usage().cached_free, 3);
  EXPECT_EQ(bm.Usage().prefix_query_tokens, 0);  // a refused allocation is not counted
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManagerTest, ForkSharesFullBlocksWithRefCounts) {
  BlockManager bm(8, 4, true);
  ASSERT_TRUE(bm.AllocateNew(1, PrefixHit{}, 10));  // blocks 0,1 full, 2 partial
  bm.Fork(1, 2, 2);
  bm.Fork(1, 3, 2);
  EXPECT_THAT(bm.Table(2), ElementsAre(0, 1));
  EXPECT_EQ(bm.RefCount(0), 3);
  EXPECT_EQ(bm.RefCount(1), 3);
  EXPECT_EQ(bm.RefCount(2), 1);
  ASSERT_TRUE(bm.Grow(2, 11));  // the child's own tail block
  EXPECT_THAT(bm.Table(2), ElementsAre(0, 1, 3));
  EXPECT_EQ(bm.Usage().used, 4);
  EXPECT_INVARIANTS(bm);
  bm.Free(1);
  EXPECT_EQ(bm.RefCount(0), 2);
  EXPECT_EQ(bm.RefCount(2), 0);
  bm.Free(2);
  bm.Free(3);
  EXPECT_EQ(bm.Usage().used, 0);
  EXPECT_EQ(bm.Usage().free, 8);
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManagerTest, SamePrefixComputedTwiceInOneStepIsCachedOnce) {
  BlockManager bm(8, 4, true);
  const std::vector<TokenId> p = Iota(8, 40);
  ASSERT_TRUE(bm.AllocateNew(1, PrefixHit{}, 8));
  ASSERT_TRUE(bm.AllocateNew(2, PrefixHit{}, 8));  // no hit: 1's blocks are not computed yet
  bm.Commit(1, p, 8);
  bm.Commit(2, p, 8);
  EXPECT_EQ(bm.Usage().cached, 2);
  EXPECT_FALSE(bm.CachedHash(bm.Table(2)[0]).has_value());
  bm.Free(2);  // its duplicates go back as plain free blocks
  EXPECT_EQ(bm.Usage().cached_free, 0);
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManagerTest, ResetPrefixCacheForgetsEveryHash) {
  BlockManager bm(4, 4, true);
  const std::vector<TokenId> p = Iota(9, 0);
  ASSERT_TRUE(bm.AllocateNew(1, PrefixHit{}, 9));
  bm.Commit(1, p, 9);
  ASSERT_TRUE(bm.AllocateNew(2, PrefixHit{}, 4));
  bm.Commit(2, Iota(4, 300), 4);
  bm.Free(2);
  bm.ResetPrefixCache();
  EXPECT_EQ(bm.Usage().cached, 0);
  EXPECT_EQ(bm.Usage().cached_free, 0);
  EXPECT_THAT(bm.FindCachedPrefix(p).blocks, IsEmpty());
  EXPECT_INVARIANTS(bm);
}

}  // namespace
}  // namespace tpserve::scheduler
