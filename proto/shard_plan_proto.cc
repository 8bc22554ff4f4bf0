#include "proto/shard_plan_proto.h"

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"

namespace tpserve {
namespace {

void SetRange(const Range& r, v1::Range* out) {
  out->set_begin(r.begin);
  out->set_end(r.end);
}

absl::StatusOr<Range> GetRange(const v1::Range& r, const char* name) {
  if (r.begin() < 0 || r.end() < r.begin()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank shard: ", name, " range [", r.begin(), ", ", r.end(), ") is invalid"));
  }
  return Range{r.begin(), r.end()};
}

}  // namespace

v1::RankShard RankShardToProto(const RankShard& shard) {
  v1::RankShard p;
  p.set_rank(shard.rank);
  p.set_world_size(shard.world_size);
  SetRange(shard.q_heads, p.mutable_q_heads());
  SetRange(shard.kv_heads, p.mutable_kv_heads());
  SetRange(shard.ffn_columns, p.mutable_ffn_columns());
  SetRange(shard.vocab, p.mutable_vocab());
  return p;
}

absl::StatusOr<RankShard> RankShardFromProto(const v1::RankShard& p) {
  if (p.world_size() < 1 || p.rank() < 0 || p.rank() >= p.world_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank shard: rank ", p.rank(), " outside a group of ", p.world_size()));
  }
  RankShard s;
  s.rank = p.rank();
  s.world_size = p.world_size();
  ASSIGN_OR_RETURN(s.q_heads, GetRange(p.q_heads(), "q_heads"));
  ASSIGN_OR_RETURN(s.kv_heads, GetRange(p.kv_heads(), "kv_heads"));
  ASSIGN_OR_RETURN(s.ffn_columns, GetRange(p.ffn_columns(), "ffn_columns"));
  ASSIGN_OR_RETURN(s.vocab, GetRange(p.vocab(), "vocab"));
  return s;
}

}  // namespace tpserve
