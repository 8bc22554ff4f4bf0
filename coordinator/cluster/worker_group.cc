#include "coordinator/cluster/worker_group.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "proto/shard_plan_proto.h"
#include "spdlog/spdlog.h"
#include "tpserve/v1/worker.grpc.pb.h"

namespace tpserve {
namespace {

// A channel with its own connection: gRPC otherwise shares one per address among all channels,
// and after a link comes back that connection can be dead, with the next calls waiting on TCP's
// retransmission backoff (tens of seconds) until a reset ends it (tests/deploy/multihost_test.sh).
std::shared_ptr<grpc::Channel> WorkerChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

std::chrono::system_clock::time_point Deadline(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

// One Health call with a deadline; with wait_for_ready it waits (within the deadline) for a
// connection instead of failing at once while there is none.
grpc::Status AskHealth(v1::Worker::Stub& stub, absl::Duration timeout,
                       v1::WorkerHealthResponse* resp, bool wait_for_ready = false) {
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(timeout));
  ctx.set_wait_for_ready(wait_for_ready);
  return stub.Health(&ctx, v1::WorkerHealthRequest(), resp);
}

std::string Describe(const grpc::Status& st) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  const int code = st.error_code();
  return absl::StrCat(code >= 0 && code <= 16 ? kNames[code] : "?", ": ", st.error_message());
}

v1::StepPlan ToProto(const engine::StepPlan& plan, int64_t generation, absl::Duration deadline) {
  v1::StepPlan p;
  p.set_step_id(plan.step_id);
  p.set_generation(generation);
  p.set_deadline_ms(absl::ToInt64Milliseconds(deadline));
  for (const engine::PlanSequence& s : plan.sequences) {
    v1::SequenceStep* q = p.add_sequences();
    q->set_sequence_id(static_cast<uint64_t>(s.seq_id));
    q->mutable_tokens()->Add(s.tokens.begin(), s.tokens.end());
    q->set_start_position(s.start_position);
    q->mutable_block_table()->Add(s.block_table.begin(), s.block_table.end());
    q->set_sample(s.sample);
    if (s.sample) {
      v1::StepSampling* m = q->mutable_sampling();
      m->set_temperature(s.sampling.temperature);
      m->set_top_k(s.sampling.top_k);
      m->set_top_p(s.sampling.top_p);
      m->set_min_p(s.sampling.min_p);
      m->set_repetition_penalty(s.sampling.repetition_penalty);
      m->set_presence_penalty(s.sampling.presence_penalty);
      m->set_frequency_penalty(s.sampling.frequency_penalty);
      m->set_seed(s.sampling.seed);
      m->set_step_index(s.step_index);
      m->set_logprobs(s.sampling.logprobs);
      m->set_top_logprobs(s.sampling.top_logprobs);
      for (const auto& [id, bias] : s.sampling.logit_bias) (*m->mutable_logit_bias())[id] = bias;
      m->mutable_suppressed_token_ids()->Add(s.suppressed_token_ids.begin(),
                                             s.suppressed_token_ids.end());
      q->mutable_penalty_tokens()->Add(s.penalty_tokens.begin(), s.penalty_tokens.end());
    }
  }
  return p;
}

}  // namespace

struct WorkerGroup::Impl {
  enum class State { kWaiting, kLoading, kReady, kFailed, kStopped };

  // One rank's connection of the current generation.
  struct Rank {
    WorkerInfo info;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::Worker::Stub> stub;
    std::unique_ptr<grpc::ClientContext> ctx;  // of the Execute stream
    std::unique_ptr<grpc::ClientReaderWriter<v1::StepPlan, v1::StepResult>> stream;
  };

  Impl(WorkerGroupOptions o, WorkerRegistry& r, InMemoryKvStore& s)
      : options(std::move(o)), registry(r), store(s) {}

