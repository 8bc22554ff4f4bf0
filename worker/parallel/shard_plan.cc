// MakeShardPlan (DESIGN.md §3): whole KV groups per rank when T <= n_kv, one (replicated) KV head
// per rank when T > n_kv, FFN columns on alignment-block edges, vocab rows split evenly.
#include "worker/parallel/shard_plan.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tpserve {
namespace {

// Splits `n` units into `parts` contiguous ranges whose sizes differ by at most one; the first
// n % parts ranges are the larger ones. Caller guarantees parts >= 1.
std::vector<Range> SplitEvenly(int64_t n, int64_t parts) {
  std::vector<Range> out;
  out.reserve(parts);
  const int64_t base = n / parts;
  const int64_t extra = n % parts;
  int64_t begin = 0;
  for (int64_t p = 0; p < parts; ++p) {
    const int64_t size = base + (p < extra ? 1 : 0);
    out.push_back({begin, begin + size});
    begin += size;
  }
  return out;
}

absl::Status Validate(const ShardInputs& in) {
  const int64_t t = in.world_size;
  if (t < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard plan: tensor-parallel degree must be >= 1, got ", t));
  }
  if (in.num_heads < 1 || in.num_kv_heads < 1 || in.ffn_size < 1 || in.vocab_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shard plan: model dimensions must be positive (heads ", in.num_heads, ", kv heads ",
        in.num_kv_heads, ", ffn ", in.ffn_size, ", vocab ", in.vocab_size, ")"));
  }
  if (in.num_heads % in.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("shard plan: ", in.num_heads,
                                                   " query heads are not a multiple of ",
                                                   in.num_kv_heads, " KV heads"));
  }
  if (in.ffn_alignment < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard plan: ffn_alignment must be >= 1, got ", in.ffn_alignment));
  }
  if (t > in.num_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard plan: TP degree ", t, " is larger than the model's ", in.num_heads,
                     " query heads; use at most ", in.num_heads, " ranks"));
  }
  const int64_t ffn_blocks = (in.ffn_size + in.ffn_alignment - 1) / in.ffn_alignment;
  if (t > ffn_blocks) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard plan: TP degree ", t, " is larger than the ", ffn_blocks,
                     " FFN blocks of ", in.ffn_alignment, " columns (FFN width ", in.ffn_size,
                     "); use at most ", ffn_blocks, " ranks"));
  }
  if (t > in.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shard plan: TP degree ", t, " is larger than the vocabulary (", in.vocab_size, " rows)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ShardPlan> MakeShardPlan(const ShardInputs& in) {
  if (absl::Status st = Validate(in); !st.ok()) return st;
  const int t = in.world_size;
  const int64_t group = in.num_heads / in.num_kv_heads;  // query heads per KV head

  ShardPlan plan;
  plan.ranks.resize(t);
  for (int r = 0; r < t; ++r) {
    plan.ranks[r].rank = r;
    plan.ranks[r].world_size = t;
  }

  if (t <= in.num_kv_heads) {
    // Whole KV groups per rank; the first n_kv % T ranks own one group more.
    const std::vector<Range> kv = SplitEvenly(in.num_kv_heads, t);
    for (int r = 0; r < t; ++r) {
      plan.ranks[r].kv_heads = kv[r];
      plan.ranks[r].q_heads = {kv[r].begin * group, kv[r].end * group};
    }
  } else {
    // More ranks than KV heads: each KV head is replicated on T / n_kv ranks (the first
    // T % n_kv heads on one rank more), which split that head's query group between them.
    const std::vector<Range> ranks_of_kv = SplitEvenly(t, in.num_kv_heads);
    for (int64_t kv = 0; kv < in.num_kv_heads; ++kv) {
      const Range owners = ranks_of_kv[kv];
      if (owners.size() > group) {
        return absl::InvalidArgumentError(absl::StrCat(
            "shard plan: TP degree ", t, " puts ", owners.size(), " ranks on KV head ", kv,
            " which has only ", group, " query heads; some rank would own no head"));
      }
      const std::vector<Range> q = SplitEvenly(group, owners.size());
      for (int64_t i = 0; i < owners.size(); ++i) {
        RankShard& s = plan.ranks[owners.begin + i];
        s.kv_heads = {kv, kv + 1};
        s.q_heads = {kv * group + q[i].begin, kv * group + q[i].end};
      }
    }
  }

  // FFN columns in whole alignment blocks; the last block may be short when F is not a multiple.
  const int64_t ffn_blocks = (in.ffn_size + in.ffn_alignment - 1) / in.ffn_alignment;
  const std::vector<Range> ffn = SplitEvenly(ffn_blocks, t);
  const std::vector<Range> vocab = SplitEvenly(in.vocab_size, t);
  for (int r = 0; r < t; ++r) {
    plan.ranks[r].ffn_columns = {ffn[r].begin * in.ffn_alignment,
                                 std::min(ffn[r].end * in.ffn_alignment, in.ffn_size)};
    plan.ranks[r].vocab = vocab[r];
  }
  return plan;
}

}  // namespace tpserve
