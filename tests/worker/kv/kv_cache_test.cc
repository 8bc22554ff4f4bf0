#include "worker/kv/kv_cache.h"

#include <gtest/gtest.h>

#include "worker/backend/cpu/cpu_backend.h"

namespace tpserve {
namespace {

TEST(KvCache, LayersArePoolsOfBlocks) {
  for (KvDType dtype : {KvDType::kFp32, KvDType::kFp16, KvDType::kInt8}) {
    CpuBackend be(1, CpuPrecision::kDefault, dtype);
    auto cache = KvCache::Create(be, {.num_layers = 3,
                                      .num_blocks = 5,
                                      .block_size = 4,
                                      .kv_heads = 2,
                                      .head_dim = 8,
                                      .dtype = dtype});
    ASSERT_TRUE(cache.ok()) << cache.status();
    const KvLayerView l0 = cache->layer(0), l2 = cache->layer(2);
    EXPECT_EQ(l0.num_blocks, 5);
    EXPECT_EQ(l0.block_size, 4);
    EXPECT_EQ(l0.dtype, dtype);
    EXPECT_NE(l0.k, l2.k);
    EXPECT_NE(l0.k, l0.v);
    // The whole pool is writable: 5 blocks x 2 heads of 4 x 8 elements of the dtype (int8:
    // and a 4-byte scale per position).
    const int64_t tile =
        dtype == KvDType::kInt8 ? 4 * (8 + 4) : 4 * 8 * (dtype == KvDType::kFp16 ? 2 : 4);
    EXPECT_EQ(KvTileBytes(dtype, 4, 8), tile);
    static_cast<uint8_t*>(l2.v)[5 * 2 * tile - 1] = 1;
    EXPECT_EQ(cache->config().BytesPerBlock(), 2 * 3 * 2 * tile);
  }
}

TEST(KvCache, RejectsADtypeTheBackendDoesNotKeep) {
  CpuBackend be(1, CpuPrecision::kDefault, KvDType::kFp16);
  auto cache = KvCache::Create(
      be,
      {.num_layers = 1, .num_blocks = 2, .kv_heads = 1, .head_dim = 4, .dtype = KvDType::kFp32});
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(cache.status().message().find("fp16"), std::string::npos) << cache.status();
}

TEST(KvCache, RejectsEmptySizes) {
  CpuBackend be(1);
  auto cache =
      KvCache::Create(be, {.num_layers = 1, .num_blocks = 0, .kv_heads = 1, .head_dim = 4});
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvCache, SlotGoesThroughTheBlockTable) {
  const std::vector<int32_t> table = {7, 2, 9};
  EXPECT_EQ(KvCache::Slot(table, 16, 0), 7 * 16);
  EXPECT_EQ(KvCache::Slot(table, 16, 17), 2 * 16 + 1);
  EXPECT_EQ(KvCache::Slot(table, 16, 47), 9 * 16 + 15);
  EXPECT_EQ(KvCache::Slot(table, 16, 48), -1);
}

TEST(BlockAllocator, GrowsTablesAndReusesFreedBlocks) {
  BlockAllocator a(4);
  std::vector<int32_t> t1, t2;
  ASSERT_TRUE(a.EnsureCapacity(17, 16, &t1).ok());  // 2 blocks
  EXPECT_EQ(t1, (std::vector<int32_t>{0, 1}));
  ASSERT_TRUE(a.EnsureCapacity(32, 16, &t1).ok());  // still 2
  EXPECT_EQ(t1.size(), 2u);
  const absl::Status full = a.EnsureCapacity(49, 16, &t2);  // 4 needed, 2 free
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(t2.empty());
  a.Free(t1);
  ASSERT_TRUE(a.EnsureCapacity(49, 16, &t2).ok());
  EXPECT_EQ(t2.size(), 4u);
  EXPECT_EQ(a.num_free(), 0);
}

}  // namespace
}  // namespace tpserve
