// The CUDA WorkerDevice (device.h); compiled only in CUDA builds (TPSERVE_HAVE_CUDA).
#pragma once

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "worker/service/device.h"

namespace tpserve {

// GPU `index` in bf16 (or fp32), with NCCL collectives when `nccl` (needs an NCCL build) and Gloo
// staged through host memory otherwise; KV pools in `kv_dtype` (nullopt: fp16 with bf16, fp32
// with fp32); decode steps of up to `max_recorded_rows` sequences replayed as CUDA graphs (0:
// never). Fails fast, before any allocation, when the driver or the GPU is missing (see
// OpenDevice).
absl::StatusOr<std::unique_ptr<WorkerDevice>> OpenCudaDevice(int index, bool bf16, bool nccl,
                                                             std::optional<KvDType> kv_dtype,
                                                             int64_t max_recorded_rows);

}  // namespace tpserve
