// The health decision of the coordinator (DESIGN.md §7: SERVING only while every rank is loaded
// and steps are making progress), as a pure function so that it is tested without gRPC. The
// supervisor in coordinator_main evaluates it every 100 ms and publishes the verdict to
// grpc.health.v1, GET /health and ServerStats.serving.
#pragma once

#include <string>

#include "absl/time/time.h"

namespace tpserve::api {

struct HealthInputs {
  bool engine_started = false;  // the workers loaded once and the engine exists
  bool workers_ready = false;   // every rank registered, loaded, and the group has its KV pool
  std::string workers_reason;   // why not, when !workers_ready
  // From EngineStats: requests queued or running, and the last completed step (or idle moment).
  bool busy = false;
  absl::Time last_progress = absl::InfinitePast();
  absl::Time now;
  // A step slower than this fails on the workers' side; a loop with work and no completed step
  // for longer is stuck.
  absl::Duration step_timeout = absl::Seconds(60);
};

struct HealthVerdict {
  bool serving = false;
  std::string reason;  // why not serving (empty while serving)
  bool operator==(const HealthVerdict&) const = default;
};

HealthVerdict DecideHealth(const HealthInputs& in);

}  // namespace tpserve::api
