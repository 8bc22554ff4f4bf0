// The data plane between the ranks of one tensor-parallel group (DESIGN.md §1, §6).
//
// Every rank calls the same collectives in the same order (the step plan makes sure of that). A
// failed collective (or WaitPending, for a device-asynchronous one) returns an error on every
// rank that notices it; the communicator is then
// unusable and the group is rebuilt by the coordinator (DESIGN.md §7). Implementations: Local (one
// rank, no copies), Gloo (CPU ranks over TCP), Shm (CPU ranks on one host, over a shared segment,
// Gloo for large payloads; workers use it whenever the negotiation finds one host), NCCL (GPU
// ranks).
#pragma once

#include <cstddef>
#include <cstring>
#include <span>

#include "absl/status/status.h"

namespace tpserve {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // In place: data[i] = sum over ranks of data[i]. `count` floats, the same on every rank.
  virtual absl::Status AllReduceSum(float* data, size_t count) = 0;

  // Concatenates each rank's `in` (counts[r] floats from rank r; counts is the same list on every
  // rank) into `out` on `root` only, in rank order. `out` holds sum(counts) floats on root and is
  // ignored elsewhere. Used for the vocab-parallel LM head, whose slices may be uneven.
  virtual absl::Status GatherV(const float* in, std::span<const size_t> counts, float* out,
                               int root) = 0;

  // Copies `bytes` bytes at `data` from `root` to every rank.
  virtual absl::Status Broadcast(void* data, size_t bytes, int root) = 0;

  virtual absl::Status Barrier() = 0;

  // A collective on device buffers may return once it is enqueued on the device's stream (NCCL):
  // work later on that stream sees its result, the host does not until it waits. Returns once
  // every collective this communicator has started is complete, or the error (the communicator
  // then stays broken) when a peer fails or does not take part within the op timeout. The
  // host-synchronous implementations (Local, Gloo, Shm) are always complete.
  virtual absl::Status WaitPending() { return absl::OkStatus(); }

  // Whether a forward pass using this communicator may be recorded as a CUDA graph and replayed
  // (Backend::RunRecorded): its collectives are device work on the backend's stream that shows
  // itself to the recording (worker/backend/cuda/cuda_launch.h), WaitPending waits for nothing
  // inside a recorded step, and the caller waits after it. One rank (nothing to do) and NCCL;
  // not the host-side ones (Gloo, Shm, staged through host memory).
  virtual bool records_in_graphs() const { return false; }
};

// One rank: every collective is the identity.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  absl::Status AllReduceSum(float*, size_t) override { return absl::OkStatus(); }
  absl::Status GatherV(const float* in, std::span<const size_t> counts, float* out, int) override {
    if (counts.size() != 1) return absl::InvalidArgumentError("GatherV: one rank, one count");
    if (out != in) std::memcpy(out, in, counts[0] * sizeof(float));
    return absl::OkStatus();
  }
  absl::Status Broadcast(void*, size_t, int) override { return absl::OkStatus(); }
  bool records_in_graphs() const override { return true; }
  absl::Status Barrier() override { return absl::OkStatus(); }
};

}  // namespace tpserve
