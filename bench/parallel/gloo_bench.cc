// Latency of the Gloo collectives between ranks in separate processes on this host, with the
// rendezvous through the coordinator's gRPC store (as in production).
//
//   gloo_bench [--world 2] [--iters 300] [--gap_us 0]
//
// Rank 0 prints, per op and size, the median / p90 / mean time of one call (each call is
// preceded by a barrier-free back-to-back loop; --gap_us sleeps between calls to show the idle
// wake-up cost the decode loop pays when compute separates the collectives).
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/cluster/cluster_server.h"
#include "coordinator/cluster/rendezvous_client.h"
#include "worker/parallel/gloo_communicator.h"

extern char** environ;

namespace tpserve {
namespace {

struct Stats {
  double p50_us, p90_us, mean_us;
};

Stats Summarize(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  const double mean = std::accumulate(us.begin(), us.end(), 0.0) / us.size();
  return {us[us.size() / 2], us[us.size() * 9 / 10], mean};
}

template <typename Op>
absl::StatusOr<Stats> Time(GlooCommunicator& comm, int iters, int gap_us, Op op) {
  for (int i = 0; i < 10; ++i) {
    if (absl::Status st = op(); !st.ok()) return st;  // warm-up
  }
  if (absl::Status st = comm.Barrier(); !st.ok()) return st;
  std::vector<double> us;
  us.reserve(iters);
  for (int i = 0; i < iters; ++i) {
    if (gap_us > 0) absl::SleepFor(absl::Microseconds(gap_us));
    const absl::Time start = absl::Now();
    if (absl::Status st = op(); !st.ok()) return st;
    us.push_back(absl::ToDoubleMicroseconds(absl::Now() - start));
  }
  return Summarize(std::move(us));
}

void Print(int rank, const std::string& what, size_t bytes, const Stats& s) {
  if (rank != 0) return;
  std::printf("%-34s %10zu B  p50 %9.1f us  p90 %9.1f us  mean %9.1f us  %7.3f GB/s\n",
              what.c_str(), bytes, s.p50_us, s.p90_us, s.mean_us, bytes / (s.p50_us * 1e3));
  std::fflush(stdout);
}

int RunRank(const std::string& store_addr, int rank, int world, int iters, int gap_us,
            int64_t bcube_max_bytes) {
  std::unique_ptr<KvStore> store = MakeRendezvousClient(store_addr);
  GlooOptions opts;
  opts.rank = rank;
  opts.world_size = world;
  opts.store_prefix = "bench/";
  opts.timeout = absl::Seconds(30);
  opts.bcube_max_bytes = bcube_max_bytes;
  absl::StatusOr<std::unique_ptr<GlooCommunicator>> comm = GlooCommunicator::Create(*store, opts);
  if (!comm.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, comm.status().ToString().c_str());
    return 1;
  }
  GlooCommunicator& c = **comm;
  // 576 floats: one SmolLM2 hidden vector (a decode step's all-reduce at batch 1);
  // 1 Mi floats = 4 MiB: a prefill-sized all-reduce.
  for (size_t count : {size_t{576}, size_t{576} * 16, size_t{1} << 20}) {
    std::vector<float> data(count, 1.0f);
    absl::StatusOr<Stats> s = Time(c, count > 100000 ? iters / 4 : iters, gap_us,
                                   [&]() { return c.AllReduceSum(data.data(), data.size()); });
    if (!s.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", rank, s.status().ToString().c_str());
      return 1;
    }
    Print(rank, absl::StrCat("AllReduceSum ", count, " floats"), count * sizeof(float), *s);
  }
  // The LM head's gather at batch 1: SmolLM2's 49152 logits split over the ranks.
  std::vector<size_t> counts(world, 49152 / world);
  counts[0] += 49152 % world;
  std::vector<float> in(counts[rank], 0.5f), out(49152);
  absl::StatusOr<Stats> g =
      Time(c, iters, gap_us, [&]() { return c.GatherV(in.data(), counts, out.data(), 0); });
  if (!g.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, g.status().ToString().c_str());
    return 1;
  }
  Print(rank, "GatherV 49152 floats to rank 0", 49152 * sizeof(float), *g);
  absl::StatusOr<Stats> b = Time(c, iters, gap_us, [&]() { return c.Barrier(); });
  if (b.ok()) Print(rank, "Barrier", 0, *b);
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{"Gloo collective latency between processes"};
  int world = 2, iters = 300, gap_us = 0, rank = -1;
  int64_t bcube_max_bytes = GlooOptions().bcube_max_bytes;
  std::string store;
  app.add_option("--world", world, "ranks (processes)");
  app.add_option("--iters", iters, "timed calls per op (a quarter for 4 MiB)");
  app.add_option("--gap_us", gap_us, "sleep before each call, microseconds");
  app.add_option("--bcube_max_bytes", bcube_max_bytes,
                 "all-reduces up to this size use BCUBE, larger the ring (0: ring always)");
  app.add_option("--rank", rank, "internal: run as this rank");
  app.add_option("--store", store, "internal: rendezvous store address");
  CLI11_PARSE(app, argc, argv);
  if (rank >= 0) return RunRank(store, rank, world, iters, gap_us, bcube_max_bytes);

  WorkerRegistry registry(world, "", "");
  InMemoryKvStore kv;
  absl::StatusOr<std::unique_ptr<ClusterServer>> server =
      ClusterServer::Start("127.0.0.1:0", registry, kv);
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf(
      "gloo_bench: %d processes on loopback, %d iterations, gap %d us, BCUBE up to %lld B\n", world,
      iters, gap_us, static_cast<long long>(bcube_max_bytes));
  std::fflush(stdout);
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> args = {
        "/proc/self/exe",       "--rank",  std::to_string(r),     "--world",
        std::to_string(world),  "--iters", std::to_string(iters), "--gap_us",
        std::to_string(gap_us), "--store", (*server)->address()};
    std::vector<char*> cargs;
    for (std::string& a : args) cargs.push_back(a.data());
    cargs.push_back(nullptr);
    pid_t pid;
    if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, cargs.data(), environ) != 0) {
      std::perror("posix_spawn");
      return 1;
    }
    pids.push_back(pid);
  }
  int rc = 0;
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) rc = 1;
  }
  return rc;
}

}  // namespace
}  // namespace tpserve

int main(int argc, char** argv) { return tpserve::Main(argc, argv); }