  void Supervise();
  absl::Status Load();
  void CloseStreams() ABSL_EXCLUSIVE_LOCKS_REQUIRED(exec_mu);
  void MarkDeadRanks(const std::vector<WorkerInfo>& workers);
  absl::Status ProbeHealth();
  // Ends the step in flight, if any, with `why` (its streams are cancelled).
  void CancelStep(const std::string& why);
  void SetFailed(const std::string& reason);
  void Watchdog();

  const WorkerGroupOptions options;
  WorkerRegistry& registry;
  InMemoryKvStore& store;

  mutable absl::Mutex mu;
  State state ABSL_GUARDED_BY(mu) = State::kWaiting;
  std::string reason ABSL_GUARDED_BY(mu) = "waiting for workers to register";
  int64_t kv_blocks ABSL_GUARDED_BY(mu) = 0;
  int max_batch_tokens ABSL_GUARDED_BY(mu) = 0;  // decided at the first load
  int64_t generation ABSL_GUARDED_BY(mu) = 0;
  // The ready group's ranks for the health probes, which must not wait for exec_mu: a step
  // stuck on a silent rank holds it.
  std::vector<std::pair<int, std::shared_ptr<grpc::Channel>>> probe_channels ABSL_GUARDED_BY(mu);
  bool wake ABSL_GUARDED_BY(mu) = false;

  // Held by Execute for a whole step and by the supervisor while it swaps the streams.
  absl::Mutex exec_mu;
  std::vector<Rank> ranks ABSL_GUARDED_BY(exec_mu);

  // Step deadline: armed by Execute, enforced by the watchdog thread, which cancels the streams.
  absl::Mutex watch_mu;
  absl::Time step_deadline ABSL_GUARDED_BY(watch_mu) = absl::InfiniteFuture();
  std::vector<grpc::ClientContext*> contexts ABSL_GUARDED_BY(watch_mu);
  bool timed_out ABSL_GUARDED_BY(watch_mu) = false;
  // Why the supervisor cancelled the step in flight (a rank stopped answering health probes).
  std::string cancelled_because ABSL_GUARDED_BY(watch_mu);
  bool stop_watch ABSL_GUARDED_BY(watch_mu) = false;

  std::thread supervisor;
  std::thread watchdog;

  // The supervisor's own: health probes each rank missed in a row, for generation probe_gen.
  std::map<int, int> probe_misses;
  int64_t probe_gen = -1;
};

WorkerGroup::WorkerGroup(WorkerGroupOptions options, WorkerRegistry& registry,
                         InMemoryKvStore& store)
    : impl_(std::make_unique<Impl>(std::move(options), registry, store)) {}

WorkerGroup::~WorkerGroup() {
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->state = Impl::State::kStopped;
  }
  {
    absl::MutexLock lock(&impl_->watch_mu);
    impl_->stop_watch = true;
  }
  if (impl_->supervisor.joinable()) impl_->supervisor.join();
  if (impl_->watchdog.joinable()) impl_->watchdog.join();
  absl::MutexLock lock(&impl_->exec_mu);
  impl_->CloseStreams();
}

void WorkerGroup::Start() {
  impl_->supervisor = std::thread([this] { impl_->Supervise(); });
  impl_->watchdog = std::thread([this] { impl_->Watchdog(); });
}

void WorkerGroup::OnRegistered() {
  absl::MutexLock lock(&impl_->mu);
  impl_->wake = true;
}

absl::StatusOr<int64_t> WorkerGroup::WaitReady(absl::Duration timeout) {
  absl::MutexLock lock(&impl_->mu);
  auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(impl_->mu) {
    return impl_->state == Impl::State::kReady || impl_->state == Impl::State::kStopped;
  };
  if (!impl_->mu.AwaitWithTimeout(absl::Condition(&ready), timeout) ||
      impl_->state != Impl::State::kReady) {
    return absl::DeadlineExceededError(absl::StrCat(
        "worker group not ready after ", absl::FormatDuration(timeout), ": ", impl_->reason));
  }
  return impl_->kv_blocks;
}

