// The Communicator between GPU ranks (DESIGN.md §6): NCCL, with the unique id passed through the
// rendezvous KvStore (rank 0 publishes it, the others read it), so no shared filesystem or extra
// service is needed.
//
// Never hangs: the communicator is created non-blocking (ncclCommInitRankConfig, blocking = 0)
// and every wait — init, each collective's enqueueing, WaitPending (the model calls it once a
// step) — is polled against a deadline. A peer that dies or stalls makes the wait return
// DEADLINE_EXCEEDED (or the NCCL error) after ncclCommAbort; the communicator is then broken and
// every later call fails at once, and the coordinator rebuilds the group (DESIGN.md §7).
//
// Buffers are device pointers of the device this rank owns; collectives are enqueued on the
// given stream (the backend's), so they are ordered after the compute that produced their input
// and before the compute that reads their result, and return once enqueued: the host does not
// wait for each one (two a layer would hold it in lockstep with the GPU). WaitPending waits for
// all of them within op_timeout; Barrier waits by definition.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/parallel/communicator.h"
#include "worker/parallel/kv_store.h"

typedef struct CUstream_st* cudaStream_t;

namespace tpserve {

struct NcclOptions {
  int rank = 0;
  int world_size = 1;
  int device = 0;                                    // CUDA ordinal this rank uses
  std::string store_prefix;                          // keys: <prefix>nccl_unique_id
  absl::Duration init_timeout = absl::Seconds(120);  // rendezvous + ncclCommInitRankConfig
  absl::Duration op_timeout = absl::Seconds(60);     // each wait for collectives
};

class NcclCommunicator final : public Communicator {
 public:
  // FAILED_PRECONDITION without a usable GPU/driver; DEADLINE_EXCEEDED when the id or the
  // peers do not turn up within init_timeout. `store` is used only during Create; `stream` must
  // outlive the communicator.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(KvStore& store,
                                                                  const NcclOptions& options,
                                                                  cudaStream_t stream);
  ~NcclCommunicator() override;

  int rank() const override { return options_.rank; }
  int world_size() const override { return options_.world_size; }

  absl::Status AllReduceSum(float* data, size_t count) override;
  // NCCL has no gather-v: grouped point-to-point sends to root, which receives into its slices.
  absl::Status GatherV(const float* in, std::span<const size_t> counts, float* out,
                       int root) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  absl::Status Barrier() override;
  absl::Status WaitPending() override;
  // Collectives are captured into recorded steps' graphs (NCCL supports stream capture).
  bool records_in_graphs() const override { return true; }

  bool broken() const { return !broken_status_.ok(); }

 private:
  struct Impl;
  NcclCommunicator(const NcclOptions& options, std::unique_ptr<Impl> impl);
  // Completes the enqueueing of `what` (a non-blocking communicator may still be enqueueing) and
  // marks the stream as having collectives pending; aborts the communicator on error.
  absl::Status Finish(const std::string& what, int enqueue_result);
  absl::Status Fail(absl::Status st);

  NcclOptions options_;
  std::unique_ptr<Impl> impl_;
  absl::Status broken_status_;
  std::string pending_;  // the last collective not yet waited for ("" when none)
};

}  // namespace tpserve
