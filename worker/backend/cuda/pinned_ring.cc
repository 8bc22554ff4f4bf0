#include "worker/backend/cuda/pinned_ring.h"

#include <algorithm>
#include <cstring>

namespace tpserve::cuda {

PinnedRing::PinnedRing(size_t chunk_bytes, int chunks)
    : chunk_bytes_((chunk_bytes + 255) / 256 * 256), chunks_(chunks) {}

PinnedRing::~PinnedRing() {
  for (size_t i = 0; i < done_.size(); ++i) {
    if (recorded_[i]) cudaEventSynchronize(done_[i]);  // no copy may read freed memory
    cudaEventDestroy(done_[i]);
  }
  if (host_ != nullptr) cudaFreeHost(host_);
}

cudaError_t PinnedRing::Allocate() {
  void* p = nullptr;
  if (cudaError_t e = cudaMallocHost(&p, chunk_bytes_ * chunks_); e != cudaSuccess) return e;
  host_ = static_cast<char*>(p);
  done_.assign(chunks_, nullptr);
  recorded_.assign(chunks_, false);
  for (int i = 0; i < chunks_; ++i) {
    if (cudaError_t e = cudaEventCreateWithFlags(&done_[i], cudaEventDisableTiming);
        e != cudaSuccess) {
      return e;
    }
  }
  return cudaSuccess;
}

cudaError_t PinnedRing::Advance(cudaStream_t stream) {
  if (cudaError_t e = cudaEventRecord(done_[chunk_], stream); e != cudaSuccess) return e;
  recorded_[chunk_] = true;
  chunk_ = (chunk_ + 1) % chunks_;
  used_ = 0;
  if (recorded_[chunk_]) {
    recorded_[chunk_] = false;
    return cudaEventSynchronize(done_[chunk_]);
  }
  return cudaSuccess;
}

cudaError_t PinnedRing::CopyToDevice(void* dst, const void* src, size_t bytes,
                                     cudaStream_t stream) {
  if (bytes == 0) return cudaSuccess;
  if (bytes > chunk_bytes_) return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream);
  if (host_ == nullptr) {
    if (cudaError_t e = Allocate(); e != cudaSuccess) return e;
  }
  // The chunk's event must follow every copy that read it: copies on another stream than the
  // last one close the chunk first (one backend uses one stream, so this does not happen there).
  if (used_ + bytes > chunk_bytes_ || (used_ > 0 && stream != last_stream_)) {
    if (cudaError_t e = Advance(last_stream_); e != cudaSuccess) return e;
  }
  char* staged = host_ + static_cast<size_t>(chunk_) * chunk_bytes_ + used_;
  std::memcpy(staged, src, bytes);
  used_ += (bytes + 15) / 16 * 16;
  last_stream_ = stream;
  return cudaMemcpyAsync(dst, staged, bytes, cudaMemcpyHostToDevice, stream);
}

PinnedBuffer::~PinnedBuffer() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

cudaError_t PinnedBuffer::Reserve(size_t bytes) {
  if (bytes <= bytes_) return cudaSuccess;
  if (data_ != nullptr) cudaFreeHost(data_);  // waits for the device: growth is rare
  data_ = nullptr;
  bytes_ = 0;
  const size_t size = std::max<size_t>(bytes, 4096);
  if (cudaError_t e = cudaMallocHost(&data_, size); e != cudaSuccess) return e;
  bytes_ = size;
  return cudaSuccess;
}

}  // namespace tpserve::cuda
