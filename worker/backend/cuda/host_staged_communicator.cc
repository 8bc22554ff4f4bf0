#include "worker/backend/cuda/host_staged_communicator.h"

#include <numeric>

#include "common/base/status_macros.h"

namespace tpserve {

absl::Status HostStagedCommunicator::AllReduceSum(float* data, size_t count) {
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
  host_in_.resize(mine);
  backend_.CopyToHost(in, host_in_.data(), mine);
  const bool is_root = rank() == root;
  host_out_.resize(is_root ? total : 0);
  RETURN_IF_ERROR(inner_.GatherV(host_in_.data(), counts, host_out_.data(), root));
  if (is_root) backend_.CopyFromHost(host_out_.data(), out, total);
  return absl::OkStatus();
}

absl::Status HostStagedCommunicator::Broadcast(void* data, size_t bytes, int root) {
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
