// A gRPC server hosting the Worker service (tpserve-worker's, and in-process tests') and
// grpc.health.v1: "" and "tpserve.v1.Worker" are SERVING while the engine is READY (a model
// loaded and served), NOT_SERVING while idle, loading, draining, broken or stopping; "liveness"
// is SERVING while the server runs. No gRPC types in this header.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/service/worker_engine.h"

namespace tpserve {

class WorkerServer {
 public:
  // Listens on `address` ("0.0.0.0:0" or "127.0.0.1:0" pick a free port). UNAVAILABLE when the
  // address cannot be bound.
  static absl::StatusOr<std::unique_ptr<WorkerServer>> Start(const std::string& address,
                                                             WorkerOptions options);
  ~WorkerServer();  // Shutdown(1 s) if not done yet

  // Marks the engine stopping (health NOT_SERVING, new plans refused), stops accepting calls,
  // cancels streams still open after `grace` and waits for their handlers. The executor stops in
  // the destructor (a step in flight runs to its end or its collective deadline).
  void Shutdown(absl::Duration grace);

  int port() const { return port_; }
  const WorkerEngine& engine() const;

 private:
  struct Impl;
  class HealthPublisher;
  WorkerServer(std::unique_ptr<Impl> impl, std::shared_ptr<HealthPublisher> health, int port);

  std::unique_ptr<Impl> impl_;
  std::shared_ptr<HealthPublisher> health_;
  int port_ = 0;
};

}  // namespace tpserve
