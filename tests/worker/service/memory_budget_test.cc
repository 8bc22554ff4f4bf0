// Memory sizing of a rank: weight bytes of a shard against the file's tensors, and the KV block
// arithmetic.
#include "worker/service/memory_budget.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "worker/model/model_loader.h"

namespace tpserve {
namespace {

using ::testing::HasSubstr;

// One rank holds every byte; two ranks (2 KV heads, nothing replicated) split every matrix and
// both hold every vector (norms).
TEST(MemoryBudget, ShardWeightBytesSplitMatricesAndReplicateVectors) {
  auto files = OpenModelFiles("tests/data/golden/models/llama-gqa-llama3");
  ASSERT_TRUE(files.ok()) << files.status();
  int64_t matrices = 0, vectors = 0;
  for (const std::string& name : files->source->Names()) {
    const TensorInfo* t = files->source->Find(name);
    (t->shape.size() >= 2 ? matrices : vectors) += static_cast<int64_t>(t->nbytes);
  }
  ASSERT_GT(vectors, 0);
  auto one = MakeShardPlan(ShardInputsOf(files->config, 1));
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(ShardWeightBytes(*files->source, files->config, one->ranks[0]), matrices + vectors);
  auto two = MakeShardPlan(ShardInputsOf(files->config, 2));
  ASSERT_TRUE(two.ok());
  const int64_t r0 = ShardWeightBytes(*files->source, files->config, two->ranks[0]);
  const int64_t r1 = ShardWeightBytes(*files->source, files->config, two->ranks[1]);
  EXPECT_EQ(r0 + r1, matrices + 2 * vectors);
  EXPECT_EQ(r0, r1);  // everything divides by 2 here
}

TEST(MemoryBudget, KvBlocksAreWhatTheBudgetLeaves) {
  KvSizing s{
      .budget_bytes = 1000, .weight_bytes = 300, .activation_bytes = 100, .bytes_per_block = 100};
  EXPECT_EQ(*KvBlocksThatFit(s), 6);
  s.max_useful_blocks = 4;
  EXPECT_EQ(*KvBlocksThatFit(s), 4);
  s.budget_bytes = 450;
  const absl::StatusOr<int64_t> none = KvBlocksThatFit(s);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(none.status().message(), HasSubstr("weights take 300"));
}

TEST(MemoryBudget, HostMemoryIsRead) {
  EXPECT_GT(HostTotalBytes(), 0);
  EXPECT_GT(HostAvailableBytes(), 0);
  EXPECT_LE(HostAvailableBytes(), HostTotalBytes());
}

}  // namespace
}  // namespace tpserve
