#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "worker/backend/cuda/cuda_launch.h"
#include "worker/backend/cuda/cuda_probe.h"

namespace tpserve::cuda {
namespace {

absl::Status FromCuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  if (err == cudaErrorInsufficientDriver || err == cudaErrorNoDevice) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": no usable GPU (", cudaGetErrorName(err), ", code ", static_cast<int>(err),
        err == cudaErrorInsufficientDriver ? "): no NVIDIA driver on this machine" : ")"));
  }
  return absl::InternalError(
      absl::StrCat(what, ": ", cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

__global__ void WriteValue(int* out, int value) { *out = value; }

}  // namespace

absl::StatusOr<DeviceSummary> ProbeDevices() {
  DeviceSummary summary;
  if (auto st = FromCuda(cudaGetDeviceCount(&summary.count), "cudaGetDeviceCount"); !st.ok()) {
    return st;
  }
  if (summary.count == 0) return absl::FailedPreconditionError("no CUDA device present");
  cudaDeviceProp prop{};
  if (auto st = FromCuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties"); !st.ok()) {
    return st;
  }
  summary.first_name = prop.name;
  summary.first_total_bytes = prop.totalGlobalMem;
  return summary;
}

absl::StatusOr<int> RoundTripKernel(int value) {
  int* dev = nullptr;
  if (auto st = FromCuda(cudaMalloc(&dev, sizeof(int)), "cudaMalloc"); !st.ok()) return st;
  TPSERVE_LAUNCH(WriteValue, (1, 1), dev, value);
  int host = 0;
  absl::Status st =
      FromCuda(cudaMemcpy(&host, dev, sizeof(int), cudaMemcpyDeviceToHost), "cudaMemcpy");
  cudaFree(dev);
  if (!st.ok()) return st;
  return host;
}

}  // namespace tpserve::cuda
