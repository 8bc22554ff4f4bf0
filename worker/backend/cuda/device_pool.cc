#include "worker/backend/cuda/device_pool.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>

#include "absl/strings/str_cat.h"
#include "worker/backend/cuda/cuda_status.h"

namespace tpserve::cuda {

DevicePool::DevicePool() : state_(std::make_shared<State>()) {}

DevicePool::State::~State() {
  for (auto& [size, list] : free) {
    for (void* p : list) cudaFree(p);
  }
}

size_t DevicePool::RoundUp(size_t bytes) {
  if (bytes <= 4096) return (bytes + 255) / 256 * 256 + (bytes == 0 ? 256 : 0);
  const size_t quantum = std::bit_ceil(bytes) / 4;
  return (bytes + quantum - 1) / quantum * quantum;
}

absl::StatusOr<std::shared_ptr<void>> DevicePool::Get(size_t bytes) {
  const size_t size = RoundUp(bytes);
  void* ptr = nullptr;
  bool fresh = false;  // from the driver, not the free lists
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    auto it = state_->free.find(size);
    if (it != state_->free.end() && !it->second.empty()) {
      ptr = it->second.back();
      it->second.pop_back();
    }
  }
  if (ptr == nullptr) {
    cudaError_t err = cudaMalloc(&ptr, size);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the sticky-free error before retrying
      Trim();
      err = cudaMalloc(&ptr, size);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      if (err == cudaErrorMemoryAllocation) {
        return absl::ResourceExhaustedError(absl::StrCat("GPU out of memory allocating ", size,
                                                         " bytes (", state_->in_use,
                                                         " bytes in use by this backend)"));
      }
      return CudaStatus(err, "cudaMalloc");
    }
    fresh = true;
  }
  std::shared_ptr<State> state = state_;
  {
    std::lock_guard<std::mutex> lock(state->mu);
    if (fresh) state->held += size;
    state->in_use += size;
    state->peak = std::max(state->peak, state->in_use);
  }
  return std::shared_ptr<void>(ptr, [state, size](void* p) {
    std::lock_guard<std::mutex> lock(state->mu);
    state->in_use -= size;
    state->free[size].push_back(p);
  });
}

void DevicePool::Trim() {
  std::lock_guard<std::mutex> lock(state_->mu);
  cudaDeviceSynchronize();  // a cached buffer may still be read by queued work
  for (auto& [size, list] : state_->free) {
    for (void* p : list) cudaFree(p);
    state_->held -= size * list.size();
    list.clear();
  }
}

size_t DevicePool::bytes_held() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->held;
}

size_t DevicePool::bytes_in_use() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->in_use;
}

size_t DevicePool::peak_bytes_in_use() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->peak;
}

void DevicePool::ResetPeak() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->peak = state_->in_use;
}

}  // namespace tpserve::cuda
