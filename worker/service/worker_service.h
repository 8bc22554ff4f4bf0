// The Worker gRPC service (proto/tpserve/v1/worker.proto) over a WorkerEngine: the only worker
// code that sees generated gRPC types (DESIGN.md §8).
//
// Callback API throughout, and no handler blocks a gRPC thread: LoadModel, every StepPlan of an
// Execute stream and Drain's release become tasks of one executor thread, which runs them in
// arrival order (a load never overlaps a step) and completes the RPC or writes the StepResult
// when done. Health answers inline from the engine's snapshot.
#pragma once

#include <deque>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "tpserve/v1/worker.grpc.pb.h"
#include "worker/service/worker_engine.h"

namespace tpserve {

class WorkerService final : public v1::Worker::CallbackService {
 public:
  explicit WorkerService(WorkerOptions options);
  // Call after the server hosting it has shut down: runs the tasks still queued (their RPCs are
  // finished or cancelled by then), then stops the executor.
  ~WorkerService() override;

  grpc::ServerUnaryReactor* LoadModel(grpc::CallbackServerContext* ctx,
                                      const v1::LoadModelRequest* req,
                                      v1::LoadModelResponse* resp) override;
  grpc::ServerBidiReactor<v1::StepPlan, v1::StepResult>* Execute(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* Health(grpc::CallbackServerContext* ctx,
                                   const v1::WorkerHealthRequest* req,
                                   v1::WorkerHealthResponse* resp) override;
  grpc::ServerUnaryReactor* Drain(grpc::CallbackServerContext* ctx, const v1::DrainRequest* req,
                                  v1::DrainResponse* resp) override;

  const WorkerEngine& engine() const { return engine_; }
  // The process is stopping: refuse new plans, report NOT_SERVING.
  void MarkStopping() { engine_.MarkStopping(); }

 private:
  class ExecuteReactor;

  // Queues `task` for the executor thread.
  void Post(std::function<void()> task) ABSL_LOCKS_EXCLUDED(mu_);
  void ExecutorLoop();
  // Executor thread: one plan, proto in and out.
  absl::StatusOr<v1::StepResult> RunPlan(const v1::StepPlan& plan, absl::Time received);

  WorkerEngine engine_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread executor_;
};

}  // namespace tpserve
