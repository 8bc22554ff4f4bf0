#include "worker/service/worker_server.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "worker/service/worker_service.h"

namespace tpserve {

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
  auto impl = std::make_unique<Impl>(std::move(options));
  int port = 0;
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
  return std::unique_ptr<WorkerServer>(new WorkerServer(std::move(impl), port));
}

WorkerServer::WorkerServer(std::unique_ptr<Impl> impl, int port)
    : impl_(std::move(impl)), port_(port) {}

WorkerServer::~WorkerServer() { Shutdown(absl::Seconds(1)); }

void WorkerServer::Shutdown(absl::Duration grace) {
  if (impl_->shut_down) return;
  impl_->shut_down = true;
  impl_->server->Shutdown(std::chrono::system_clock::now() +
                          std::chrono::milliseconds(absl::ToInt64Milliseconds(grace)));
}

const WorkerEngine& WorkerServer::engine() const { return impl_->service->engine(); }

}  // namespace tpserve
