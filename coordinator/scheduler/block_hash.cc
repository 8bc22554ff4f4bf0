#include "coordinator/scheduler/block_hash.h"

namespace tpserve::scheduler {
namespace {

constexpr uint64_t kFnvOffsetBasis = 14695981039346656037ull;
constexpr uint64_t kFnvPrime = 1099511628211ull;

inline uint64_t MixBytes(uint64_t h, uint64_t value, int num_bytes) {
  for (int i = 0; i < num_bytes; ++i) {
    h ^= (value >> (8 * i)) & 0xffu;
    h *= kFnvPrime;
  }
  return h;
}

}  // namespace

BlockHash HashBlock(BlockHash parent, std::span<const TokenId> block_tokens) {
  uint64_t h = MixBytes(kFnvOffsetBasis, parent, 8);
  for (TokenId t : block_tokens) h = MixBytes(h, static_cast<uint32_t>(t), 4);
  return h;
}

void ExtendBlockHashes(std::span<const TokenId> tokens, int block_size,
                       std::vector<BlockHash>& known) {
  const size_t num_full = tokens.size() / block_size;
  while (known.size() < num_full) {
    const BlockHash parent = known.empty() ? kRootBlockHash : known.back();
    known.push_back(HashBlock(parent, tokens.subspan(known.size() * block_size, block_size)));
  }
}

}  // namespace tpserve::scheduler
