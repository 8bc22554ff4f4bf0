#include "worker/service/worker_server.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "worker/service/worker_service.h"

namespace tpserve {
namespace {

// The service names grpc.health.v1 answers for. "" and the Worker service: SERVING only while a
// model is loaded and served (READY); NOT_SERVING while idle, loading, draining or broken (the
// readiness of a worker pod). "liveness": SERVING while the process runs and its server answers
// (the liveness of a pod: a rank waiting for its group is alive, not ready).
constexpr const char* kWorkerService = "tpserve.v1.Worker";
constexpr const char* kLivenessService = "liveness";

}  // namespace

// Carries the engine's state changes to the server's health service, which exists only once the
// server is built (after the engine); the latest state is applied when it attaches.
class WorkerServer::HealthPublisher {
 public:
  void Set(WorkerState state) {
    absl::MutexLock lock(&mu_);
    serving_ = state == WorkerState::kReady;
    Apply();
  }
  void Attach(grpc::HealthCheckServiceInterface* service) {
    absl::MutexLock lock(&mu_);
    service_ = service;
    if (service_ != nullptr) service_->SetServingStatus(kLivenessService, true);
    Apply();
  }

 private:
  void Apply() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (service_ == nullptr) return;
    service_->SetServingStatus("", serving_);
    service_->SetServingStatus(kWorkerService, serving_);
  }

  absl::Mutex mu_;
  grpc::HealthCheckServiceInterface* service_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool serving_ ABSL_GUARDED_BY(mu_) = false;
};

struct WorkerServer::Impl {
  explicit Impl(WorkerOptions options)
      : service(std::make_unique<WorkerService>(std::move(options))) {}
  // Destroyed after the server: the service's destructor runs its queued tasks and joins them.
  std::unique_ptr<WorkerService> service;
  std::unique_ptr<grpc::Server> server;
  bool shut_down = false;
};

absl::StatusOr<std::unique_ptr<WorkerServer>> WorkerServer::Start(const std::string& address,
                                                                  WorkerOptions options) {
  auto health = std::make_shared<HealthPublisher>();
  options.on_state = [health, user = std::move(options.on_state)](WorkerState s) {
    health->Set(s);
    if (user) user(s);
  };
  auto impl = std::make_unique<Impl>(std::move(options));
  int port = 0;
  // Process-wide switch, read when a server is built: every server of this process (one in
  // tpserve-worker) gets grpc.health.v1.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(impl->service.get());
  // Step plans carry block tables and token lists; a long prompt's prefill can exceed 4 MiB.
  builder.SetMaxReceiveMessageSize(256 << 20);
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("worker server: cannot listen on ", address, " (address in use?)"));
  }
  health->Attach(impl->server->GetHealthCheckService());
  return std::unique_ptr<WorkerServer>(new WorkerServer(std::move(impl), std::move(health), port));
}

WorkerServer::WorkerServer(std::unique_ptr<Impl> impl, std::shared_ptr<HealthPublisher> health,
                           int port)
    : impl_(std::move(impl)), health_(std::move(health)), port_(port) {}

WorkerServer::~WorkerServer() {
  Shutdown(absl::Seconds(1));
  // The engine outlives the server (tasks still queued run in the service's destructor): its
  // state changes must not reach the health service of a destroyed server.
  health_->Attach(nullptr);
}

void WorkerServer::Shutdown(absl::Duration grace) {
  if (impl_->shut_down) return;
  impl_->shut_down = true;
  // NOT_SERVING first, so probes and the coordinator see the rank going before calls fail.
  impl_->service->MarkStopping();
  impl_->server->Shutdown(std::chrono::system_clock::now() +
                          std::chrono::milliseconds(absl::ToInt64Milliseconds(grace)));
}

const WorkerEngine& WorkerServer::engine() const { return impl_->service->engine(); }

}  // namespace tpserve
