// The workers' side of the coordinator's rendezvous store: a KvStore whose calls are Cluster
// Store* RPCs. No gRPC types in this header, so worker code that builds a communicator (Gloo
// now, the NCCL unique id later) depends only on KvStore.
#pragma once

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "worker/parallel/kv_store.h"

namespace tpserve {

struct RendezvousClientOptions {
  // How long a call waits for the coordinator to be reachable before failing with UNAVAILABLE
  // (workers may start before the coordinator listens).
  absl::Duration connect_timeout = absl::Seconds(30);
  // Deadline of calls that do not wait for keys (Set, Check).
  absl::Duration rpc_timeout = absl::Seconds(10);
};

// A KvStore over the Cluster service at `address` ("host:port"). Thread-safe.
std::unique_ptr<KvStore> MakeRendezvousClient(const std::string& address,
                                              const RendezvousClientOptions& options = {});

}  // namespace tpserve
