// A worker announcing itself to the coordinator (worker.proto Cluster.Register), with retries:
// workers may start before the coordinator listens, and a restarted rank may register before
// the coordinator has noticed its predecessor died.
#pragma once

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tpserve/v1/worker.pb.h"

namespace tpserve {

// The CPU this process computes on: model name (/proc/cpuinfo), host memory total / available,
// `threads` compute units.
v1::DeviceInfo CpuDeviceInfo(int threads);

// "host:pid:start-time-ns": unique per process start.
std::string MakeIncarnation();

struct RegisterRetry {
  absl::Duration first_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  absl::Duration rpc_timeout = absl::Seconds(10);
};

// Calls Register on the Cluster service at `coordinator` until it answers. UNAVAILABLE,
// DEADLINE_EXCEEDED and ALREADY_EXISTS (the old incarnation not yet marked lost) are retried
// with exponential backoff; any other error (a wrong --tp, model or version) is returned at
// once. `stopped()` is polled between attempts; CANCELLED when it returns true.
absl::StatusOr<v1::RegisterResponse> RegisterWithCoordinator(const std::string& coordinator,
                                                             const v1::RegisterRequest& request,
                                                             const std::function<bool()>& stopped,
                                                             const RegisterRetry& retry = {});

}  // namespace tpserve
