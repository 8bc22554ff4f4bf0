// CUDA / cuBLAS error codes as absl::Status, with the no-driver case spelled out for users.
#pragma once

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "worker/backend/check.h"

namespace tpserve::cuda {

// OK for cudaSuccess. FAILED_PRECONDITION for "no GPU / no driver" (code 35 becomes "no NVIDIA
// driver on this machine"), INTERNAL naming `what` and the CUDA error otherwise.
absl::Status CudaStatus(cudaError_t err, const char* what);

// cuBLAS status (an int, to keep cublas_v2.h out of this header).
absl::Status CublasStatus(int status, const char* what);

}  // namespace tpserve::cuda

// Aborts with the CUDA error: only for failures inside ops, which have no status to return
// (a broken device, not bad input).
#define TPSERVE_CUDA_CHECK(expr)                                                   \
  do {                                                                             \
    const cudaError_t _err = (expr);                                               \
    TPSERVE_CHECK(_err == cudaSuccess, "%s: %s", #expr, cudaGetErrorString(_err)); \
  } while (0)
