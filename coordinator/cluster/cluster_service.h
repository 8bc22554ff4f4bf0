// The coordinator's Cluster service (proto/tpserve/v1/worker.proto): worker registration over a
// WorkerRegistry and the rendezvous store over an InMemoryKvStore. The only coordinator/cluster
// file besides rendezvous_client.cc that sees gRPC types (DESIGN.md §8).
//
// A synchronous service: store waits block one server thread each (at most one per rank during
// a rendezvous), and they poll for cancellation so server shutdown never waits on them.
#pragma once

#include <functional>

#include "absl/time/time.h"
#include "coordinator/cluster/worker_registry.h"
#include "tpserve/v1/worker.grpc.pb.h"
#include "worker/parallel/in_memory_kv_store.h"

namespace tpserve {

class ClusterService final : public v1::Cluster::Service {
 public:
  // Store waits are capped at `max_wait` whatever the client asks for.
  ClusterService(WorkerRegistry& registry, InMemoryKvStore& store,
                 absl::Duration max_wait = absl::Minutes(10))
      : registry_(registry), store_(store), max_wait_(max_wait) {}

  // Called (outside any lock, on the gRPC thread) after every successful registration; the
  // coordinator uses it to start loading when the group is complete.
  void set_on_register(std::function<void(const WorkerInfo&, const RegisterOutcome&)> fn) {
    on_register_ = std::move(fn);
  }

  grpc::Status Register(grpc::ServerContext* ctx, const v1::RegisterRequest* req,
                        v1::RegisterResponse* resp) override;
  grpc::Status StoreSet(grpc::ServerContext* ctx, const v1::StoreSetRequest* req,
                        v1::StoreSetResponse* resp) override;
  grpc::Status StoreGet(grpc::ServerContext* ctx, const v1::StoreGetRequest* req,
                        v1::StoreGetResponse* resp) override;
  grpc::Status StoreCheck(grpc::ServerContext* ctx, const v1::StoreCheckRequest* req,
                          v1::StoreCheckResponse* resp) override;
  grpc::Status StoreWait(grpc::ServerContext* ctx, const v1::StoreWaitRequest* req,
                         v1::StoreWaitResponse* resp) override;

 private:
  // Waits for `keys` in slices so a cancelled call (client gone, server shutting down) returns.
  absl::Status WaitCancellable(grpc::ServerContext* ctx, const std::vector<std::string>& keys,
                               int64_t timeout_ms);

  WorkerRegistry& registry_;
  InMemoryKvStore& store_;
  const absl::Duration max_wait_;
  std::function<void(const WorkerInfo&, const RegisterOutcome&)> on_register_;
};

// WorkerInfo from a RegisterRequest (exposed for tests and the coordinator's logs).
WorkerInfo WorkerInfoFromProto(const v1::RegisterRequest& req);

}  // namespace tpserve
