// The paged KV cache of one rank (DESIGN.md §4).
//
// Per layer, K and V are pools of num_blocks * kv_heads tiles of block_size * head_dim elements
// of the backend's KV dtype (and kInt8's scales) (kv_heads = this rank's KV heads; the layout
// inside a block is the backend's, see KvLayerView). A sequence owns a list of block ids (its block
// table, handed out by the coordinator's block manager; BlockAllocator below does it for
// single-process tools and tests); position p of the sequence lives in block table[p / block_size]
// at row p % block_size. Attention reads through the table, so sequences need no contiguous space
// and blocks can later be shared between sequences with a common prefix.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/backend/backend.h"

namespace tpserve {

struct KvCacheConfig {
  int64_t num_layers = 0;
  int64_t num_blocks = 0;
  int64_t block_size = 16;
  int64_t kv_heads = 0;  // this rank's
  int64_t head_dim = 0;
  KvDType dtype = KvDType::kFp32;

  // K and V of one block over all layers, in bytes.
  int64_t BytesPerBlock() const {
    return 2 * num_layers * kv_heads * KvTileBytes(dtype, block_size, head_dim);
  }
};

class KvCache {
 public:
  // INVALID_ARGUMENT for non-positive sizes, or a dtype other than the backend's kv_dtype().
  static absl::StatusOr<KvCache> Create(Backend& backend, const KvCacheConfig& config);

  const KvCacheConfig& config() const { return config_; }
  KvLayerView layer(int64_t i) const;

  // Cache slot (block * block_size + row) of `pos` for a sequence with `block_table`; -1 when the
  // table is too short.
  static int64_t Slot(std::span<const int32_t> block_table, int64_t block_size, int64_t pos);

 private:
  KvCache(KvCacheConfig config, std::vector<Tensor> k, std::vector<Tensor> v)
      : config_(config), k_(std::move(k)), v_(std::move(v)) {}
  KvCacheConfig config_;
  std::vector<Tensor> k_, v_;  // per layer: the pools' bytes, held in fp32 Tensors
};

// Block ids from a free list, for single-process use. The cluster's coordinator owns the real
// block manager (reference counts, prefix cache); this one only hands out and takes back.
class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t num_blocks);
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  // Grows `table` until it covers `num_positions` positions. RESOURCE_EXHAUSTED (table unchanged)
  // when not enough blocks are free.
  absl::Status EnsureCapacity(int64_t num_positions, int64_t block_size,
                              std::vector<int32_t>* table);
  void Free(std::span<const int32_t> blocks);

 private:
  std::vector<int32_t> free_;  // a stack: lowest ids handed out first
};

}  // namespace tpserve
