#include "worker/backend/cuda/cuda_status.h"

#include "absl/strings/str_cat.h"

namespace tpserve::cuda {

absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  if (err == cudaErrorInsufficientDriver || err == cudaErrorNoDevice) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": no usable GPU (", cudaGetErrorName(err), ", code ", static_cast<int>(err),
        err == cudaErrorInsufficientDriver ? "): no NVIDIA driver on this machine" : ")"));
  }
  return absl::InternalError(
      absl::StrCat(what, ": ", cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

absl::Status CublasStatus(int status, const char* what) {
  if (status == 0) return absl::OkStatus();  // CUBLAS_STATUS_SUCCESS
  return absl::InternalError(absl::StrCat(what, ": cuBLAS status ", status));
}

}  // namespace tpserve::cuda
