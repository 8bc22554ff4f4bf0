// tpserve-coordinator: hosts the Cluster service (workers register and rendezvous) and the public
// Inference service (clients), waits for --tp workers, has them load their shards, and serves.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <memory>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/base/logging.h"
#include "coordinator/api/health.h"
#include "coordinator/api/http/http_server.h"
#include "coordinator/api/inference_service.h"
#include "coordinator/api/served_model.h"
#include "coordinator/cluster/cluster_service.h"
#include "coordinator/cluster/worker_group.h"
#include "coordinator/engine/engine.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "spdlog/spdlog.h"

namespace tpserve {
namespace {

constexpr char kVersion[] = "0.1.0";

struct Flags {
  LogOptions log;
  std::string model;
  int tp = 1;
  std::string listen = "127.0.0.1:50051";
  std::string cluster_listen;  // empty: the same server as --listen
  int kv_block_size = 16;
  int max_batch_tokens = 0;  // see --max-batch-tokens (0: the workers' devices decide)
  int max_seqs = 64;
  int64_t memory_budget = 0;
  int max_context = 0;
  int max_waiting = 1024;
  int step_timeout_ms = 60000;
  int collective_timeout_ms = 30000;
  int resume_window_s = 60;
  int load_timeout_s = 600;
  int keepalive_time_s = 30;
  int keepalive_timeout_s = 10;
  int health_timeout_ms = 2000;
  int health_misses = 3;
  bool no_prefix_cache = false;
  std::string http_listen;  // empty: no HTTP server (off unless asked: ports must not collide)
};

// Keepalive: a client that vanishes without closing its connection (a partition, a suspended
// process, a NAT that dropped the flow) leaves no reset behind; its streams would go on
// generating and holding KV blocks until they end. The server pings every connection with calls
// in progress every `keepalive` and closes it when a ping goes unanswered for `timeout`: its
// calls are cancelled and their requests aborted, as if the client had hung up. It also accepts
// clients' own keepalive pings down to every 10 s (gRPC's default refuses more than one per 5
// minutes without data, and closes such clients' connections).
std::unique_ptr<grpc::Server> BuildServer(const std::string& address,
                                          std::vector<grpc::Service*> sync,
                                          std::vector<grpc::Service*> callback, int* port,
                                          absl::Duration keepalive, absl::Duration timeout) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), port);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(keepalive)));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);  // ping while stalled too
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  for (grpc::Service* s : sync) builder.RegisterService(s);
  for (grpc::Service* s : callback) builder.RegisterService(s);
  return builder.BuildAndStart();
}

std::string HostPort(const std::string& address, int port) {
  const size_t colon = address.rfind(':');
  std::string host = colon == std::string::npos ? address : address.substr(0, colon);
  return absl::StrCat(host, ":", port);
}

// Rank 0's device kind, compute and KV dtypes (what ModelInfo reports), once it has registered.
std::optional<api::ServingInfo::WorkerDevice> RankZeroDevice(const WorkerRegistry& registry) {
  const std::optional<WorkerInfo> w = registry.worker(0);
  if (!w.has_value()) return std::nullopt;
  return api::ServingInfo::WorkerDevice{.device = w->device_kind,
                                        .compute_dtype = w->compute_dtype,
                                        .kv_cache_dtype = w->kv_cache_dtype};
}