bool WorkerGroup::ready() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->state == Impl::State::kReady;
}

std::string WorkerGroup::not_ready_reason() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->state == Impl::State::kReady ? "" : impl_->reason;
}

int64_t WorkerGroup::kv_blocks() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->kv_blocks;
}

int WorkerGroup::max_batch_tokens() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->max_batch_tokens;
}

int DefaultMaxBatchTokens(std::span<const std::string> device_kinds) {
  if (device_kinds.empty()) return 512;
  for (const std::string& d : device_kinds) {
    if (d != "cuda") return 512;
  }
  return 8192;
}

int64_t WorkerGroup::generation() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->generation;
}

int WorkerGroup::world_size() const { return impl_->registry.world_size(); }

void WorkerGroup::Impl::SetFailed(const std::string& why) {
  absl::MutexLock lock(&mu);
  if (state == State::kStopped) return;
  state = State::kFailed;
  reason = why;
}

void WorkerGroup::Impl::Supervise() {
  absl::Duration backoff = absl::Milliseconds(200);
  absl::Time next_probe = absl::Now() + options.health_interval;
  while (true) {
    State s;
    {
      absl::MutexLock lock(&mu);
      auto woken = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu) {
        return wake || state == State::kStopped || state == State::kFailed;
      };
      mu.AwaitWithTimeout(absl::Condition(&woken), absl::Milliseconds(100));
      wake = false;
      s = state;
    }
    if (s == State::kStopped) return;
    if (s == State::kReady) {
      // Health tells the truth between steps too: a rank killed while idle is noticed here.
      if (absl::Now() >= next_probe) {
        absl::Status st = ProbeHealth();
        if (!st.ok()) {
          spdlog::warn("health probe: {}", std::string(st.message()));
          SetFailed(std::string(st.message()));
          CancelStep(std::string(st.message()));
        }
        next_probe = absl::Now() + options.health_interval;
      }
      continue;
    }
    if (s == State::kFailed) {
      std::vector<WorkerInfo> workers;
      {
        absl::MutexLock lock(&exec_mu);
        for (const Rank& r : ranks) workers.push_back(r.info);
        CloseStreams();
      }
      MarkDeadRanks(workers);
      absl::MutexLock lock(&mu);
      if (state == State::kStopped) return;
      spdlog::warn("worker group degraded: {}", reason);
      state = State::kWaiting;
      continue;
    }
    // kWaiting: load once every rank is present.
    if (!registry.complete()) {
      absl::MutexLock lock(&mu);
      std::vector<int> missing = registry.missing_ranks();
      reason = absl::StrCat("waiting for worker rank(s) ", absl::StrJoin(missing, ", "), " (",
                            registry.registered(), "/", registry.world_size(), " registered)");
      continue;
    }
    absl::Status st = Load();
    if (st.ok()) {
      backoff = absl::Milliseconds(200);
      next_probe = absl::Now() + options.health_interval;
      continue;
    }
    spdlog::error("loading the worker group failed: {}", st.ToString());
    {
      absl::MutexLock lock(&mu);
      if (state == State::kStopped) return;
      state = State::kWaiting;
      reason = absl::StrCat("loading failed, retrying: ", st.message());
    }
    {
      absl::MutexLock lock(&exec_mu);
      CloseStreams();
    }
    MarkDeadRanks(registry.workers());
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
}

