// A gRPC server hosting the Worker service (tpserve-worker's, and in-process tests'). No gRPC
// types in this header.
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

  // Stops accepting calls, cancels streams still open after `grace` and waits for their
  // handlers. The executor stops in the destructor (a step in flight runs to its end or its
  // collective deadline).
  void Shutdown(absl::Duration grace);

  int port() const { return port_; }
  const WorkerEngine& engine() const;

 private:
  struct Impl;
  WorkerServer(std::unique_ptr<Impl> impl, int port);

  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace tpserve
