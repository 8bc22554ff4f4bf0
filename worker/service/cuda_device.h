// The CUDA WorkerDevice (device.h); compiled only in CUDA builds (TPSERVE_HAVE_CUDA).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "worker/service/device.h"

namespace tpserve {

// GPU `index` in bf16 (or fp32), with NCCL collectives when `nccl` (needs an NCCL build) and Gloo
// staged through host memory otherwise. Fails fast, before any allocation, when the driver or the
// GPU is missing (see OpenDevice).
absl::StatusOr<std::unique_ptr<WorkerDevice>> OpenCudaDevice(int index, bool bf16, bool nccl);

}  // namespace tpserve
