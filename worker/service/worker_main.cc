// tpserve-worker: one rank of a tensor-parallel group (DESIGN.md §1). Serves the Worker gRPC
// service, registers with the coordinator (retrying until it answers), and then does what the
// coordinator asks: LoadModel (rendezvous through the coordinator's store), Execute, Drain.
// Exits on SIGTERM / SIGINT.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/base/logging.h"
#include "coordinator/cluster/rendezvous_client.h"
#include "spdlog/spdlog.h"
#include "worker/service/device.h"
#include "worker/service/registration.h"
#include "worker/service/worker_server.h"

#ifndef TPSERVE_VERSION
#define TPSERVE_VERSION ""
#endif

namespace tpserve {
namespace {

struct Flags {
  std::string coordinator;
  int rank = -1;
  int world_size = 1;
  std::string device = "cpu";
  std::string dtype;
  std::string kv_cache_dtype = "auto";
  std::string collectives = "gloo";
  bool host_sampling = false;
  int64_t cuda_graph_max_batch = 64;
  std::string listen = "0.0.0.0:0";
  std::string advertise;
  std::string data_interface;
  int threads = 0;
  int64_t memory_budget = 0;
  std::string model;
  double register_interval_s = 2.0;
  LogOptions log;
};

// The host peers and the coordinator should dial: --advertise, else the --listen host when it
// names one address, else this machine's host name.
std::string AdvertiseHost(const Flags& f) {
  if (!f.advertise.empty()) return f.advertise;
  const size_t colon = f.listen.rfind(':');
  const std::string host = colon == std::string::npos ? f.listen : f.listen.substr(0, colon);
  if (!host.empty() && host != "0.0.0.0" && host != "[::]" && host != "::") return host;
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

int Run(const Flags& f) {
  if (absl::Status st = ConfigureLogging(f.log, absl::StrCat("rank ", f.rank)); !st.ok()) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 2;
  }
  if (f.rank >= f.world_size) {
    spdlog::error("--rank {} is outside a group of --tp {} ranks", f.rank, f.world_size);
    return 2;
  }
  const int threads = f.threads > 0
                          ? f.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const std::string host = AdvertiseHost(f);
  // Before anything listens or registers: a worker that cannot compute says why and exits 2.
  absl::StatusOr<std::unique_ptr<WorkerDevice>> device =
      OpenDevice(DeviceOptions{.device = f.device,
                               .dtype = f.dtype,
                               .collectives = f.collectives,
                               .threads = threads,
                               .kv_cache_dtype = f.kv_cache_dtype,
                               .cuda_graph_max_batch = f.cuda_graph_max_batch});
  if (!device.ok()) {
    spdlog::error("{}", std::string(device.status().message()));
    return 2;
  }
  std::shared_ptr<WorkerDevice> shared_device = std::move(*device);

  // Signals are taken by sigwait below: block them before any thread starts (threads inherit
  // the mask), so no gRPC or Gloo thread is interrupted by them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  WorkerOptions options;
  options.rank = f.rank;
  options.device = shared_device;
  options.threads = threads;
  options.data_host = host;
  options.data_interface = f.data_interface;
  options.memory_budget_bytes = f.memory_budget;
  options.host_sampling = f.host_sampling;
  options.make_store = [coordinator = f.coordinator]() {
    return MakeRendezvousClient(coordinator);
  };
  absl::StatusOr<std::unique_ptr<WorkerServer>> server =
      WorkerServer::Start(f.listen, std::move(options));
  if (!server.ok()) {
    spdlog::error("{}", server.status().ToString());
    return 1;
  }
  const std::string control_address = absl::StrCat(host, ":", (*server)->port());
  spdlog::info("Worker service on {} (advertised as {}), {}, coordinator {}", f.listen,
               control_address, shared_device->Summary(), f.coordinator);

  v1::RegisterRequest req;
  req.set_rank(f.rank);
  req.set_world_size(f.world_size);
  req.set_incarnation(MakeIncarnation());
  *req.mutable_device() = DeviceInfoOf(shared_device->Describe());
  req.set_memory_budget_bytes(f.memory_budget);
  req.set_control_address(control_address);
  req.set_data_host(f.data_interface.empty() ? host : "");
  req.set_data_interface(f.data_interface);
  req.set_model(f.model);
  req.set_version(TPSERVE_VERSION);

  std::atomic<bool> stopping{false};
  std::atomic<int> exit_code{0};
  Registrar registrar(f.coordinator, req);
  std::thread registering([&]() {
    const auto stopped = [&]() { return stopping.load(); };
    absl::StatusOr<v1::RegisterResponse> resp = registrar.RegisterWithRetry(stopped);
    absl::Status st = resp.status();
    if (resp.ok()) {
      spdlog::info("registered with {}: {}/{} ranks present{}", f.coordinator, resp->registered(),
                   resp->world_size(), resp->complete() ? ", group complete" : "");
      if (f.register_interval_s > 0) {
        st = registrar.KeepRegistered(absl::Seconds(f.register_interval_s), stopped);
      }
    }
    if (!st.ok() && !absl::IsCancelled(st)) {
      spdlog::error("{}", st.ToString());
      exit_code = 2;
      kill(getpid(), SIGTERM);  // wakes the sigwait below
    }
  });

  int sig = 0;
  sigwait(&signals, &sig);
  const absl::Time signalled = absl::Now();
  stopping = true;
  if (exit_code == 0) spdlog::info("{}: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
  // The coordinator is usually stopping at the same moment (tpserve up, a rolling restart): a
  // Register call to it is cancelled rather than waited out.
  registrar.Cancel();
  // Health turns NOT_SERVING at once; streams still open after the grace are cancelled (a step
  // in flight finishes or hits its collective deadline).
  (*server)->Shutdown(absl::Seconds(1));
  registering.join();
  // Freeing the model and KV pool costs time proportional to the pool (the kernel returns its
  // pages): see DefaultBudget in worker_engine.cc for why the default pool is capped.
  server->reset();
  spdlog::info("stopped in {} ms", absl::ToInt64Milliseconds(absl::Now() - signalled));
  return exit_code;
}

}  // namespace
}  // namespace tpserve

int main(int argc, char** argv) {
  tpserve::Flags f;
  CLI::App app{
      "tpserve-worker: one tensor-parallel rank. Serves the Worker gRPC service, registers with "
      "the coordinator, loads its slice of the model when told to, and executes step plans."};
  app.add_option("--coordinator", f.coordinator,
                 "HOST:PORT of the coordinator's Cluster service (registration and the "
                 "rendezvous store)")
      ->required();
  app.add_option("--rank", f.rank, "This worker's rank in [0, --tp)")
      ->required()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--tp,--world-size", f.world_size,
                 "Ranks in the group; must equal the coordinator's --tp")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--device", f.device,
                 "Compute device: cpu, or cuda:K for GPU K (needs a CUDA build and an NVIDIA "
                 "driver; one GPU per rank)")
      ->capture_default_str();
  app.add_option("--dtype", f.dtype,
                 "Compute dtype. cpu: int8x2 (default where the build has AVX-512 VNNI: "
                 "Q4_0/Q4_1/Q8_0 weights multiply activations held as two int8 terms, ~15 bits), "
                 "int8 (one int8 term, llama.cpp's rounding: fastest, least exact) or fp32; "
                 "cuda: bf16 (default) or fp32")
      ->check(CLI::IsMember({"fp32", "bf16", "int8", "int8x2"}));
  app.add_option("--kv-cache-dtype", f.kv_cache_dtype,
                 "KV cache element type. auto: fp16 with --dtype int8x2 / int8 on cpu and bf16 on "
                 "cuda (half the memory and the bytes attention reads), fp32 with --dtype fp32; "
                 "fp16; fp32; int8 (cpu only: a scale per position and head, half of fp16 "
                 "again; SmolLM2's logits move by 1-3.5 %)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "fp16", "fp32", "int8"}));
  app.add_option("--collectives", f.collectives,
                 "Data plane between ranks: gloo (TCP; on GPUs staged through host memory) or "
                 "nccl (GPU ranks only; every rank of the group must pass the same)")
      ->capture_default_str()
      ->check(CLI::IsMember({"gloo", "nccl"}));
  app.add_flag("--host-sampling", f.host_sampling,
               "cuda: copy the logits to the host and sample there (penalties, bias, log-probs "
               "included) instead of on the GPU, where only the tokens and log-probs come back");
  app.add_option("--cuda-graph-max-batch", f.cuda_graph_max_batch,
                 "cuda: decode steps of up to this many sequences (one rank, --tp 1) are recorded "
                 "once per padded batch size (1, 2, 4, 8, 16, 24, ...) as a CUDA graph and "
                 "replayed: one launch a step instead of hundreds; 0 runs every step op by op")
      ->capture_default_str()
      ->check(CLI::Range(0, 512));
  app.add_option("--listen", f.listen,
                 "HOST:PORT the Worker service listens on; port 0 picks a free one")
      ->capture_default_str();
  app.add_option("--advertise", f.advertise,
                 "Host the coordinator and peer ranks reach this worker on (its Worker service "
                 "and Gloo's data plane); default: the --listen host, or this machine's host "
                 "name when --listen is a wildcard");
  app.add_option("--data-interface", f.data_interface,
                 "Network interface for Gloo (e.g. eth0); overrides --advertise for the data "
                 "plane");
  app.add_option("--threads", f.threads, "CPU compute threads; 0 = all hardware threads")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--memory-budget", f.memory_budget,
                 "Bytes for weights + KV cache + activations when the coordinator sends no "
                 "budget; 0 = half of the host's available memory, at most 2 GiB, divided by --tp "
                 "(CPU), or 90 % of the GPU's free memory after the weights (CUDA)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--model", f.model,
                 "Model this worker is meant to serve; the coordinator refuses a mismatch "
                 "(default: whatever it serves)");
  app.add_option("--register-interval", f.register_interval_s,
                 "Seconds between repeated registrations after the first (so a restarted "
                 "coordinator finds this worker again); 0 = register once")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  AddLogFlags(app, f.log);
  CLI11_PARSE(app, argc, argv);
  return tpserve::Run(f);
}
