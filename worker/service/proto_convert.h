// worker.proto messages <-> the plain structs of WorkerEngine: the one place the worker turns
// proto into engine input and back. Protobuf types only (no gRPC).
#pragma once

#include "absl/status/statusor.h"
#include "tpserve/v1/worker.pb.h"
#include "worker/service/worker_engine.h"

namespace tpserve {

// INVALID_ARGUMENT naming the field for a malformed shard, an unknown communicator kind or a
// negative size. kv_block_size 0 means 16, timeout_ms 0 means 30 s (worker.proto defaults).
absl::StatusOr<LoadSpec> LoadSpecFromProto(const v1::LoadModelRequest& req);
void LoadReportToProto(const LoadReport& report, v1::LoadModelResponse* resp);

// INVALID_ARGUMENT naming the sequence and field for sampling options out of range (negative
// temperature or top_k, top_p or min_p outside [0, 1], non-finite values). Zero means "off"
// for top_p and repetition_penalty (proto3's unset value), as 1 does.
absl::StatusOr<PlanStep> PlanStepFromProto(const v1::StepPlan& plan);
void StepOutcomeToProto(const StepOutcome& out, v1::StepResult* result);

void HealthToProto(const HealthSnapshot& health, v1::WorkerHealthResponse* resp);

}  // namespace tpserve
