// A Communicator over another one (Gloo, in practice) for ranks whose activations live on a GPU:
// each collective copies the device buffer to host memory, runs the inner collective there and
// copies the result back. Host pointers (the model gathers logits into host memory) pass through.
// This is how one GPU runs TP > 1 (NCCL refuses two ranks on one GPU; DESIGN.md §6) and how GPU
// ranks fall back to TCP; it is not the fast path (that is NCCL).
#pragma once

#include <memory>
#include <vector>

#include "worker/backend/cuda/cuda_backend.h"
#include "worker/parallel/communicator.h"

namespace tpserve {

class HostStagedCommunicator final : public Communicator {
 public:
  // `inner` and `backend` must outlive this. Buffers passed in are device pointers of `backend`.
  HostStagedCommunicator(Communicator& inner, CudaBackend& backend)
      : inner_(inner), backend_(backend) {}

  int rank() const override { return inner_.rank(); }
  int world_size() const override { return inner_.world_size(); }
  absl::Status AllReduceSum(float* data, size_t count) override;
  absl::Status GatherV(const float* in, std::span<const size_t> counts, float* out,
                       int root) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  absl::Status Barrier() override { return inner_.Barrier(); }
  absl::Status WaitPending() override { return inner_.WaitPending(); }

 private:
  Communicator& inner_;
  CudaBackend& backend_;
  std::vector<float> host_in_, host_out_;  // reused across calls
};

// The other way round: a Communicator over one that moves device memory only (NCCL), for callers
// that also pass host buffers. Host data goes through device buffers of the backend's pool, and a
// host result waits for the inner communicator (WaitPending, within its op timeout) before it is
// copied back; device buffers go straight to the inner communicator, asynchronously.
class HostAwareCommunicator final : public Communicator {
 public:
  // `backend` must outlive this.
  HostAwareCommunicator(std::unique_ptr<Communicator> device_only, CudaBackend& backend)
      : inner_(std::move(device_only)), backend_(backend) {}

  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  absl::Status AllReduceSum(float* data, size_t count) override;
  absl::Status GatherV(const float* in, std::span<const size_t> counts, float* out,
                       int root) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  absl::Status Barrier() override { return inner_->Barrier(); }
  absl::Status WaitPending() override { return inner_->WaitPending(); }
  // Device buffers (a recorded step's) go straight to the inner communicator.
  bool records_in_graphs() const override { return inner_->records_in_graphs(); }

 private:
  std::unique_ptr<Communicator> inner_;
  CudaBackend& backend_;
};

}  // namespace tpserve
