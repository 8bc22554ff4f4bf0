// Chain hash that names a full KV block for prefix caching (DESIGN §4): a block's hash covers its
// own tokens and, through the parent hash, every token before it, so equal hashes mean equal
// prefixes (up to 64-bit collisions, which the block manager rules out by comparing tokens).
//
// Definition (also in scripts/reference/scheduler_block_hash.py, which writes the golden file):
//   h = FNV-1a-64 over the bytes of parent_hash as uint64 little-endian, then each token as int32
//   little-endian; the first block's parent is kRootBlockHash.
// Stable across processes and builds (unlike absl::Hash), so hashes can be logged and compared.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "coordinator/scheduler/sequence.h"

namespace tpserve::scheduler {

using BlockHash = uint64_t;

inline constexpr BlockHash kRootBlockHash = 0;

BlockHash HashBlock(BlockHash parent, std::span<const TokenId> block_tokens);

// Hashes of the full blocks of `tokens` (size / block_size of them, a partial tail is skipped),
// continuing from `known` (hashes already computed for the first known.size() blocks).
void ExtendBlockHashes(std::span<const TokenId> tokens, int block_size,
                       std::vector<BlockHash>& known);

}  // namespace tpserve::scheduler
