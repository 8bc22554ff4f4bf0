// The StepExecutor over real workers (DESIGN.md §1, §2, §7). A supervisor thread waits until all
// N ranks registered (WorkerRegistry), calls LoadModel on every rank in parallel with its RankShard
// and a fresh group generation (communicator KIND_LOCAL for one rank, KIND_GLOO otherwise, the
// rendezvous under "g<generation>/" in the coordinator's store), takes the minimum KV capacity and
// opens one Execute stream per rank. Execute sends the same plan to every rank and returns rank 0's
// tokens. A rank's error, a broken stream or a missed step deadline fails the step: the group is
// degraded (not ready), ranks that no longer answer Health are marked lost in the registry so their
// restarted workers can register again, and the supervisor re-forms the group with a new
// generation once every rank is present. Nothing waits without a deadline.
//
// No gRPC types in this header.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/cluster/worker_registry.h"
#include "coordinator/engine/step_executor.h"
#include "worker/parallel/in_memory_kv_store.h"
#include "worker/parallel/shard_plan.h"

namespace tpserve {

struct WorkerGroupOptions {
  std::string model_path;  // as the workers see it
  ShardPlan plan;          // one RankShard per rank (MakeShardPlan)
  std::string dtype;       // empty: the device's default
  int kv_block_size = 16;
  int64_t memory_budget_bytes = 0;  // per rank; 0: what each worker registered with
  int max_batch_sequences = 64;
  // Most tokens in one step; 0: DefaultMaxBatchTokens of the registered ranks' devices, decided
  // at the first load and kept (the scheduler's budget must not change under it).
  int max_batch_tokens = 0;
  int max_context_length = 2048;
  // The model as the coordinator read it; every rank must report the same.
  std::string architecture;
  int num_layers = 0;
  absl::Duration load_timeout = absl::Minutes(10);  // LoadModel, rendezvous included
  absl::Duration collective_timeout = absl::Seconds(30);
  absl::Duration step_timeout = absl::Seconds(60);  // one step, all ranks
  absl::Duration health_interval = absl::Seconds(1);
  // A rank that answers no health probe within health_timeout, health_misses probes in a row,
  // is lost even though its connection stays open (a frozen process, a cut link that sends no
  // reset): health says NOT_SERVING and a step waiting on it is cancelled, ~health_misses x
  // (health_timeout + health_interval) after it stopped, not after the collective or step timeout.
  absl::Duration health_timeout = absl::Seconds(2);
  int health_misses = 3;
};

// The step token budget that suits the ranks' devices ("cpu", "cuda", as they register): 512
// when any rank is a CPU (a step with a 512-token prefill chunk takes ~0.3 s on a 2-core worker,
// so running streams never stall long behind a long prompt; the slowest rank sets the pace),
// 8192 when all are GPUs (a step of thousands of tokens takes milliseconds there, and smaller
// chunks leave the GPU idle). 512 for an empty list.
int DefaultMaxBatchTokens(std::span<const std::string> device_kinds);

class WorkerGroup final : public engine::StepExecutor {
 public:
  // `registry` and `store` (the Cluster service's) must outlive the group.
  WorkerGroup(WorkerGroupOptions options, WorkerRegistry& registry, InMemoryKvStore& store);
  ~WorkerGroup() override;  // stops the supervisor and closes the streams

  // Starts the supervisor thread.
  void Start();
  // Wakes the supervisor after a registration (ClusterService::set_on_register).
  void OnRegistered();
  // Waits until the group is ready; returns the KV blocks per rank (the minimum over ranks).
  // DEADLINE_EXCEEDED with the reason it is not ready.
  absl::StatusOr<int64_t> WaitReady(absl::Duration timeout);

  absl::StatusOr<engine::StepOutput> Execute(const engine::StepPlan& plan) override;
  bool ready() const override;
  std::string not_ready_reason() const override;

  int64_t kv_blocks() const;  // of the latest load (0 before)
  // The step token budget the ranks were loaded with: options.max_batch_tokens, or the
  // device default chosen at the first load (0 before it).
  int max_batch_tokens() const;
  int64_t generation() const;  // of the latest load attempt (0 before)
  int world_size() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tpserve
