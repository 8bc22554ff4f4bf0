// A grpc.health.v1.Health/Check client that needs no health.proto (Debian ships none): the two
// messages are tiny and hand-encoded. For `tpserve up`, tests and scripts. No gRPC types here.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tpserve {

enum class HealthState { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };

// Checks `service` ("" = the whole server) at `address` ("host:port"). The RPC's error when the
// server cannot be reached within `timeout`.
absl::StatusOr<HealthState> CheckHealth(const std::string& address, const std::string& service,
                                        absl::Duration timeout);

}  // namespace tpserve
