// `tpserve up`: a local cluster on loopback — one tpserve-coordinator and N tpserve-worker
// processes, their logs prefixed with the process name, ready when health says SERVING.
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace tpserve {

struct UpOptions {
  std::string model;
  int tp = 1;
  int port = 0;               // Inference port; 0 picks a free one
  int threads = 0;            // per worker; 0: hardware threads / tp (at least 1)
  int64_t memory_budget = 0;  // per worker, bytes; 0: the workers decide
  int max_context = 0;        // 0: the model's context length
  int ready_timeout_s = 600;
};

// Registers the `up` subcommand and its flags on `app`, filling `options` when parsed.
CLI::App* AddUpCommand(CLI::App& app, UpOptions& options);

// Runs until Ctrl-C / SIGTERM or until one of the processes exits; returns the exit code
// (0 after a signal, 1 when a process died or the cluster never became ready).
int RunUp(const UpOptions& options);

}  // namespace tpserve
