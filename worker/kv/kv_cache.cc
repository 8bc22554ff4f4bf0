#include "worker/kv/kv_cache.h"

#include "absl/strings/str_cat.h"

namespace tpserve {

absl::StatusOr<KvCache> KvCache::Create(Backend& backend, const KvCacheConfig& config) {
  if (config.num_layers <= 0 || config.num_blocks <= 0 || config.block_size <= 0 ||
      config.kv_heads <= 0 || config.head_dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: every size must be positive (layers ", config.num_layers,
                     ", blocks ", config.num_blocks, ", block size ", config.block_size,
                     ", kv heads ", config.kv_heads, ", head dim ", config.head_dim, ")"));
  }
  if (config.dtype != backend.kv_dtype()) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: dtype ", KvDTypeName(config.dtype), ", but the ", backend.name(),
                     " backend keeps its KV pools in ", KvDTypeName(backend.kv_dtype())));
  }
  // Tensors are fp32: a pool of 16-bit elements takes half as many floats (rounded up).
  const int64_t bytes = config.num_blocks * config.kv_heads *
                        KvTileBytes(config.dtype, config.block_size, config.head_dim);
  const int64_t floats = (bytes + 3) / 4;
  std::vector<Tensor> k, v;
  for (int64_t l = 0; l < config.num_layers; ++l) {
    k.push_back(backend.Alloc({floats}));
    v.push_back(backend.Alloc({floats}));
  }
  return KvCache(config, std::move(k), std::move(v));
}

KvLayerView KvCache::layer(int64_t i) const {
  return KvLayerView{.k = k_[i].data(),
                     .v = v_[i].data(),
                     .dtype = config_.dtype,
                     .num_blocks = config_.num_blocks,
                     .block_size = config_.block_size,
                     .kv_heads = config_.kv_heads,
                     .head_dim = config_.head_dim};
}

int64_t KvCache::Slot(std::span<const int32_t> block_table, int64_t block_size, int64_t pos) {
  const int64_t b = pos / block_size;
  if (pos < 0 || b >= static_cast<int64_t>(block_table.size())) return -1;
  return static_cast<int64_t>(block_table[b]) * block_size + pos % block_size;
}

BlockAllocator::BlockAllocator(int64_t num_blocks) {
  for (int64_t i = num_blocks - 1; i >= 0; --i) free_.push_back(static_cast<int32_t>(i));
}

absl::Status BlockAllocator::EnsureCapacity(int64_t num_positions, int64_t block_size,
                                            std::vector<int32_t>* table) {
  const int64_t needed = (num_positions + block_size - 1) / block_size;
  const int64_t missing = needed - static_cast<int64_t>(table->size());
  if (missing <= 0) return absl::OkStatus();
  if (missing > num_free()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache full: ", num_positions, " positions need ", missing,
                     " more blocks of ", block_size, ", ", num_free(), " free"));
  }
  for (int64_t i = 0; i < missing; ++i) {
    table->push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

void BlockAllocator::Free(std::span<const int32_t> blocks) {
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) free_.push_back(*it);
}

}  // namespace tpserve
