#include "coordinator/cluster/cluster_server.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "coordinator/cluster/cluster_service.h"
#include "grpcpp/grpcpp.h"

namespace tpserve {

struct ClusterServer::Impl {
  Impl(WorkerRegistry& registry, InMemoryKvStore& store) : service(registry, store) {}
  ClusterService service;
  std::unique_ptr<grpc::Server> server;
};

absl::StatusOr<std::unique_ptr<ClusterServer>> ClusterServer::Start(const std::string& address,
                                                                    WorkerRegistry& registry,
                                                                    InMemoryKvStore& store) {
  auto impl = std::make_unique<Impl>(registry, store);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&impl->service);
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cluster server: cannot listen on ", address, " (address in use?)"));
  }
  const size_t colon = address.rfind(':');
  std::string host = colon == std::string::npos ? address : address.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "[::]") host = "127.0.0.1";
  return std::unique_ptr<ClusterServer>(
      new ClusterServer(std::move(impl), absl::StrCat(host, ":", port), port));
}

ClusterServer::ClusterServer(std::unique_ptr<Impl> impl, std::string address, int port)
    : impl_(std::move(impl)), address_(std::move(address)), port_(port) {}

ClusterServer::~ClusterServer() {
  // Waiting store calls poll for cancellation, so a short grace period is enough.
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
}

}  // namespace tpserve
