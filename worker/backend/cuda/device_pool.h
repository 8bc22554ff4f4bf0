// Device memory for one CUDA backend: plain cudaMalloc (never managed memory), recycled.
//
// The model allocates its activations afresh every forward pass; returning freed buffers to
// per-size free lists means that after the first step of a given shape no cudaMalloc happens,
// so steady-state steps allocate nothing. Freed buffers may be reused by the next op at once:
// every user enqueues on the backend's one stream, which orders the reuse after the last use.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"

namespace tpserve::cuda {

class DevicePool {
 public:
  DevicePool();
  // Device memory of at least `bytes` bytes (256-byte aligned), returned to the pool when the last
  // shared_ptr copy goes. RESOURCE_EXHAUSTED when the device is out of memory even after
  // releasing the cached free buffers.
  absl::StatusOr<std::shared_ptr<void>> Get(size_t bytes);
  // Gives every cached free buffer back to the driver.
  void Trim();
  size_t bytes_in_use() const;
  // Device memory the pool holds from the driver: in use and cached free.
  size_t bytes_held() const;
  // The most bytes_in_use since the pool was made or ResetPeak.
  size_t peak_bytes_in_use() const;
  void ResetPeak();

  // Size class of a request: multiples of 256 B, then of a quarter of the next power of two
  // (at most 25% waste).
  static size_t RoundUp(size_t bytes);

 private:
  struct State {
    std::mutex mu;
    std::map<size_t, std::vector<void*>> free;  // size class -> buffers
    size_t in_use = 0;
    size_t peak = 0;
    size_t held = 0;
    ~State();
  };
  std::shared_ptr<State> state_;
};

}  // namespace tpserve::cuda