absl::Status WorkerGroup::Impl::Load() {
  const std::vector<WorkerInfo> workers = registry.workers();
  const int n = registry.world_size();
  if (static_cast<int>(workers.size()) != n || static_cast<int>(options.plan.ranks.size()) != n) {
    return absl::FailedPreconditionError(absl::StrCat("group of ", n, " ranks has ", workers.size(),
                                                      " workers and a plan for ",
                                                      options.plan.ranks.size()));
  }
  int64_t gen;
  int batch_tokens;
  {
    absl::MutexLock lock(&mu);
    if (state == State::kStopped) return absl::CancelledError("stopping");
    if (max_batch_tokens == 0) {
      std::vector<std::string> kinds;
      for (const WorkerInfo& w : workers) kinds.push_back(w.device_kind);
      max_batch_tokens =
          options.max_batch_tokens > 0 ? options.max_batch_tokens : DefaultMaxBatchTokens(kinds);
    }
    batch_tokens = max_batch_tokens;
    gen = ++generation;
    state = State::kLoading;
    reason = absl::StrCat("loading the model on ", n, " rank(s) (generation ", gen, ")");
  }
  // Old generations' rendezvous keys are dead weight.
  if (gen > 1) store.DeletePrefix(absl::StrCat("g", gen - 1, "/"));
  spdlog::info("loading {} on {} rank(s), generation {}, up to {} tokens per step{}",
               options.model_path, n, gen, batch_tokens,
               options.max_batch_tokens > 0 ? "" : " (the devices' default)");

  std::vector<Rank> fresh(n);
  for (int r = 0; r < n; ++r) {
    fresh[r].info = workers[r];
    fresh[r].channel = WorkerChannel(workers[r].control_address);
    fresh[r].stub = v1::Worker::NewStub(fresh[r].channel);
  }
  // Every rank answers before any is asked to load: the others would otherwise wait in the
  // rendezvous, for the collective timeout, for a rank that cannot join. A retry waits for the
  // connection (one refused while a restarted worker was still starting, for example).
  for (int r = 0; r < n; ++r) {
    v1::WorkerHealthResponse resp;
    grpc::Status st = AskHealth(*fresh[r].stub, options.health_timeout, &resp);
    for (int retry = 0; retry < 2 && !st.ok(); ++retry) {
      st = AskHealth(*fresh[r].stub, options.health_timeout, &resp, /*wait_for_ready=*/true);
    }
    if (!st.ok()) {
      return absl::UnavailableError(absl::StrCat("rank ", r, " (", workers[r].control_address,
                                                 ") does not answer: ", Describe(st)));
    }
  }
  std::vector<v1::LoadModelResponse> responses(n);
  std::vector<grpc::Status> statuses(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    v1::LoadModelRequest req;
    req.set_model_path(options.model_path);
    req.set_dtype(options.dtype);
    *req.mutable_shard() = RankShardToProto(options.plan.ranks[r]);
    req.set_generation(gen);
    v1::CommunicatorConfig* comm = req.mutable_communicator();
    comm->set_kind(n == 1 ? v1::CommunicatorConfig::KIND_LOCAL : v1::CommunicatorConfig::KIND_GLOO);
    comm->set_store_prefix(absl::StrCat("g", gen, "/gloo/"));
    comm->set_timeout_ms(absl::ToInt64Milliseconds(options.collective_timeout));
    req.set_kv_block_size(options.kv_block_size);
    req.set_memory_budget_bytes(options.memory_budget_bytes > 0 ? options.memory_budget_bytes
                                                                : workers[r].memory_budget_bytes);
    req.set_max_batch_sequences(options.max_batch_sequences);
    req.set_max_batch_tokens(batch_tokens);
    req.set_max_context_length(options.max_context_length);
    threads.emplace_back([&, r, req = std::move(req)] {
      grpc::ClientContext ctx;
      ctx.set_deadline(Deadline(options.load_timeout));
      statuses[r] = fresh[r].stub->LoadModel(&ctx, req, &responses[r]);
    });
  }
  for (std::thread& t : threads) t.join();

  std::vector<std::string> errors;
  int64_t blocks = -1;
  for (int r = 0; r < n; ++r) {
    if (!statuses[r].ok()) {
      errors.push_back(absl::StrCat("rank ", r, " (", workers[r].control_address,
                                    "): LoadModel: ", Describe(statuses[r])));
      continue;
    }
    const v1::LoadModelResponse& resp = responses[r];
    if ((!options.architecture.empty() && resp.architecture() != options.architecture) ||
        (options.num_layers > 0 && resp.num_layers() != options.num_layers)) {
      errors.push_back(absl::StrCat("rank ", r, " loaded ", resp.architecture(), " with ",
                                    resp.num_layers(), " layers; the coordinator reads ",
                                    options.architecture, " with ", options.num_layers));
    }
    if (resp.kv_blocks() <= 0) {
      errors.push_back(absl::StrCat("rank ", r, " has no room for the KV cache (kv_blocks ",
                                    resp.kv_blocks(), "); raise its memory budget"));
    }
    blocks = blocks < 0 ? resp.kv_blocks() : std::min(blocks, resp.kv_blocks());
    spdlog::info("rank {} loaded: {:.1f} MiB of weights, {} KV blocks, {:.0f} ms", r,
                 resp.weight_bytes() / 1048576.0, resp.kv_blocks(), resp.load_time_ms());
  }
  if (!errors.empty()) return absl::UnavailableError(absl::StrJoin(errors, "; "));

  // One Execute stream per rank for this generation.
  for (int r = 0; r < n; ++r) {
    fresh[r].ctx = std::make_unique<grpc::ClientContext>();
    fresh[r].stream = fresh[r].stub->Execute(fresh[r].ctx.get());
    if (fresh[r].stream == nullptr) {
      return absl::UnavailableError(absl::StrCat("rank ", r, ": cannot open the Execute stream"));
    }
  }
  std::vector<std::pair<int, std::shared_ptr<grpc::Channel>>> channels;
  for (const Rank& r : fresh) channels.emplace_back(r.info.rank, r.channel);
  {
    absl::MutexLock lock(&exec_mu);
    CloseStreams();
    ranks = std::move(fresh);
    absl::MutexLock wlock(&watch_mu);
    contexts.clear();
    for (Rank& r : ranks) contexts.push_back(r.ctx.get());
  }
  absl::MutexLock lock(&mu);
  if (state == State::kStopped) return absl::CancelledError("stopping");
  probe_channels = std::move(channels);
  kv_blocks = blocks;
  state = State::kReady;
  reason.clear();
  spdlog::info("worker group ready: {} rank(s), generation {}, {} KV blocks per rank", n, gen,
               blocks);
  return absl::OkStatus();
}

