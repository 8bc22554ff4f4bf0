// Page-locked staging for the small host-to-device copies of every step (token ids, positions,
// block tables, sampling parameters).
//
// CUDA documents that an asynchronous copy from pageable host memory may synchronise with the
// stream while the driver stages it: each such copy would make the host wait for the GPU to
// finish the work queued so far, and a step that uploads metadata per layer would run the host
// and the GPU in lockstep. Copies from page-locked memory are truly asynchronous. The ring hands
// out page-locked space for the values to copy; a part of it is written again only after the
// copies that read it have run (an event per chunk, normally complete long before the ring
// comes back round).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <vector>

#include "absl/status/status.h"

namespace tpserve::cuda {

class PinnedRing {
 public:
  // `chunks` chunks of `chunk_bytes` each; nothing is allocated before the first Stage.
  PinnedRing(size_t chunk_bytes, int chunks);
  ~PinnedRing();
  PinnedRing(const PinnedRing&) = delete;
  PinnedRing& operator=(const PinnedRing&) = delete;

  // Copies `bytes` bytes of `src` into page-locked memory and enqueues the copy from there to
  // `dst` (device) on `stream`. Copies larger than a chunk go from `src` directly (pageable: the
  // driver stages them; they happen at load, not per step). Errors are CUDA's.
  cudaError_t CopyToDevice(void* dst, const void* src, size_t bytes, cudaStream_t stream);

  size_t chunk_bytes() const { return chunk_bytes_; }

 private:
  cudaError_t Allocate();
  // Moves to the next chunk once every copy that read it has run.
  cudaError_t Advance(cudaStream_t stream);

  const size_t chunk_bytes_;
  const int chunks_;
  char* host_ = nullptr;
  std::vector<cudaEvent_t> done_;  // per chunk: recorded when the ring leaves it
  std::vector<bool> recorded_;     // whether done_[i] was recorded since it was last waited
  int chunk_ = 0;
  size_t used_ = 0;  // bytes handed out in the current chunk
  cudaStream_t last_stream_ = nullptr;
};

// A page-locked host buffer that grows on demand, for device-to-host copies the caller waits
// for (a copy into pageable memory would make the copy call itself wait, and then the caller).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  // At least `bytes` bytes; the contents are not kept across a growth. Errors are CUDA's.
  cudaError_t Reserve(size_t bytes);
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace tpserve::cuda
