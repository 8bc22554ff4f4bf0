// What each rank of a tensor-parallel group owns (DESIGN.md §3). Pure data: computed once by the
// coordinator, sent to every rank, and used by the model code to pick its slices of each weight.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace tpserve {

// Half-open range [begin, end).
struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool operator==(const Range&) const = default;
};

// The slices one rank owns. With world_size 1 every range is the whole dimension.
struct RankShard {
  int rank = 0;
  int world_size = 1;
  Range q_heads;      // query heads: columns of q_proj, rows of o_proj's input (× head_dim)
  Range kv_heads;     // KV heads this rank computes; replicated across ranks when T > n_kv
  Range ffn_columns;  // columns of gate/up, rows of down's input (FFN width F)
  Range vocab;        // rows of the token embedding and of the LM head
  bool operator==(const RankShard&) const = default;
};

// Shapes the plan is computed from.
struct ShardInputs {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t ffn_size = 0;
  int64_t vocab_size = 0;
  int world_size = 1;
  // Column boundaries inside a quantised row must fall on block edges (32 for Q4_0/Q4_1/Q8_0,
  // 256 for K-quants). FFN ranges are multiples of this; heads are assumed aligned by head_dim.
  int64_t ffn_alignment = 1;
};

struct ShardPlan {
  std::vector<RankShard> ranks;
};

// The shard of a single-rank group: everything.
inline RankShard WholeModelShard(const ShardInputs& in) {
  return RankShard{.rank = 0,
                   .world_size = 1,
                   .q_heads = {0, in.num_heads},
                   .kv_heads = {0, in.num_kv_heads},
                   .ffn_columns = {0, in.ffn_size},
                   .vocab = {0, in.vocab_size}};
}

// Splits heads by whole KV groups (uneven when they do not divide), FFN columns and vocab rows as
// evenly as the alignment allows. INVALID_ARGUMENT when a rank would own nothing.
absl::StatusOr<ShardPlan> MakeShardPlan(const ShardInputs& in);

}  // namespace tpserve
