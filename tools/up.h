// `tpserve up`: a local cluster on loopback — one tpserve-coordinator and N tpserve-worker
// processes, their logs prefixed with the process name, ready when health says SERVING. While
// the workers load their shards, a live progress bar per rank when stderr is a terminal (the
// workers' progress log lines otherwise).
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
  // Times a worker that exits after the cluster first served is started again (the coordinator
  // re-forms the group and the requests in flight resume); 0: any exit stops the cluster.
  int worker_restarts = 5;
  // Passed through; empty / 0 / false: the process's own default.
  std::string http_listen;       // coordinator --http-listen (HOST:PORT; port 0 picks one here)
  std::string log_format;        // every process: --log-format text|json
  std::string log_level;         // every process: --log-level
  std::string device = "cpu";    // "cpu", or "cuda": rank r gets --device cuda:r
  std::string dtype;             // workers: --dtype fp32|bf16
  std::string kv_cache_dtype;    // workers: --kv-cache-dtype auto|fp16|fp32|int8
  std::string collectives;       // workers: --collectives gloo|nccl
  int max_seqs = 0;              // coordinator --max-seqs
  int max_batch_tokens = 0;      // coordinator --max-batch-tokens
  int kv_block_size = 0;         // coordinator --kv-block-size
  bool no_prefix_cache = false;  // coordinator --no-prefix-cache
};

// Registers the `up` subcommand and its flags on `app`, filling `options` when parsed.
CLI::App* AddUpCommand(CLI::App& app, UpOptions& options);

// Runs until Ctrl-C / SIGTERM or until one of the processes exits; returns the exit code
// (0 after a signal, 1 when a process died or the cluster never became ready).
int RunUp(const UpOptions& options);

}  // namespace tpserve