void WorkerGroup::Impl::CloseStreams() {
  {
    absl::MutexLock wlock(&watch_mu);
    contexts.clear();
  }
  for (Rank& r : ranks) {
    if (r.stream == nullptr) continue;
    r.ctx->TryCancel();
    r.stream->Finish().IgnoreError();
    r.stream.reset();
  }
  ranks.clear();
}

absl::Status WorkerGroup::Impl::ProbeHealth() {
  std::vector<std::pair<int, std::unique_ptr<v1::Worker::Stub>>> stubs;
  int64_t gen;
  {
    absl::MutexLock lock(&mu);
    gen = generation;
    for (const auto& [rank, channel] : probe_channels) {
      stubs.emplace_back(rank, v1::Worker::NewStub(channel));
    }
  }
  if (gen != probe_gen) {
    probe_misses.clear();
    probe_gen = gen;
  }
  for (auto& [rank, stub] : stubs) {
    v1::WorkerHealthResponse resp;
    const grpc::Status st = AskHealth(*stub, options.health_timeout, &resp);
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE) {
      return absl::UnavailableError(
          absl::StrCat("rank ", rank, " does not answer: ", Describe(st)));
    }
    // Connected but silent: a frozen process, or a link cut without a reset. One miss can be a
    // stall on a loaded host; health_misses in a row is a lost rank.
    int& misses = probe_misses[rank];
    misses = st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ? misses + 1 : 0;
    if (misses >= options.health_misses) {
      return absl::UnavailableError(
          absl::StrCat("rank ", rank, " answered none of the last ", misses, " health probes (",
                       absl::FormatDuration(options.health_timeout), " each)"));
    }
    if (st.ok() &&
        (resp.state() == v1::WorkerHealthResponse::STATE_BROKEN || resp.generation() != gen)) {
      return absl::UnavailableError(absl::StrCat("rank ", rank, " is broken: ", resp.message()));
    }
  }
  return absl::OkStatus();
}

