#include "worker/backend/cuda/host_staged_communicator.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <numeric>
#include <vector>

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

absl::Status HostAwareCommunicator::AllReduceSum(float* data, size_t count) {
  if (count == 0 || OnDevice(data)) return inner_->AllReduceSum(data, count);
  ASSIGN_OR_RETURN(std::shared_ptr<void> buf, backend_.DeviceBytes(count * sizeof(float)));
  float* d = static_cast<float*>(buf.get());
  backend_.CopyFromHost(data, d, count);
  RETURN_IF_ERROR(inner_->AllReduceSum(d, count));
  RETURN_IF_ERROR(inner_->WaitPending());
  backend_.CopyToHost(d, data, count);
  return absl::OkStatus();
}

absl::Status HostAwareCommunicator::GatherV(const float* in, std::span<const size_t> counts,
                                            float* out, int root) {
  if (counts.size() != static_cast<size_t>(world_size())) {
    return absl::InvalidArgumentError("GatherV: one count per rank");
  }
  const size_t mine = counts[rank()];
  const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
  std::shared_ptr<void> in_buf, out_buf;
  const float* d_in = in;
  if (mine > 0 && !OnDevice(in)) {
    ASSIGN_OR_RETURN(in_buf, backend_.DeviceBytes(mine * sizeof(float)));
    backend_.CopyFromHost(in, static_cast<float*>(in_buf.get()), mine);
    d_in = static_cast<const float*>(in_buf.get());
  }
  const bool stage_out = rank() == root && total > 0 && !OnDevice(out);
  float* d_out = out;
  if (stage_out) {
    ASSIGN_OR_RETURN(out_buf, backend_.DeviceBytes(total * sizeof(float)));
    d_out = static_cast<float*>(out_buf.get());
  }
  RETURN_IF_ERROR(inner_->GatherV(d_in, counts, d_out, root));
  if (stage_out) {
    RETURN_IF_ERROR(inner_->WaitPending());
    backend_.CopyToHost(d_out, out, total);
  }
  return absl::OkStatus();
}

absl::Status HostAwareCommunicator::Broadcast(void* data, size_t bytes, int root) {
  if (bytes == 0 || OnDevice(data)) return inner_->Broadcast(data, bytes, root);
  const size_t floats = (bytes + sizeof(float) - 1) / sizeof(float);
  ASSIGN_OR_RETURN(std::shared_ptr<void> buf, backend_.DeviceBytes(floats * sizeof(float)));
  std::vector<float> host(floats);
  std::memcpy(host.data(), data, bytes);
  backend_.CopyFromHost(host.data(), static_cast<float*>(buf.get()), floats);
  RETURN_IF_ERROR(inner_->Broadcast(buf.get(), bytes, root));
  RETURN_IF_ERROR(inner_->WaitPending());
  backend_.CopyToHost(static_cast<float*>(buf.get()), host.data(), floats);
  std::memcpy(data, host.data(), bytes);
  return absl::OkStatus();
}

}  // namespace tpserve
