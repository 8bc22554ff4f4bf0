#include "worker/service/worker_service.h"

#include <algorithm>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"
#include "worker/service/proto_convert.h"

namespace tpserve {
namespace {

// absl and gRPC share the canonical status code numbering.
grpc::Status ToGrpc(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

}  // namespace

// One Execute stream. Reads plans continuously and hands each to the executor; results are
// written in plan order, one write in flight at a time. The first failed plan ends the stream
// with its status once the results before it are written; a cancelled call ends at once.
//
// Lifetime: gRPC calls OnDone once the stream is over, but executor tasks may still hold the
// reactor; whichever of OnDone and the last task comes second deletes it.
class WorkerService::ExecuteReactor final
    : public grpc::ServerBidiReactor<v1::StepPlan, v1::StepResult> {
 public:
  explicit ExecuteReactor(WorkerService* service) : service_(service) { StartRead(&incoming_); }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the coordinator closed its side (or the call is over)
      Act([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { reads_done_ = true; });
      return;
    }
    const absl::Time received = absl::Now();
    {
      absl::MutexLock lock(&mu_);
      if (!error_.ok()) return;  // finishing: read no further
      ++in_executor_;
    }
    auto plan = std::make_shared<v1::StepPlan>(std::move(incoming_));
    incoming_.Clear();
    service_->Post([this, plan, received]() { Complete(service_->RunPlan(*plan, received)); });
    StartRead(&incoming_);
  }

  void OnWriteDone(bool ok) override {
    Act([this, ok]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      write_in_flight_ = false;
      if (!ok) Fail(absl::CancelledError("Execute stream: the coordinator went away"));
    });
  }

  void OnCancel() override {
    Act([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      Fail(absl::CancelledError("Execute stream cancelled"));
    });
  }

  void OnDone() override {
    bool last;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      last = in_executor_ == 0;
    }
    if (last) delete this;
  }

 private:
  // Executor thread: the outcome of one plan.
  void Complete(absl::StatusOr<v1::StepResult> result) {
    bool last_reference = false;
    Act([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      --in_executor_;
      if (done_) {  // the stream is over (finished before): only the reference is left to drop
        last_reference = in_executor_ == 0;
      } else if (!result.ok()) {
        Fail(result.status());
      } else if (error_.ok()) {
        const v1::StepTiming& t = result->timing();
        ++totals_.steps;
        totals_.total_us += t.total_us();
        totals_.compute_us += t.compute_us();
        totals_.collective_us += t.collective_us();
        totals_.sampling_us += t.sampling_us();
        pending_.push_back(std::move(*result));
      }
    });
    if (last_reference) delete this;
  }

  // First error wins; queued results are still written before the stream ends with it, unless
  // the call is gone (then nothing more can be written).
  void Fail(const absl::Status& st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!error_.ok()) return;
    error_ = st;
    if (absl::IsCancelled(st)) pending_.clear();
  }

  // Applies `update` under the lock, then starts the next gRPC operation it allows (outside the
  // lock: gRPC may run reactions inline).
  template <typename Update>
  void Act(Update&& update) {
    enum { kNone, kWrite, kFinish } op = kNone;
    grpc::Status finish;
    {
      absl::MutexLock lock(&mu_);
      update();
      if (finish_called_ || write_in_flight_) return;
      if (!pending_.empty()) {
        writing_ = std::move(pending_.front());
        pending_.pop_front();
        write_in_flight_ = true;
        op = kWrite;
      } else if (!error_.ok() || (reads_done_ && in_executor_ == 0)) {
        finish_called_ = true;
        finish = ToGrpc(error_);
        op = kFinish;
      }
    }
    if (op == kWrite) StartWrite(&writing_);
    if (op == kFinish) {
      LogTotals(finish);
      Finish(finish);
    }
  }

  // Where this stream's steps spent their time (the figures a user tuning TP wants).
  void LogTotals(const grpc::Status& status) {
    Totals t;
    {
      absl::MutexLock lock(&mu_);
      t = totals_;
    }
    const double n = std::max<int64_t>(t.steps, 1);
    spdlog::info(
        "Execute stream ended ({}): {} steps; mean per step {:.0f} us = compute {:.0f} + "
        "collectives {:.0f} + sampling {:.0f}",
        status.ok() ? "OK" : status.error_message(), t.steps, t.total_us / n, t.compute_us / n,
        t.collective_us / n, t.sampling_us / n);
  }

  WorkerService* const service_;
  v1::StepPlan incoming_;  // the read in flight (gRPC thread only)
  absl::Mutex mu_;
  std::deque<v1::StepResult> pending_ ABSL_GUARDED_BY(mu_);
  v1::StepResult writing_;  // the write in flight
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  int in_executor_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  struct Totals {
    int64_t steps = 0, total_us = 0, compute_us = 0, collective_us = 0, sampling_us = 0;
  } totals_ ABSL_GUARDED_BY(mu_);
};

