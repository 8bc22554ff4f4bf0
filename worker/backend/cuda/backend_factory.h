// Builds the compute backend a `--device` flag names: "cpu" or "cuda:K" (K a device ordinal;
// "cuda" means cuda:0), optionally with a precision suffix for CUDA: "cuda:0:fp32".
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/backend/backend.h"

namespace tpserve {

struct DeviceSpec {
  bool cuda = false;
  int index = 0;
  bool fp32 = false;  // CUDA only: fp32 weights and GEMMs instead of bf16
};

// INVALID_ARGUMENT with the accepted spellings for anything else.
absl::StatusOr<DeviceSpec> ParseDevice(const std::string& device);

// The backend for `device`; `cpu_threads` sizes the CPU backend's pool. FAILED_PRECONDITION
// ("no NVIDIA driver on this machine" and the like) when a CUDA device is asked for and none
// is usable.
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& device, int cpu_threads);

}  // namespace tpserve