void WorkerGroup::Impl::CancelStep(const std::string& why) {
  absl::MutexLock lock(&watch_mu);
  if (step_deadline == absl::InfiniteFuture()) return;  // no step in flight
  cancelled_because = why;
  for (grpc::ClientContext* ctx : contexts) ctx->TryCancel();
}

void WorkerGroup::Impl::MarkDeadRanks(const std::vector<WorkerInfo>& workers) {
  for (const WorkerInfo& w : workers) {
    auto channel = WorkerChannel(w.control_address);
    auto stub = v1::Worker::NewStub(channel);
    v1::WorkerHealthResponse resp;
    const grpc::Status st = AskHealth(*stub, options.health_timeout, &resp);
    if (st.ok()) continue;
    spdlog::warn("rank {} ({}) is lost: {}; waiting for it to register again", w.rank,
                 w.control_address, Describe(st));
    registry.MarkLost(w.rank).IgnoreError();
  }
}

void WorkerGroup::Impl::Watchdog() {
  absl::MutexLock lock(&watch_mu);
  while (!stop_watch) {
    auto due = [this]() ABSL_SHARED_LOCKS_REQUIRED(watch_mu) {
      return stop_watch || absl::Now() >= step_deadline;
    };
    watch_mu.AwaitWithTimeout(absl::Condition(&due), absl::Milliseconds(50));
    if (stop_watch) return;
    if (absl::Now() >= step_deadline) {
      timed_out = true;
      step_deadline = absl::InfiniteFuture();
      for (grpc::ClientContext* ctx : contexts) ctx->TryCancel();
    }
  }
}

