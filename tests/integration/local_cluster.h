// Real processes on loopback for the integration tests: a tpserve-coordinator and N
// tpserve-worker processes (binaries from CMake, $<TARGET_FILE:...>), their output in a log file
// each, stopped (SIGTERM, then SIGKILL) when the object goes away.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "tpserve/v1/inference.grpc.pb.h"

namespace tpserve::testing {

class LocalCluster {
 public:
  // Starts the coordinator for `model` with `tp` ranks and the workers. Extra coordinator flags
  // in `coordinator_args`, extra flags of every worker (e.g. --memory-budget) in `worker_args`.
  LocalCluster(std::string model, int tp, std::vector<std::string> coordinator_args = {},
               std::vector<std::string> worker_args = {});
  ~LocalCluster();

  // Waits for grpc.health.v1 to say SERVING (or NOT_SERVING when `serving` is false).
  absl::Status WaitHealth(bool serving, absl::Duration timeout);

  // A worker outside the group (duplicate rank, wrong group size); stopped with the cluster.
  // Its output goes to `name`.log.
  pid_t StartExtraWorker(const std::string& name, int rank, int tp);
  std::string ReadLog(const std::string& name) const;

  void KillWorker(int rank);     // SIGKILL
  void RestartWorker(int rank);  // a fresh process (new incarnation)
  // SIGSTOP / SIGCONT: a process that holds its connections open but answers nothing, as a
  // hung host or a link cut without a reset looks to its peers.
  void FreezeWorker(int rank);
  void ThawWorker(int rank);
  bool CoordinatorAlive();

  const std::string& address() const { return address_; }
  std::unique_ptr<v1::Inference::Stub> Stub() const;
  // The last lines of every process's log, for failure messages.
  std::string Logs() const;

 private:
  pid_t Start(const std::string& name, const std::vector<std::string>& argv);
  void StartWorker(int rank);

  std::string model_;
  int tp_;
  std::vector<std::string> worker_args_;
  std::string address_;
  std::string log_dir_;
  pid_t coordinator_ = -1;
  std::vector<pid_t> workers_;
  std::vector<pid_t> extra_;
  std::vector<std::string> log_files_;
};

// Free TCP port on 127.0.0.1 (bind 0 and close).
int FreeLoopbackPort();

// $TPSERVE_MODELS (default ~/.cache/tpserve/models).
std::string ModelsDir();

}  // namespace tpserve::testing
