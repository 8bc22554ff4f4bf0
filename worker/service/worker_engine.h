// One worker rank's engine behind the gRPC service, in plain structs (no proto, no gRPC): loads
// the model slice of a group generation (communicator, weights, KV pool, ModelRunner), executes
// step plans (rank 0 samples, with penalties / bias / log-probs), and keeps the state that
// Health reports (DESIGN.md §2, §7).
//
// Threads: Load, Execute and Release are called from one thread (the service's executor);
// Snapshot, MarkDraining and ranks' identity may be read from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/model/model_loader.h"
#include "worker/parallel/kv_store.h"
#include "worker/parallel/shard_plan.h"
#include "worker/runtime/model_runner.h"
#include "worker/service/device.h"
#include "worker/service/load_progress.h"
#include "worker/service/logits_processing.h"
#include "worker/service/timed_communicator.h"

namespace tpserve {

enum class WorkerState { kIdle, kLoading, kReady, kDraining, kBroken };
const char* WorkerStateName(WorkerState s);

struct WorkerOptions {
  int rank = 0;
  // What this rank computes on (device.h); null: the CPU with `threads` threads (0: all
  // hardware threads).
  std::shared_ptr<WorkerDevice> device;
  int threads = 0;
  // Where this rank's Gloo pairs listen (an address peers can reach) or a network interface
  // (takes precedence).
  std::string data_host = "127.0.0.1";
  std::string data_interface;
  // Budget when LoadModel sends 0 (0 here too: half of the host's available memory divided by
  // the group size).
  int64_t memory_budget_bytes = 0;
  // Makes the rendezvous store of a Gloo group (the coordinator's, through rendezvous_client).
  std::function<std::unique_ptr<KvStore>()> make_store;
  // Called after every state change with the state then current (from the thread that changed
  // it; calls are serialised, and the last one carries the latest state). grpc.health.v1 hangs
  // off this.
  std::function<void(WorkerState)> on_state;
  // Shard-loading progress (LoadProgress: every ~10 % or 1 s, and once at the end).
  LoadProgress::Report on_load_progress;
  // Rank 0 copies the logits to the host and samples there even where the device can sample
  // (a way round a suspected device-sampling problem; tests compare the two).
  bool host_sampling = false;
};

// LoadModelRequest, without the proto types.
struct LoadSpec {
  std::string model_path;
  std::string dtype;  // "", "f32" (the CPU computes in fp32)
  RankShard shard;
  int64_t generation = 0;
  enum class CommKind { kLocal, kGloo, kNccl } comm_kind = CommKind::kLocal;
  std::string store_prefix;
  absl::Duration comm_timeout = absl::Seconds(30);
  int64_t kv_block_size = 16;
  int64_t memory_budget_bytes = 0;
  int64_t max_batch_sequences = 0;
  int64_t max_batch_tokens = 0;
  int64_t max_context_length = 0;
};

struct LoadReport {
  int64_t kv_blocks = 0;
  int64_t weight_bytes = 0;
  double load_time_ms = 0.0;
  std::string architecture;
  int64_t num_layers = 0;
};

// What rank 0 needs per sequence beyond the runtime's StepSequence.
struct SequenceSampling {
  uint64_t sequence_id = 0;
  LogitsAdjustments adjustments;
  bool logprobs = false;
  int top_logprobs = 0;
};

// StepPlan, without the proto types. step.sequences[i] and sampling[i] describe sequence i.
struct PlanStep {
  uint64_t step_id = 0;
  int64_t generation = 0;
  Step step;
  std::vector<SequenceSampling> sampling;
};

struct SampledOut {
  uint64_t sequence_id = 0;
  int32_t token_id = 0;
  bool has_logprobs = false;
  TokenLogprobs logprobs;
};

struct StepTimingUs {
  int64_t total_us = 0;
  int64_t collective_us = 0;
  int64_t compute_us = 0;
  int64_t sampling_us = 0;
};

struct StepOutcome {
  uint64_t step_id = 0;
  int64_t generation = 0;
  int rank = 0;
  std::vector<SampledOut> tokens;  // rank 0: one per sequence with sample = true, plan order
  StepTimingUs timing;
};

struct HealthSnapshot {
  WorkerState state = WorkerState::kIdle;
  int rank = 0;
  int64_t generation = 0;
  uint64_t steps = 0;
  std::string message;
};

class WorkerEngine {
 public:
  explicit WorkerEngine(WorkerOptions options);
  ~WorkerEngine();

  int rank() const { return options_.rank; }

  // Replaces any loaded model. Errors (the worker is then IDLE, nothing loaded):
  //   INVALID_ARGUMENT     the shard names another rank, bad sizes, generation <= 0
  //   FAILED_PRECONDITION  the shard is not MakeShardPlan's for this model and group size, or
  //                        the generation is the one already loaded
  //   NOT_FOUND / ...      the model path (from the loader)
  //   RESOURCE_EXHAUSTED   the budget does not fit the weights plus one KV block
  //   UNIMPLEMENTED        NCCL on this CPU worker
  //   DEADLINE_EXCEEDED / UNAVAILABLE  the rendezvous
  absl::StatusOr<LoadReport> Load(const LoadSpec& spec);

  // Runs one plan. A plan for another generation, or arriving while the worker is not READY, is
  // refused (FAILED_PRECONDITION / UNAVAILABLE) without changing the state. A malformed plan
  // (INVALID_ARGUMENT) or a failed step (a collective error, DEADLINE_EXCEEDED / UNAVAILABLE)
  // marks the worker BROKEN until the next Load.
  absl::StatusOr<StepOutcome> Execute(PlanStep plan, absl::Time received);

  // A READY worker becomes BROKEN with `why` (e.g. a plan the service could not convert); other
  // states are kept.
  void MarkBroken(const absl::Status& why);

  // Refuse new plans from now on (any thread).
  void MarkDraining();
  // The process is stopping (SIGTERM): like MarkDraining, reported as "shutting down".
  void MarkStopping();
  // Drops the model, KV cache and communicator (executor thread).
  void Release();

  HealthSnapshot Snapshot() const;
  const WorkerDevice& device() const { return *device_; }

 private:
  struct Loaded;  // model files, communicator, model, runner of one generation

  void SetState(WorkerState s, std::string message) ABSL_LOCKS_EXCLUDED(mu_);
  // Tells options_.on_state the current state (call after changing it, outside mu_).
  void Publish() ABSL_LOCKS_EXCLUDED(mu_, publish_mu_);
  absl::StatusOr<std::unique_ptr<Communicator>> Connect(const LoadSpec& spec);
  absl::StatusOr<LoadReport> LoadLocked(const LoadSpec& spec);
  absl::StatusOr<StepOutcome> Run(PlanStep plan, absl::Time received);

  const WorkerOptions options_;
  std::shared_ptr<WorkerDevice> device_;
  CountingBackend backend_;         // device_'s backend, counting the bytes a load reads
  std::unique_ptr<Loaded> loaded_;  // executor thread only

  mutable absl::Mutex mu_;
  WorkerState state_ ABSL_GUARDED_BY(mu_) = WorkerState::kIdle;
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
  std::string message_ ABSL_GUARDED_BY(mu_);
  absl::Mutex publish_mu_;
};

}  // namespace tpserve
