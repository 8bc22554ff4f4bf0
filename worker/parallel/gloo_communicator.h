// Communicator over Gloo's TCP transport (DESIGN.md §6): the data plane between CPU ranks.
//
// Rendezvous goes through a KvStore (the coordinator's, in production) under a per-group prefix,
// so a re-formed group (DESIGN.md §7) uses fresh keys. Every collective has a deadline. Gloo
// reports failures by throwing; this class catches them at its edge and returns an absl::Status
// naming the op, this rank and the peer (its rank where the op knows it, as for GatherV's
// sources; otherwise the socket address Gloo reports). After the first failure the communicator is
// broken: every later call fails at once with the first error, and the owner rebuilds the group.
//
// Not thread-safe: one collective at a time, called in the same order on every rank.
//
// Create() sets SIGPIPE to be ignored in the whole process: Gloo writes without MSG_NOSIGNAL,
// and a write to a dead peer would otherwise kill the surviving rank instead of failing the op.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/parallel/communicator.h"
#include "worker/parallel/kv_store.h"

namespace gloo {
class Context;
}  // namespace gloo

namespace tpserve {

struct GlooOptions {
  int rank = 0;
  int world_size = 1;
  // Where this rank accepts its peers' connections: a host name or address ("127.0.0.1", a pod
  // IP) or, when set, a network interface name ("eth0") that takes precedence over `hostname`.
  std::string hostname = "127.0.0.1";
  std::string interface;
  // Namespace of this group's keys in the store; use a new one for every group generation.
  std::string store_prefix = "gloo/";
  // Deadline of the rendezvous (all ranks present and connected) and of every collective.
  absl::Duration timeout = absl::Seconds(30);
  // All-reduces up to this many bytes use Gloo's BCUBE algorithm instead of the ring. 0 (the
  // default, Gloo's own choice): ring always. bench/parallel/gloo_bench --bcube_max_bytes
  // compares them; on the loaded 2-vCPU dev VM neither won clearly (scheduler noise dominates).
  size_t bcube_max_bytes = 0;
};

class GlooCommunicator final : public Communicator {
 public:
  // Publishes this rank's address in `store`, waits for the other ranks and connects to each
  // (a full mesh). Blocks until every rank has joined or `options.timeout` passes
  // (DEADLINE_EXCEEDED / UNAVAILABLE naming the step). `store` is only used during Create.
  static absl::StatusOr<std::unique_ptr<GlooCommunicator>> Create(KvStore& store,
                                                                  const GlooOptions& options);
  ~GlooCommunicator() override;

  int rank() const override { return options_.rank; }
  int world_size() const override { return options_.world_size; }

  absl::Status AllReduceSum(float* data, size_t count) override;
  absl::Status GatherV(const float* in, std::span<const size_t> counts, float* out,
                       int root) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  absl::Status Barrier() override;

  // True after a collective failed; `broken_status()` is that first failure.
  bool broken() const { return !broken_status_.ok(); }
  const absl::Status& broken_status() const { return broken_status_; }

 private:
  GlooCommunicator(const GlooOptions& options, std::shared_ptr<gloo::Context> context);

  // Runs `op` (which may throw Gloo exceptions) under the broken-state rules; `what` names the op
  // and its size in messages.
  template <typename Op>
  absl::Status Run(const std::string& what, Op&& op);

  const GlooOptions options_;
  std::shared_ptr<gloo::Context> context_;
  absl::Status broken_status_;
};

}  // namespace tpserve
