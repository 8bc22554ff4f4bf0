// Collectives through shared memory for ranks on one host (DESIGN.md §6): a TP group on one
// machine spent most of a decode step in Gloo's TCP round trips over loopback (~0.5-1.7 ms per
// small all-reduce, 60 per step for SmolLM2); through a shared segment an all-reduce is two
// memcpy-sized copies and two flag waits.
//
// Wrap() negotiates through the rendezvous store: every rank publishes its host identity (boot
// id, pid and mount namespaces); only when all agree does rank 0 create a segment (POSIX shm),
// the others map it, and every rank confirms. Any mismatch or failure on any rank makes every
// rank keep the fallback (Gloo) alone, so the choice is the same on all ranks.
//
// Each rank owns one slot of `slot_bytes`; a collective writes its input to its own slot,
// publishes a sequence number, waits for the others' (spin, then yield), and reads theirs.
// AllReduceSum adds the slots in rank order, so every rank gets bitwise the same sums. Payloads
// larger than a slot go to the fallback (the same decision on every rank: sizes are the same).
//
// Failures: a wait gives up when a peer process is gone (checked through /proc while waiting,
// zombies included: same pid namespace is part of the negotiation) or after `timeout`; the
// error names the op and the rank, and the communicator stays broken, like GlooCommunicator.
// Not thread-safe: one collective at a time, called in the same order on every rank.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/parallel/communicator.h"
#include "worker/parallel/kv_store.h"

namespace tpserve {

struct ShmOptions {
  int rank = 0;
  int world_size = 1;
  // Namespace of this group's keys in the store (the Gloo prefix of the same generation).
  std::string store_prefix = "shm/";
  // Deadline of the negotiation and of every collective.
  absl::Duration timeout = absl::Seconds(30);
  // Bytes of each rank's slot: collectives moving more per rank go to the fallback.
  size_t slot_bytes = size_t{16} << 20;
  // For tests: pretend this rank runs elsewhere (its identity differs from the others').
  std::string identity_override;
};

class ShmCommunicator final : public Communicator {
 public:
  // A ShmCommunicator over `fallback` when every rank of the group shares this host, else
  // `fallback` itself. Errors only for a broken rendezvous (the store), never for "not on one
  // host". `store` is only used during the call.
  static absl::StatusOr<std::unique_ptr<Communicator>> Wrap(KvStore& store,
                                                            const ShmOptions& options,
                                                            std::unique_ptr<Communicator> fallback);
  ~ShmCommunicator() override;

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  absl::Status AllReduceSum(float* data, size_t count) override;
  absl::Status GatherV(const float* in, std::span<const size_t> counts, float* out,
                       int root) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  absl::Status Barrier() override;

  struct Segment;

 private:
  ShmCommunicator(int rank, int world, absl::Duration timeout, size_t slot_bytes,
                  std::unique_ptr<Segment> segment, std::unique_ptr<Communicator> fallback);
  uint8_t* slot(int r) const;
  // Waits until flag[p] >= target for every p in [first, last] (all ranks when first = 0 and
  // last = world - 1); marks the communicator broken on failure.
  absl::Status Wait(const char* op, bool arrived_flags, uint64_t target, int first, int last);
  void Publish(bool arrived_flags, uint64_t value);

  int rank_;
  int world_;
  absl::Duration timeout_;
  size_t slot_bytes_;
  std::unique_ptr<Segment> segment_;
  std::unique_ptr<Communicator> fallback_;
  uint64_t seq_ = 0;
  absl::Status broken_;
};

}  // namespace tpserve
