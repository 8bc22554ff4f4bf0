// Which worker holds which rank (DESIGN.md §1, §7). Plain data, no gRPC: the Cluster service
// turns RegisterRequests into WorkerInfo and this class decides. The group is complete when all
// `world_size` ranks are present; a rank whose worker died is marked lost, which frees it for the
// restarted worker and starts a new group generation when the group is complete again.
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace tpserve {

// What a worker announces about itself (proto RegisterRequest, without the gRPC types).
struct WorkerInfo {
  int rank = -1;
  int world_size = 0;       // the group size the worker was started for
  std::string incarnation;  // unique per process start
  std::string device_kind;  // "cpu" or "cuda"
  int device_index = 0;
  std::string device_name;
  std::string compute_dtype;   // "int8x2", "int8", "f32", "bf16"; empty from older workers
  std::string kv_cache_dtype;  // "fp16", "fp32", "int8"; empty from older workers
  int64_t memory_total_bytes = 0;
  int64_t memory_free_bytes = 0;
  int64_t memory_budget_bytes = 0;  // 0: the worker decides from free memory
  std::string control_address;      // host:port of its Worker service
  std::string data_host;
  std::string data_interface;
  std::string model;    // model the worker was started for; empty: any
  std::string version;  // tpserve version of the worker; empty: not checked
};

// The answer to a registration.
struct RegisterOutcome {
  int registered = 0;  // ranks present, this one included
  bool complete = false;
  bool replaced_lost = false;  // took over a rank marked lost
};

class WorkerRegistry {
 public:
  // `model` and `version` are what the coordinator serves; a worker announcing another (non-empty)
  // one is refused.
  WorkerRegistry(int world_size, std::string model, std::string version);

  // Records a worker. Errors name the rank and what to fix:
  //   INVALID_ARGUMENT     rank outside [0, world_size), empty incarnation, unknown device kind
  //   FAILED_PRECONDITION  the worker expects another group size, model or version
  //   ALREADY_EXISTS       a live worker (another incarnation) holds the rank
  // Registering the same incarnation again is idempotent (a retried RPC).
  absl::StatusOr<RegisterOutcome> Register(const WorkerInfo& info);

  // The coordinator saw the rank's worker fail (stream broken, step deadline): the rank is free
  // for a new incarnation and the group is incomplete until it comes back. NOT_FOUND when the rank
  // holds no worker.
  absl::Status MarkLost(int rank);

  int world_size() const { return world_size_; }
  int registered() const;
  bool complete() const;
  // Times the group became complete: 1 after the first full registration, +1 after each
  // recovery. Each generation gets a fresh communicator (its own store prefix).
  int64_t generation() const;
  // Ranks with no live worker, ascending.
  std::vector<int> missing_ranks() const;
  // The worker holding `rank`, if any.
  std::optional<WorkerInfo> worker(int rank) const;
  // Live workers in rank order (all of them when complete).
  std::vector<WorkerInfo> workers() const;

 private:
  struct Slot {
    std::optional<WorkerInfo> info;
    bool lost = false;  // info is the dead predecessor, kept for messages
  };

  int RegisteredLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const int world_size_;
  const std::string model_;
  const std::string version_;
  mutable absl::Mutex mu_;
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tpserve
