// RankShard <-> tpserve.v1.RankShard (worker.proto), shared by the coordinator (which computes
// the plan) and the worker service (which loads its slice). Protobuf types only, no gRPC.
#pragma once

#include "absl/status/statusor.h"
#include "tpserve/v1/worker.pb.h"
#include "worker/parallel/shard_plan.h"

namespace tpserve {

v1::RankShard RankShardToProto(const RankShard& shard);

// INVALID_ARGUMENT when a range is reversed or negative, or the rank is outside the group.
absl::StatusOr<RankShard> RankShardFromProto(const v1::RankShard& proto);

}  // namespace tpserve
