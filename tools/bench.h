// `tpserve bench`: a load generator for a running cluster's tpserve.v1.Inference service.
// Streams Generate calls (gRPC callback API: no thread per stream, so the client's own CPU use
// stays small on a machine it shares with the server), polls GetServerStats for the server's
// side, and prints a progress line while it runs and a table (optionally JSON) at the end.
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace tpserve {

struct BenchOptions {
  std::string server;  // host:port of the coordinator
  // Load shape: closed loop with `concurrency` streams in flight, or (rate > 0) open loop with
  // Poisson arrivals at `rate` requests/s, at most `max_concurrency` in flight.
  int concurrency = 1;
  double rate = 0;
  int max_concurrency = 256;
  // How much: stop launching after num_requests, or after duration_s seconds when > 0
  // (whichever comes first; num_requests 0 means no cap).
  int num_requests = 64;
  double duration_s = 0;
  int warmup = 0;  // requests run (at the same concurrency) before measuring, not counted
  // Token counts per request: "N", "uniform:A-B", "normal:MEAN,STD".
  std::string input_len = "64";
  std::string output_len = "128";
  double shared_prefix_ratio = 0;  // fraction of each prompt that is a shared prefix
  int num_prefixes = 1;            // distinct shared prefixes
  float temperature = 0;           // 0: greedy
  uint64_t seed = 0;               // prompts and (temperature > 0) sampling seeds
  int channels = 1;                // gRPC connections to spread the streams over
  int timeout_s = 600;             // per request
  std::string json_path;           // also write the results here when not empty
  bool quiet = false;              // no progress line
};

// Registers the `bench` subcommand and its flags on `app`, filling `options` when parsed.
CLI::App* AddBenchCommand(CLI::App& app, BenchOptions& options);

// Runs the benchmark; returns the exit code: 0 when it ran (failed requests are counted, not
// fatal), 2 when the server cannot be reached or an option is invalid, 1 when the results could
// not be written.
int RunBench(const BenchOptions& options);

}  // namespace tpserve