int Run(const Flags& f) {
  // Signals go to sigwait in main; every thread started below inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<ServedModel>> model = LoadServedModel(f.model);
  if (!model.ok()) {
    spdlog::error("--model: {}", std::string(model.status().message()));
    return 2;
  }
  const ModelConfig& config = (*model)->config();
  absl::StatusOr<ShardPlan> plan = MakeShardPlan(ShardInputsOf(config, f.tp));
  if (!plan.ok()) {
    spdlog::error("--tp {}: {}", f.tp, std::string(plan.status().message()));
    return 2;
  }
  const int context = f.max_context > 0 ? std::min(f.max_context, (*model)->context_length())
                                        : (*model)->context_length();
  spdlog::info(
      "model {}: {} ({} layers, hidden {}, {} heads / {} KV heads, vocab {}), {}, "
      "context {}, tokenizer {}, chat template {}",
      f.model, config.architecture, config.num_layers, config.hidden_size, config.num_heads,
      config.num_kv_heads, config.vocab_size, (*model)->weight_dtype, context,
      (*model)->tokenizer ? "yes" : "no", (*model)->chat_template ? "yes" : "no");

  WorkerRegistry registry(f.tp, f.model, kVersion);
  InMemoryKvStore store;
  ClusterService cluster(registry, store);
  WorkerGroupOptions go{.model_path = f.model,
                        .plan = *plan,
                        .dtype = "",
                        .kv_block_size = f.kv_block_size,
                        .memory_budget_bytes = f.memory_budget,
                        .max_batch_sequences = f.max_seqs,
                        .max_batch_tokens = f.max_batch_tokens,
                        .max_context_length = context,
                        .architecture = config.architecture,
                        .num_layers = static_cast<int>(config.num_layers),
                        .load_timeout = absl::Seconds(f.load_timeout_s),
                        .collective_timeout = absl::Milliseconds(f.collective_timeout_ms),
                        .step_timeout = absl::Milliseconds(f.step_timeout_ms),
                        .health_timeout = absl::Milliseconds(f.health_timeout_ms),
                        .health_misses = f.health_misses};
  WorkerGroup group(std::move(go), registry, store);
  // Workers re-register every few seconds (so a restarted coordinator finds them): log news only.
  absl::Mutex seen_mu;
  std::set<std::string> seen;
  cluster.set_on_register([&](const WorkerInfo& w, const RegisterOutcome& o) {
    group.OnRegistered();
    {
      absl::MutexLock lock(&seen_mu);
      if (!seen.insert(w.incarnation).second) return;
    }
    spdlog::info("rank {} registered from {} ({}; {}/{} present)", w.rank, w.control_address,
                 w.device_kind, o.registered, group.world_size());
  });

  std::atomic<bool> serving_now{false};  // what grpc.health.v1 says (set by the supervisor)
  absl::Mutex verdict_mu;                // the supervisor's latest verdict, for GET /health
  api::HealthVerdict verdict{false, "the worker group is not loaded yet"};
  api::InferenceService inference(
      **model,
      api::ServingInfo{
          .tensor_parallel = f.tp,
          .kv_block_size = f.kv_block_size,
          .max_batch_sequences = f.max_seqs,
          .max_batch_tokens = f.max_batch_tokens > 0 ? f.max_batch_tokens : 512,
          .context_length = context,
          .worker_device = [&registry] { return RankZeroDevice(registry); },
          .serving = [&group, &serving_now] { return serving_now.load() && group.ready(); }});
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  int port = 0, cluster_port = 0;
  const absl::Duration keepalive = absl::Seconds(f.keepalive_time_s);
  const absl::Duration keepalive_timeout = absl::Seconds(f.keepalive_timeout_s);
  std::unique_ptr<grpc::Server> cluster_server;
  std::unique_ptr<grpc::Server> server;
  if (f.cluster_listen.empty()) {
    server = BuildServer(f.listen, {&cluster}, {&inference}, &port, keepalive, keepalive_timeout);
    cluster_port = port;
  } else {
    server = BuildServer(f.listen, {}, {&inference}, &port, keepalive, keepalive_timeout);
    cluster_server =
        BuildServer(f.cluster_listen, {&cluster}, {}, &cluster_port, keepalive, keepalive_timeout);
  }
  if (server == nullptr || port == 0 || (!f.cluster_listen.empty() && cluster_port == 0)) {
    spdlog::error("cannot listen on {} (address in use?)", port == 0 ? f.listen : f.cluster_listen);
    return 2;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  auto set_health = [&](bool serving) {
    health->SetServingStatus("", serving);
    health->SetServingStatus("tpserve.v1.Inference", serving);
    serving_now.store(serving);
  };
  set_health(false);
  // "liveness": SERVING while the process runs (a Kubernetes liveness probe). Readiness ("" and
  // tpserve.v1.Inference) is NOT_SERVING while a lost rank re-forms; restarting the coordinator
  // then would only lose its queue.
  health->SetServingStatus("liveness", true);
  const std::string cluster_addr =
      HostPort(f.cluster_listen.empty() ? f.listen : f.cluster_listen, cluster_port);
  spdlog::info(
      "Inference on {}, Cluster on {}; waiting for {} worker(s): tpserve-worker "
      "--coordinator {} --rank R",
      HostPort(f.listen, port), cluster_addr, f.tp, cluster_addr);
  std::unique_ptr<api::http::HttpServer> http;
  if (!f.http_listen.empty()) {
    http = std::make_unique<api::http::HttpServer>(
        **model,
        api::http::HttpServerOptions{.kv_block_size = f.kv_block_size,
                                     .context_length = context,
                                     .health =
                                         [&] {
                                           absl::MutexLock lock(&verdict_mu);
                                           return verdict;
                                         },
                                     .workers_up = [&registry] { return registry.registered(); },
                                     .tcp_user_timeout_ms = 1000 * f.keepalive_timeout_s});
    if (absl::Status st = http->Start(f.http_listen); !st.ok()) {
      spdlog::error("--http-listen: {}", std::string(st.message()));
      return 2;
    }
    spdlog::info("OpenAI HTTP API and /metrics on {}", HostPort(f.http_listen, http->port()));
  }
  group.Start();

  std::atomic<bool> stopping{false};
  std::unique_ptr<engine::Engine> engine;
  std::thread supervisor([&] {
    // First load: the scheduler's KV pool is the minimum over ranks.
    int64_t blocks = 0;
    while (!stopping.load()) {
      absl::StatusOr<int64_t> b = group.WaitReady(absl::Milliseconds(200));
      if (b.ok()) {
        blocks = *b;
        break;
      }
    }
    if (stopping.load()) return;
    engine::EngineConfig ec;
    ec.vocab_size = static_cast<int>(config.vocab_size);
    ec.scheduler.num_blocks = static_cast<int>(blocks);
    ec.scheduler.block_size = f.kv_block_size;
    ec.scheduler.max_num_batched_tokens = group.max_batch_tokens();
    ec.scheduler.max_num_seqs = f.max_seqs;
    ec.scheduler.max_waiting = f.max_waiting;
    ec.scheduler.max_model_len = context;
    ec.scheduler.enable_prefix_caching = !f.no_prefix_cache;
    ec.resume_window = absl::Seconds(f.resume_window_s);
    for (int64_t e : config.eos_token_ids) ec.scheduler.eos_token_ids.push_back(int32_t(e));
    if ((*model)->tokenizer) {
      for (int32_t e : (*model)->tokenizer->eos_ids()) {
        auto& ids = ec.scheduler.eos_token_ids;
        if (std::find(ids.begin(), ids.end(), e) == ids.end()) ids.push_back(e);
      }
    }
    absl::StatusOr<std::unique_ptr<engine::Engine>> e = engine::Engine::Create(
        ec, group, (*model)->tokenizer.get(), http ? http->observer() : nullptr);
    if (!e.ok()) {
      spdlog::error("engine: {}", e.status().ToString());
      return;
    }
    engine = std::move(*e);
    inference.set_engine(engine.get(), blocks, group.max_batch_tokens());
    if (http) http->set_engine(engine.get(), blocks);
    spdlog::info("serving {} with {} rank(s) on {}", (*model)->name, f.tp,
                 HostPort(f.listen, port));
    // Health tells the truth: SERVING only while every rank is loaded and steps make progress.
    bool last = false;
    engine::EngineStats logged = engine->stats();
    absl::Time next_report = absl::Now() + absl::Seconds(10);
    while (!stopping.load()) {
      if (absl::Now() >= next_report) {
        // Where a step's time goes, over the steps since the last report.
        const engine::EngineStats s = engine->stats();
        const double n = static_cast<double>(s.steps - logged.steps);
        if (n > 0) {
          const double wall = (s.step_us_sum - logged.step_us_sum) / n / 1000.0;
          const double worker = (s.worker_us_sum - logged.worker_us_sum) / n / 1000.0;
          spdlog::info(
              "{} steps, {} tokens generated: mean step {:.2f} ms = worker compute {:.2f} + "
              "collectives {:.2f} + control plane {:.2f} (plan fan-out, results)",
              s.steps - logged.steps, s.generated_tokens - logged.generated_tokens, wall,
              (s.compute_us_sum - logged.compute_us_sum) / n / 1000.0,
              (s.collective_us_sum - logged.collective_us_sum) / n / 1000.0, wall - worker);
        }
        logged = s;
        next_report = absl::Now() + absl::Seconds(10);
      }
      const engine::EngineStats st = engine->stats();
      const bool workers = group.ready() && group.kv_blocks() >= blocks;
      api::HealthVerdict v =
          api::DecideHealth({.engine_started = true,
                             .workers_ready = workers,
                             .workers_reason = workers ? "" : group.not_ready_reason(),
                             .busy = st.busy,
                             .last_progress = st.last_progress,
                             .now = absl::Now(),
                             .step_timeout = absl::Milliseconds(f.step_timeout_ms)});
      const bool now = v.serving;
      if (now != last) {
        set_health(now);
        if (now) {
          spdlog::info("health: SERVING");
        } else {
          spdlog::warn("health: NOT_SERVING ({})", v.reason);
        }
        last = now;
      }
      {
        absl::MutexLock lock(&verdict_mu);
        verdict = std::move(v);
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  });

  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("signal {}: shutting down", sig);
  stopping.store(true);
  set_health(false);
  supervisor.join();
  if (engine) {
    engine->Stop();  // ends open streams with UNAVAILABLE
    const engine::EngineStats s = engine->stats();
    if (s.steps > 0) {
      const double n = static_cast<double>(s.steps);
      spdlog::info(
          "total: {} steps, {} tokens generated, {} failed steps; mean step {:.2f} ms = "
          "worker compute {:.2f} + collectives {:.2f} + control plane {:.2f}",
          s.steps, s.generated_tokens, s.failed_steps, s.step_us_sum / n / 1000.0,
          s.compute_us_sum / n / 1000.0, s.collective_us_sum / n / 1000.0,
          (s.step_us_sum - s.worker_us_sum) / n / 1000.0);
    }
  }
  if (http) {
    http->Stop();
    http->set_engine(nullptr, 0);
  }
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  if (cluster_server) cluster_server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  inference.set_engine(nullptr, 0);
  engine.reset();
  return 0;
}

}  // namespace
}  // namespace tpserve

int main(int argc, char** argv) {
  tpserve::Flags f;
  CLI::App app{
      "tpserve-coordinator: serves a model from a group of tensor-parallel tpserve-worker "
      "processes. Hosts the Cluster service (workers register and rendezvous there) and the "
      "public tpserve.v1.Inference service with grpc.health.v1 and server reflection."};
  app.add_option("--model", f.model,
                 "a .gguf file or a Hugging Face model folder (workers must "
                 "see the same path)")
      ->required();
  app.add_option("--tp", f.tp, "tensor-parallel degree: number of worker ranks")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--listen", f.listen, "HOST:PORT of the public API (port 0 picks one)")
      ->capture_default_str();
  app.add_option("--cluster-listen", f.cluster_listen,
                 "HOST:PORT of the Cluster service for workers (default: same server as --listen)");
  app.add_option("--kv-block-size", f.kv_block_size, "tokens per KV cache block")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--max-batch-tokens", f.max_batch_tokens,
                 "most tokens fed in one step (prefill chunks + decodes). 0 (default): 512 when "
                 "any worker is a CPU (a step with prefill stays ~0.3 s, so running streams "
                 "never stall long behind a long prompt), 8192 when all are GPUs")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--max-seqs", f.max_seqs, "most sequences running in one step")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--memory-budget", f.memory_budget,
                 "bytes each rank may use for weights + KV cache (0: what each worker registered "
                 "with)")
      ->capture_default_str();
  app.add_option("--max-context", f.max_context,
                 "cap on prompt + output tokens (0: the model's context length)")
      ->capture_default_str();
  app.add_option("--max-waiting", f.max_waiting,
                 "requests allowed to wait; more get RESOURCE_EXHAUSTED")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--step-timeout-ms", f.step_timeout_ms,
                 "deadline of one step on all ranks; a rank past it fails the step")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--resume-window-s", f.resume_window_s,
                 "when a worker is lost mid-generation, how long the requests in flight wait for "
                 "the worker group to re-form (a restarted rank registering again) before they "
                 "fail; they then continue by recomputing prompt + output. 0: fail at once")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--collective-timeout-ms", f.collective_timeout_ms,
                 "deadline of the workers' rendezvous and of each collective")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--load-timeout-s", f.load_timeout_s, "deadline of LoadModel on every rank")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--keepalive-time-s", f.keepalive_time_s,
                 "how often the gRPC servers ping a connection with calls in progress")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--keepalive-timeout-s", f.keepalive_timeout_s,
                 "how long a ping may go unanswered before the connection is closed and its "
                 "streams' requests are aborted (a client that vanished without a reset); also "
                 "how long data sent on an HTTP connection may go unacknowledged")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--health-timeout-ms", f.health_timeout_ms,
                 "deadline of each health poll of a worker (every second, during steps too)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--health-misses", f.health_misses,
                 "health polls in a row a worker may leave unanswered before it counts as lost "
                 "(a frozen process or a cut link that keeps its connection open) and the step "
                 "waiting on it is cancelled")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--no-prefix-cache", f.no_prefix_cache, "disable KV prefix caching");
  app.add_option(
         "--http-listen", f.http_listen,
         "HOST:PORT of the OpenAI-compatible HTTP API and /metrics, e.g. 0.0.0.0:8000 (port 0 "
         "picks one; "
         "default: off)")
      ->capture_default_str();
  tpserve::AddLogFlags(app, f.log);
  CLI11_PARSE(app, argc, argv);
  if (absl::Status st = tpserve::ConfigureLogging(f.log, "coordinator"); !st.ok()) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 2;
  }
  return tpserve::Run(f);
}
