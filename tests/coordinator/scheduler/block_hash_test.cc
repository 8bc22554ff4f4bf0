// Chain hashes against the golden file written by scripts/reference/scheduler_block_hash.py.
#include "coordinator/scheduler/block_hash.h"

#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace tpserve::scheduler {
namespace {

nlohmann::json LoadGolden() {
  std::ifstream f("tests/data/golden/scheduler/block_hashes.json");
  EXPECT_TRUE(f.good()) << "run from the repository root";
  return nlohmann::json::parse(f);
}

TEST(BlockHashTest, MatchesReferenceChain) {
  const nlohmann::json golden = LoadGolden();
  ASSERT_GE(golden["cases"].size(), 8u);
  for (const auto& c : golden["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const auto tokens = c["tokens"].get<std::vector<TokenId>>();
    std::vector<BlockHash> hashes;
    ExtendBlockHashes(tokens, c["block_size"].get<int>(), hashes);
    ASSERT_EQ(hashes.size(), c["hashes"].size());
    for (size_t i = 0; i < hashes.size(); ++i) {
      EXPECT_EQ(std::to_string(hashes[i]), c["hashes"][i].get<std::string>()) << "block " << i;
    }
  }
}

TEST(BlockHashTest, ExtendingInStepsEqualsHashingAtOnce) {
  const nlohmann::json golden = LoadGolden();
  for (const auto& c : golden["cases"]) {
    const auto tokens = c["tokens"].get<std::vector<TokenId>>();
    const int bs = c["block_size"].get<int>();
    std::vector<BlockHash> stepwise;
    for (size_t n = 0; n <= tokens.size(); ++n) {
      ExtendBlockHashes(std::span<const TokenId>(tokens).first(n), bs, stepwise);
    }
    std::vector<BlockHash> at_once;
    ExtendBlockHashes(tokens, bs, at_once);
    EXPECT_EQ(stepwise, at_once);
  }
}

TEST(BlockHashTest, EachHashCoversEverythingBefore) {
  // "diverges_in_block_1" equals "partial_tail" except token 20 (block 1 of 16-token blocks):
  // block 0 hashes agree, every later block differs although block 2's own tokens are equal.
  const nlohmann::json golden = LoadGolden();
  std::vector<TokenId> a, b;
  for (const auto& c : golden["cases"]) {
    if (c["name"] == "partial_tail") a = c["tokens"].get<std::vector<TokenId>>();
    if (c["name"] == "diverges_in_block_1") b = c["tokens"].get<std::vector<TokenId>>();
  }
  ASSERT_EQ(a.size(), 40u);
  ASSERT_EQ(b.size(), 40u);
  std::vector<BlockHash> ha, hb;
  ExtendBlockHashes(a, 16, ha);
  ExtendBlockHashes(b, 16, hb);
  ASSERT_EQ(ha.size(), 2u);
  EXPECT_EQ(ha[0], hb[0]);
  EXPECT_NE(ha[1], hb[1]);
  // Same tokens, different parent: different hash.
  const std::vector<TokenId> block(a.begin() + 16, a.begin() + 32);
  EXPECT_NE(HashBlock(ha[0], block), HashBlock(kRootBlockHash, block));
}

}  // namespace
}  // namespace tpserve::scheduler
