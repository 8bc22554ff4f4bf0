// A gRPC server hosting only the Cluster service (registration + rendezvous store). The
// coordinator adds ClusterService to its main server instead; this stand-alone form serves
// tests, benchmarks and tools that need a rendezvous point without a coordinator. No gRPC types
// in this header.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/cluster/worker_registry.h"
#include "worker/parallel/in_memory_kv_store.h"

namespace tpserve {

class ClusterServer {
 public:
  // Listens on `address` ("127.0.0.1:0" picks a free port). The registry and store must
  // outlive the server.
  static absl::StatusOr<std::unique_ptr<ClusterServer>> Start(const std::string& address,
                                                              WorkerRegistry& registry,
                                                              InMemoryKvStore& store);
  ~ClusterServer();  // shuts down, cancelling calls still waiting on the store

  // "host:port" clients should dial.
  const std::string& address() const { return address_; }
  int port() const { return port_; }

 private:
  struct Impl;
  ClusterServer(std::unique_ptr<Impl> impl, std::string address, int port);

  std::unique_ptr<Impl> impl_;
  std::string address_;
  int port_ = 0;
};

}  // namespace tpserve
