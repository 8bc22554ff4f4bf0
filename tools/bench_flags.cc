// The flags of `tpserve bench` (tools/bench.h), kept apart from the load generator itself.
#include <CLI/CLI.hpp>

#include "tools/bench.h"

namespace tpserve {

CLI::App* AddBenchCommand(CLI::App& app, BenchOptions& o) {
  CLI::App* cmd = app.add_subcommand(
      "bench",
      "load generator for a running cluster: streams Generate calls with random token prompts "
      "(closed loop at --concurrency, or open loop at --rate), prints progress and a table of "
      "throughput, TTFT, inter-token and end-to-end latency, KV use and preemptions");
  cmd->add_option("--server", o.server, "HOST:PORT of the cluster (tpserve up prints it)")
      ->required();
  cmd->add_option("--concurrency,-c", o.concurrency,
                  "closed loop: requests kept in flight (a new one starts when one ends)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--rate", o.rate,
                  "open loop: Poisson arrivals, requests per second (0: closed loop)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--max-concurrency", o.max_concurrency,
                  "open loop: most requests in flight; later arrivals wait for a slot")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--num-requests,-n", o.num_requests,
                  "requests to measure (0: no cap, use --duration)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--duration", o.duration_s,
                  "seconds to keep launching requests (0: no limit); in-flight ones finish")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--warmup", o.warmup, "requests run first at the same load shape and not counted")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--input-len", o.input_len,
                  "prompt tokens: N, uniform:A-B or normal:MEAN,STD (clamped to >= 1)")
      ->capture_default_str();
  cmd->add_option("--output-len", o.output_len,
                  "generated tokens (forced with ignore_eos + max_tokens): N, uniform:A-B or "
                  "normal:MEAN,STD")
      ->capture_default_str();
  cmd->add_option("--shared-prefix-ratio", o.shared_prefix_ratio,
                  "fraction of each prompt that is a prefix shared by all requests (exercises "
                  "the prefix cache)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--num-prefixes", o.num_prefixes,
                  "distinct shared prefixes (request i uses prefix i mod K)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--temperature", o.temperature, "sampling temperature (0: greedy)")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  cmd->add_option("--seed", o.seed,
                  "seed of the prompts and lengths; with --temperature, request i samples with "
                  "seed + i")
      ->capture_default_str();
  cmd->add_option("--channels", o.channels, "gRPC connections the streams are spread over")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--timeout", o.timeout_s, "deadline of each request, seconds")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--json", o.json_path, "also write the results as JSON to this file");
  cmd->add_flag("--quiet,-q", o.quiet, "no progress line");
  return cmd;
}

}  // namespace tpserve