absl::StatusOr<engine::StepOutput> WorkerGroup::Execute(const engine::StepPlan& plan) {
  Impl& g = *impl_;
  int64_t gen;
  {
    absl::MutexLock lock(&g.mu);
    if (g.state != Impl::State::kReady) {
      return absl::UnavailableError(absl::StrCat("worker group not ready: ", g.reason));
    }
    gen = g.generation;
  }
  absl::MutexLock lock(&g.exec_mu);
  // The supervisor may have torn the streams down (a failed health probe) since the check above.
  for (const Impl::Rank& r : g.ranks) {
    if (r.stream == nullptr) return absl::UnavailableError("worker group is re-forming");
  }
  if (g.ranks.empty()) return absl::UnavailableError("worker group is re-forming");
  {
    absl::MutexLock state_lock(&g.mu);
    if (g.state != Impl::State::kReady) {
      return absl::UnavailableError(absl::StrCat("worker group not ready: ", g.reason));
    }
    gen = g.generation;  // the streams held now belong to this generation
  }
  const absl::Time start = absl::Now();
  const v1::StepPlan proto = ToProto(plan, gen, g.options.step_timeout);
  {
    absl::MutexLock wlock(&g.watch_mu);
    g.timed_out = false;
    g.cancelled_because.clear();
    // A little grace over the workers' own deadline, so their clear error wins the race.
    g.step_deadline = start + g.options.step_timeout + absl::Seconds(2);
  }
  std::vector<std::string> errors;
  const int n = static_cast<int>(g.ranks.size());
  std::vector<bool> failed(n, false);
  for (int r = 0; r < n; ++r) {
    if (!g.ranks[r].stream->Write(proto)) failed[r] = true;
  }
  std::vector<v1::StepResult> results(n);
  std::vector<grpc::Status> ended(n);
  for (int r = 0; r < n; ++r) {
    if (failed[r] || !g.ranks[r].stream->Read(&results[r])) {
      failed[r] = true;
      // The stream ended: its own status says why, so read it before cancelling the others
      // (which usually fail right after, in their collectives).
      ended[r] = g.ranks[r].stream->Finish();
      g.ranks[r].stream.reset();
      for (Impl::Rank& other : g.ranks) {
        if (other.stream != nullptr) other.ctx->TryCancel();
      }
    }
  }
  bool timed_out;
  std::string cancelled_because;
  {
    absl::MutexLock wlock(&g.watch_mu);
    timed_out = g.timed_out;
    cancelled_because = std::move(g.cancelled_because);
    g.step_deadline = absl::InfiniteFuture();
  }
  if (!cancelled_because.empty()) errors.push_back(cancelled_because);
  for (int r = 0; r < n; ++r) {
    if (!failed[r]) {
      if (results[r].step_id() != plan.step_id || results[r].generation() != gen) {
        errors.push_back(absl::StrCat("rank ", r, " answered step ", results[r].step_id(),
                                      " of generation ", results[r].generation(), " to step ",
                                      plan.step_id, " of generation ", gen));
      }
      continue;
    }
    const grpc::Status& st = ended[r];
    if (timed_out && st.error_code() == grpc::StatusCode::CANCELLED) {
      errors.push_back(absl::StrCat("rank ", r, " (", g.ranks[r].info.control_address,
                                    ") sent no result within the step deadline of ",
                                    absl::FormatDuration(g.options.step_timeout)));
    } else if (st.error_code() != grpc::StatusCode::CANCELLED) {
      errors.push_back(
          absl::StrCat("rank ", r, " (", g.ranks[r].info.control_address, "): ", Describe(st)));
    }
  }
  if (std::find(failed.begin(), failed.end(), true) != failed.end() || !errors.empty()) {
    if (errors.empty()) errors.push_back("a worker stream was cancelled");
    const std::string why = absl::StrJoin(errors, "; ");
    g.SetFailed(absl::StrCat("step ", plan.step_id, " failed: ", why));
    if (timed_out) return absl::DeadlineExceededError(why);
    return absl::UnavailableError(why);
  }

  engine::StepOutput out;
  const v1::StepResult& r0 = results[0];
  out.tokens.reserve(r0.tokens_size());
  for (const v1::SampledToken& t : r0.tokens()) {
    engine::SampledToken s{.seq_id = static_cast<engine::SeqId>(t.sequence_id()),
                           .token = t.token_id(),
                           .logprob = t.logprob()};
    s.top_ids.assign(t.top_ids().begin(), t.top_ids().end());
    s.top_logprobs.assign(t.top_logprobs().begin(), t.top_logprobs().end());
    out.tokens.push_back(std::move(s));
  }
  size_t expected = 0;
  for (const engine::PlanSequence& s : plan.sequences) expected += s.sample ? 1 : 0;
  if (out.tokens.size() != expected) {
    const std::string why = absl::StrCat("rank 0 returned ", out.tokens.size(),
                                         " tokens for a step that samples ", expected);
    g.SetFailed(why);
    return absl::InternalError(why);
  }
  for (const v1::StepResult& r : results) {
    if (r.timing().total_us() >= out.timing.worker_total_us) {
      out.timing.worker_total_us = r.timing().total_us();
      out.timing.collective_us = r.timing().collective_us();
      out.timing.compute_us = r.timing().compute_us();
    }
    out.timing.sampling_us = std::max<int64_t>(out.timing.sampling_us, r.timing().sampling_us());
  }
  out.timing.total_us = absl::ToInt64Microseconds(absl::Now() - start);
  return out;
}

}  // namespace tpserve