namespace {

// Loading progress in the worker's log (tpserve up draws its progress bars from these lines).
WorkerOptions WithProgressLog(WorkerOptions options) {
  if (!options.on_load_progress) {
    options.on_load_progress = [](int64_t done, int64_t total) {
      spdlog::info("{}", FormatLoadProgress(done, total));
    };
  }
  return options;
}

}  // namespace

WorkerService::WorkerService(WorkerOptions options)
    : engine_(WithProgressLog(std::move(options))), executor_([this]() { ExecutorLoop(); }) {}

WorkerService::~WorkerService() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  executor_.join();
}

void WorkerService::Post(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(task));
}

void WorkerService::ExecutorLoop() {
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](WorkerService* s)
               ABSL_NO_THREAD_SAFETY_ANALYSIS { return s->stopping_ || !s->queue_.empty(); },
          this));
      if (queue_.empty()) return;  // stopping, nothing left
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

absl::StatusOr<v1::StepResult> WorkerService::RunPlan(const v1::StepPlan& plan,
                                                      absl::Time received) {
  absl::StatusOr<PlanStep> step = PlanStepFromProto(plan);
  absl::StatusOr<StepOutcome> out =
      step.ok() ? engine_.Execute(std::move(*step), received) : step.status();
  if (!step.ok()) engine_.MarkBroken(step.status());
  if (!out.ok()) {
    const absl::Status st(out.status().code(),
                          absl::StrCat("rank ", engine_.rank(), " step ", plan.step_id(), ": ",
                                       out.status().message()));
    spdlog::error("{}", st.ToString());
    return st;
  }
  v1::StepResult result;
  StepOutcomeToProto(*out, &result);
  return result;
}

grpc::ServerUnaryReactor* WorkerService::LoadModel(grpc::CallbackServerContext* ctx,
                                                   const v1::LoadModelRequest* req,
                                                   v1::LoadModelResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<LoadSpec> spec = LoadSpecFromProto(*req);
  if (!spec.ok()) {
    reactor->Finish(ToGrpc(spec.status()));
    return reactor;
  }
  Post([this, reactor, resp, spec = std::move(*spec)]() {
    spdlog::info("LoadModel {} generation {} ({}/{} ranks)", spec.model_path, spec.generation,
                 spec.shard.rank, spec.shard.world_size);
    absl::StatusOr<LoadReport> report = engine_.Load(spec);
    if (!report.ok()) {
      spdlog::error("LoadModel failed: {}", report.status().ToString());
      reactor->Finish(ToGrpc(report.status()));
      return;
    }
    spdlog::info("loaded {} ({} layers): {} weight bytes, {} KV blocks, {:.0f} ms",
                 report->architecture, report->num_layers, report->weight_bytes, report->kv_blocks,
                 report->load_time_ms);
    LoadReportToProto(*report, resp);
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerBidiReactor<v1::StepPlan, v1::StepResult>* WorkerService::Execute(
    grpc::CallbackServerContext*) {
  return new ExecuteReactor(this);
}

grpc::ServerUnaryReactor* WorkerService::Health(grpc::CallbackServerContext* ctx,
                                                const v1::WorkerHealthRequest*,
                                                v1::WorkerHealthResponse* resp) {
  HealthToProto(engine_.Snapshot(), resp);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

// Plans queued behind the current step are refused (the worker is DRAINING when they run); the
// release runs after them. The current step is bounded by the communicator's timeout, so
// `timeout_ms` needs no timer of its own here.
grpc::ServerUnaryReactor* WorkerService::Drain(grpc::CallbackServerContext* ctx,
                                               const v1::DrainRequest*, v1::DrainResponse*) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  engine_.MarkDraining();
  spdlog::info("Drain: releasing the model after the current step");
  Post([this, reactor]() {
    engine_.Release();
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

}  // namespace tpserve
