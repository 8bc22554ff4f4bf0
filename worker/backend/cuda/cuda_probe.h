// Asks the CUDA driver what is there; tells a user plainly when there is no GPU or no driver.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace tpserve::cuda {

struct DeviceSummary {
  int count = 0;
  std::string first_name;  // name of device 0, empty when count == 0
  size_t first_total_bytes = 0;
};

// OK with count >= 1 when a usable GPU exists. FAILED_PRECONDITION naming the CUDA error otherwise;
// code 35 (cudaErrorInsufficientDriver) is reported as "no NVIDIA driver on this machine".
absl::StatusOr<DeviceSummary> ProbeDevices();

// Runs a one-block kernel that writes `value` to device memory and reads it back (smoke test).
absl::StatusOr<int> RoundTripKernel(int value);

}  // namespace tpserve::cuda
