#include "coordinator/scheduler/block_manager.h"

#include <algorithm>
#include <cassert>

#include "absl/strings/str_cat.h"

namespace tpserve::scheduler {

BlockManager::BlockManager(int num_blocks, int block_size, bool enable_prefix_caching)
    : block_size_(block_size), prefix_caching_(enable_prefix_caching), blocks_(num_blocks) {
  plain_free_.reserve(num_blocks);
  for (BlockId b = num_blocks - 1; b >= 0; --b) plain_free_.push_back(b);
}

PrefixHit BlockManager::FindCachedPrefix(std::span<const TokenId> tokens) const {
  PrefixHit hit;
  hit.num_query_tokens = static_cast<int>(tokens.size());
  if (!prefix_caching_ || tokens.empty()) return hit;
  ExtendBlockHashes(tokens, block_size_, hit.hashes);
  // The last token is always computed, so a prompt that fills its last block exactly can reuse
  // every block but that one.
  const size_t max_blocks = (tokens.size() - 1) / block_size_;
  for (size_t i = 0; i < max_blocks; ++i) {
    auto it = cached_.find(hit.hashes[i]);
    if (it == cached_.end()) break;
    const Block& b = blocks_[it->second];
    const BlockHash parent = i == 0 ? kRootBlockHash : hit.hashes[i - 1];
    const auto want = tokens.subspan(i * block_size_, block_size_);
    if (b.parent != parent || !std::equal(want.begin(), want.end(), b.tokens.begin())) break;
    hit.blocks.push_back(it->second);
  }
  return hit;
}

bool BlockManager::AllocateNew(SeqId seq, const PrefixHit& hit, int num_tokens) {
  assert(!tables_.contains(seq));
  const int num_hit = static_cast<int>(hit.blocks.size());
  const int fresh = std::max(0, BlocksForTokens(num_tokens) - num_hit);
  // Hit blocks that sit in the LRU list stop being free once taken.
  int evictable_hits = 0;
  for (BlockId b : hit.blocks) evictable_hits += blocks_[b].ref == 0 ? 1 : 0;
  if (fresh > NumFreeBlocks() - evictable_hits) return false;

  SeqBlocks& table = tables_[seq];
  table.hashes = hit.hashes;
  table.num_committed = num_hit;
  table.blocks.reserve(num_hit + fresh);
  for (BlockId b : hit.blocks) {
    if (blocks_[b].ref == 0) LruRemove(b);
    ++blocks_[b].ref;
    table.blocks.push_back(b);
  }
  for (int i = 0; i < fresh; ++i) table.blocks.push_back(TakeFreeBlock());
  query_tokens_ += hit.num_query_tokens;
  hit_tokens_ += static_cast<int64_t>(num_hit) * block_size_;
  return true;
}

bool BlockManager::Grow(SeqId seq, int num_tokens) {
  SeqBlocks& table = tables_.at(seq);
  const int need = BlocksForTokens(num_tokens) - static_cast<int>(table.blocks.size());
  if (need <= 0) return true;
  if (need > NumFreeBlocks()) return false;
  for (int i = 0; i < need; ++i) table.blocks.push_back(TakeFreeBlock());
  return true;
}

void BlockManager::Commit(SeqId seq, std::span<const TokenId> tokens, int num_computed) {
  if (!prefix_caching_) return;
  SeqBlocks& table = tables_.at(seq);
  const int num_full = std::min<int>(num_computed / block_size_, table.blocks.size());
  if (num_full <= table.num_committed) return;
  ExtendBlockHashes(tokens.first(static_cast<size_t>(num_full) * block_size_), block_size_,
                    table.hashes);
  for (int i = table.num_committed; i < num_full; ++i) {
    Block& b = blocks_[table.blocks[i]];
    if (b.hashed || cached_.contains(table.hashes[i])) continue;
    b.hashed = true;
    b.hash = table.hashes[i];
    b.parent = i == 0 ? kRootBlockHash : table.hashes[i - 1];
    const auto toks = tokens.subspan(static_cast<size_t>(i) * block_size_, block_size_);
    b.tokens.assign(toks.begin(), toks.end());
    cached_.emplace(b.hash, table.blocks[i]);
  }
  table.num_committed = num_full;
}

void BlockManager::Fork(SeqId parent, SeqId child, int num_shared_blocks) {
  assert(!tables_.contains(child));
  const SeqBlocks& from = tables_.at(parent);
  const int n = std::min<int>(num_shared_blocks, from.blocks.size());
  SeqBlocks table;
  table.blocks.assign(from.blocks.begin(), from.blocks.begin() + n);
  table.hashes.assign(from.hashes.begin(),
                      from.hashes.begin() + std::min<size_t>(n, from.hashes.size()));
  table.num_committed = std::min(n, from.num_committed);
  for (BlockId b : table.blocks) ++blocks_[b].ref;
  tables_.emplace(child, std::move(table));
}

void BlockManager::Free(SeqId seq) {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  const std::vector<BlockId>& ids = it->second.blocks;
  for (auto b = ids.rbegin(); b != ids.rend(); ++b) Release(*b);
  tables_.erase(it);
}

std::span<const BlockId> BlockManager::Table(SeqId seq) const {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return {};
  return it->second.blocks;
}

std::optional<BlockHash> BlockManager::CachedHash(BlockId block) const {
  if (!blocks_[block].hashed) return std::nullopt;
  return blocks_[block].hash;
}

std::vector<BlockId> BlockManager::EvictionOrder() const {
  std::vector<BlockId> order;
  for (BlockId b = lru_head_; b != -1; b = blocks_[b].lru_next) order.push_back(b);
  return order;
}

BlockUsage BlockManager::Usage() const {
  BlockUsage u;
  u.total = num_blocks();
  u.free = NumFreeBlocks();
  u.used = u.total - u.free;
  u.cached_free = lru_size_;
  u.cached = static_cast<int>(cached_.size());
  u.evictions = evictions_;
  u.prefix_query_tokens = query_tokens_;
  u.prefix_hit_tokens = hit_tokens_;
  return u;
}

void BlockManager::ResetPrefixCache() {
  while (lru_head_ != -1) {
    const BlockId b = lru_head_;
    LruRemove(b);
    Unhash(b);
    plain_free_.push_back(b);
  }
  for (BlockId b = 0; b < num_blocks(); ++b) Unhash(b);
  // Tables keep their hashes (still true of their tokens) but offer their blocks again: the KV
  // will be recomputed by the caller before anything is committed past num_committed anyway.
  for (auto& [seq, table] : tables_) table.num_committed = 0;
}

BlockId BlockManager::TakeFreeBlock() {
  BlockId b;
  if (!plain_free_.empty()) {
    b = plain_free_.back();
    plain_free_.pop_back();
  } else {
    b = lru_head_;
    assert(b != -1);
    LruRemove(b);
    Unhash(b);
    ++evictions_;
  }
  blocks_[b].ref = 1;
  return b;
}

void BlockManager::Release(BlockId block) {
  Block& b = blocks_[block];
  assert(b.ref > 0);
  if (--b.ref > 0) return;
  if (b.hashed) {
    LruPushBack(block);
  } else {
    plain_free_.push_back(block);
  }
}

void BlockManager::Unhash(BlockId block) {
  Block& b = blocks_[block];
  if (!b.hashed) return;
  auto it = cached_.find(b.hash);
  if (it != cached_.end() && it->second == block) cached_.erase(it);
  b.hashed = false;
  b.tokens.clear();
}

void BlockManager::LruPushBack(BlockId block) {
  Block& b = blocks_[block];
  b.in_lru = true;
  b.lru_prev = lru_tail_;
  b.lru_next = -1;
  if (lru_tail_ != -1) blocks_[lru_tail_].lru_next = block;
  lru_tail_ = block;
  if (lru_head_ == -1) lru_head_ = block;
  ++lru_size_;
}

void BlockManager::LruRemove(BlockId block) {
  Block& b = blocks_[block];
  assert(b.in_lru);
  if (b.lru_prev != -1) blocks_[b.lru_prev].lru_next = b.lru_next;
  if (b.lru_next != -1) blocks_[b.lru_next].lru_prev = b.lru_prev;
  if (lru_head_ == block) lru_head_ = b.lru_next;
  if (lru_tail_ == block) lru_tail_ = b.lru_prev;
  b.in_lru = false;
  b.lru_prev = b.lru_next = -1;
  --lru_size_;
}

absl::Status BlockManager::CheckInvariants() const {
  const int n = num_blocks();
  std::vector<int> holders(n, 0);
  for (const auto& [seq, table] : tables_) {
    std::vector<BlockId> sorted = table.blocks;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
      return absl::InternalError(absl::StrCat("sequence ", seq, " holds a block twice"));
    }
    for (BlockId b : table.blocks) {
      if (b < 0 || b >= n) return absl::InternalError(absl::StrCat("bad block id ", b));
      ++holders[b];
    }
  }
  std::vector<int> in_free(n, 0);
  for (BlockId b : plain_free_) ++in_free[b];
  int lru_count = 0;
  for (BlockId b = lru_head_; b != -1; b = blocks_[b].lru_next) {
    ++in_free[b];
    ++lru_count;
    if (!blocks_[b].hashed) return absl::InternalError(absl::StrCat("LRU block ", b, " unhashed"));
    if (lru_count > n) return absl::InternalError("LRU list has a cycle");
  }
  if (lru_count != lru_size_) return absl::InternalError("LRU size mismatch");
  int hashed = 0;
  for (BlockId b = 0; b < n; ++b) {
    const Block& blk = blocks_[b];
    if (blk.ref != holders[b]) {
      return absl::InternalError(absl::StrCat("block ", b, " ref count ", blk.ref, " but ",
                                              holders[b], " tables hold it"));
    }
    if (in_free[b] != (blk.ref == 0 ? 1 : 0)) {
      return absl::InternalError(absl::StrCat("block ", b, " with ref count ", blk.ref, " is in ",
                                              in_free[b], " free lists"));
    }
    if (blk.hashed) {
      ++hashed;
      auto it = cached_.find(blk.hash);
      if (it == cached_.end() || it->second != b) {
        return absl::InternalError(absl::StrCat("hashed block ", b, " missing from the map"));
      }
    }
  }
  if (hashed != static_cast<int>(cached_.size())) {
    return absl::InternalError("hash map and hashed blocks disagree");
  }
  const BlockUsage u = Usage();
  if (u.free + u.used != u.total) return absl::InternalError("free + used != total");
  return absl::OkStatus();
}

}  // namespace tpserve::scheduler
