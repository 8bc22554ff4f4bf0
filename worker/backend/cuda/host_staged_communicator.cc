#include "worker/backend/cuda/host_staged_communicator.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <numeric>

#include "common/base/status_macros.h"

namespace tpserve {
namespace {

// Device memory (cudaMalloc) as opposed to host memory, which collectives can take as it is.
bool OnDevice(const void* p) {
  cudaPointerAttributes attr{};
  if (p == nullptr || cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeDevice;
}

}  // namespace

absl::Status HostStagedCommunicator::AllReduceSum(float* data, size_t count) {
  if (!OnDevice(data)) return inner_.AllReduceSum(data, count);
  host_in_.resize(count);
  backend_.CopyToHost(data, host_in_.data(), count);  // synchronises the stream
  RETURN_IF_ERROR(inner_.AllReduceSum(host_in_.data(), count));
  backend_.CopyFromHost(host_in_.data(), data, count);
  return absl::OkStatus();
}

absl::Status HostStagedCommunicator::GatherV(const float* in, std::span<const size_t> counts,
                                             float* out, int root) {
  if (counts.size() != static_cast<size_t>(world_size())) {
    return absl::InvalidArgumentError("GatherV: one count per rank");
  }
  const size_t mine = counts[rank()];
  const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
  const float* host_in = in;
  if (OnDevice(in)) {
    host_in_.resize(mine);
    backend_.CopyToHost(in, host_in_.data(), mine);
    host_in = host_in_.data();
  }
  const bool is_root = rank() == root;
  const bool out_on_device = is_root && OnDevice(out);
  host_out_.resize(out_on_device ? total : 0);
  RETURN_IF_ERROR(inner_.GatherV(host_in, counts, out_on_device ? host_out_.data() : out, root));
  if (out_on_device) backend_.CopyFromHost(host_out_.data(), out, total);
  return absl::OkStatus();
}

absl::Status HostStagedCommunicator::Broadcast(void* data, size_t bytes, int root) {
  if (!OnDevice(data)) return inner_.Broadcast(data, bytes, root);
  const size_t floats = (bytes + sizeof(float) - 1) / sizeof(float);
  host_in_.resize(floats);
  // Whole floats are copied; a trailing partial float is covered by the buffer's padding
  // (device buffers are 256-byte granular).
  backend_.CopyToHost(static_cast<float*>(data), host_in_.data(), floats);
  RETURN_IF_ERROR(inner_.Broadcast(host_in_.data(), bytes, root));
  backend_.CopyFromHost(host_in_.data(), static_cast<float*>(data), floats);
  return absl::OkStatus();
}

}  // namespace tpserve
