// Paged KV-cache bookkeeping (DESIGN §4): a fixed pool of block ids, one block table per sequence,
// reference counts for blocks shared between sequences (prefix-cache hits, n > 1 forks), and the
// prefix cache (chain hash → block) with LRU eviction of cached blocks nobody uses.
//
// A block holds block_size tokens' KV on every rank. Token position p of a sequence lives in block
// table[p / block_size] at offset p % block_size. Blocks are never written while shared: a sequence
// only writes positions >= its computed count, and sharing (hits, forks) covers whole computed
// blocks below that, so no copy-on-write is needed.
//
// Free blocks come in two kinds: plain free blocks, and cached ones (ref count 0 but still holding
// a hashed block's KV). Allocation takes plain free blocks first and evicts cached ones, least
// recently freed first, only when none are left.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "coordinator/scheduler/block_hash.h"
#include "coordinator/scheduler/sequence.h"

namespace tpserve::scheduler {

// The cached prefix of a token list, from FindCachedPrefix.
struct PrefixHit {
  std::vector<BlockId> blocks;    // cached blocks for the first blocks.size() full blocks
  std::vector<BlockHash> hashes;  // chain hashes of every full block of the looked-up tokens
  int num_query_tokens = 0;       // tokens looked up (for the hit rate)
  int num_tokens(int block_size) const { return static_cast<int>(blocks.size()) * block_size; }
};

// Pool figures for metrics. free + used == total; cached_free is part of free.
struct BlockUsage {
  int total = 0;
  int used = 0;                     // ref count > 0
  int free = 0;                     // allocatable now: plain free + cached_free
  int cached_free = 0;              // ref count 0, still holding a cached block (evictable, LRU)
  int cached = 0;                   // blocks registered in the prefix cache, in use or not
  int64_t evictions = 0;            // cached blocks reused for other content since start
  int64_t prefix_query_tokens = 0;  // tokens of admitted sequences looked up in the cache
  int64_t prefix_hit_tokens = 0;    // of those, tokens served from cached blocks
  double hit_rate() const {
    return prefix_query_tokens == 0 ? 0.0 : double(prefix_hit_tokens) / prefix_query_tokens;
  }
  double utilisation() const { return total == 0 ? 0.0 : double(used) / total; }
};

class BlockManager {
 public:
  // num_blocks > 0 and block_size > 0 (checked by SchedulerConfig::Validate).
  BlockManager(int num_blocks, int block_size, bool enable_prefix_caching);

  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  int block_size() const { return block_size_; }
  bool prefix_caching() const { return prefix_caching_; }
  int BlocksForTokens(int num_tokens) const { return (num_tokens + block_size_ - 1) / block_size_; }
  int NumFreeBlocks() const { return static_cast<int>(plain_free_.size()) + lru_size_; }

  // Longest run of cached blocks that starts `tokens`, in whole blocks, leaving at least the last
  // token uncovered (its logits are needed, so it must be computed). No state change.
  PrefixHit FindCachedPrefix(std::span<const TokenId> tokens) const;

  // Creates the table of a new sequence: the hit's blocks (shared, ref count + 1) followed by fresh
  // blocks up to BlocksForTokens(num_tokens). Returns false, changing nothing, when the pool cannot
  // supply the fresh blocks. `hit` may be empty (PrefixHit{}).
  bool AllocateNew(SeqId seq, const PrefixHit& hit, int num_tokens);

  // Grows an existing table to hold num_tokens tokens (e.g. num_computed + 1 for a decode step).
  // Returns false, changing nothing, when the pool is short.
  bool Grow(SeqId seq, int num_tokens);

  // Registers the full blocks among the first num_computed tokens of `seq` in the prefix cache,
  // once their KV is written. A block whose hash is already cached (the same prefix computed by
  // another sequence in the same step) stays unregistered and is freed plainly later.
  void Commit(SeqId seq, std::span<const TokenId> tokens, int num_computed);

  // Gives `child` a table that shares the first num_shared_blocks blocks of `parent`.
  void Fork(SeqId parent, SeqId child, int num_shared_blocks);

  // Drops the table of `seq` (finish, abort, preemption). Its last block is freed first, so of a
  // sequence's cached blocks the tail is evicted before the (more shareable) head.
  void Free(SeqId seq);

  bool Has(SeqId seq) const { return tables_.contains(seq); }
  // Block ids of `seq` in position order; empty when it has none.
  std::span<const BlockId> Table(SeqId seq) const;

  int RefCount(BlockId block) const { return blocks_[block].ref; }
  std::optional<BlockHash> CachedHash(BlockId block) const;
  // Evictable cached blocks, the next to be evicted first.
  std::vector<BlockId> EvictionOrder() const;
  BlockUsage Usage() const;

  // Forgets every cached hash (the workers lost their KV, e.g. after a failed step). Blocks in use
  // stay allocated; cached free blocks become plain free blocks.
  void ResetPrefixCache();

  // Checks the bookkeeping: each block's ref count equals the number of tables holding it, free
  // blocks are in exactly one free list, free + used == total, the hash map and blocks agree.
  absl::Status CheckInvariants() const;

 private:
  struct Block {
    int ref = 0;
    bool hashed = false;
    bool in_lru = false;
    BlockHash hash = 0;
    BlockHash parent = 0;         // parent hash it was registered with (collision check)
    std::vector<TokenId> tokens;  // its tokens (collision check), only while hashed
    BlockId lru_prev = -1, lru_next = -1;
  };
  struct SeqBlocks {
    std::vector<BlockId> blocks;
    std::vector<BlockHash> hashes;  // chain hashes of full blocks known so far
    int num_committed = 0;          // leading full blocks already offered to the prefix cache
  };

  BlockId TakeFreeBlock();  // precondition: NumFreeBlocks() > 0
  void Release(BlockId block);
  void Unhash(BlockId block);
  void LruPushBack(BlockId block);
  void LruRemove(BlockId block);

  int block_size_;
  bool prefix_caching_;
  std::vector<Block> blocks_;
  std::vector<BlockId> plain_free_;        // stack; the lowest ids come out first at start
  BlockId lru_head_ = -1, lru_tail_ = -1;  // head is evicted next
  int lru_size_ = 0;
  absl::flat_hash_map<BlockHash, BlockId> cached_;
  absl::flat_hash_map<SeqId, SeqBlocks> tables_;
  int64_t evictions_ = 0;
  int64_t query_tokens_ = 0;
  int64_t hit_tokens_ = 0;
};

}  // namespace tpserve::scheduler
