#include "worker/service/worker_engine.h"

#include <algorithm>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "worker/parallel/gloo_communicator.h"
#include "worker/parallel/shm_communicator.h"
#include "worker/sampling/sampler.h"
#include "worker/service/memory_budget.h"

namespace tpserve {
namespace {

// A sequence's draw for Backend::SampleOnDevice: its sampling parameters and the adjustments the
// host path applies (ApplyAdjustments: penalties count each distinct token of penalty_tokens).
Backend::DeviceDraw DeviceDrawOf(const StepSequence& seq, const SequenceSampling& s) {
  Backend::DeviceDraw d{.temperature = seq.sampling.temperature,
                        .top_k = seq.sampling.top_k,
                        .top_p = seq.sampling.top_p,
                        .min_p = seq.sampling.min_p,
                        .seed = seq.sampling.seed,
                        .step = seq.sample_step};
  const LogitsAdjustments& a = s.adjustments;
  d.repetition_penalty = a.repetition_penalty;
  d.presence_penalty = a.presence_penalty;
  d.frequency_penalty = a.frequency_penalty;
  if (a.penalties_active()) {
    std::unordered_map<int32_t, int32_t> counts;
    for (int32_t t : a.penalty_tokens) ++counts[t];
    d.penalty_counts.assign(counts.begin(), counts.end());
  }
  d.logit_bias = a.logit_bias;
  d.suppressed = a.suppressed_token_ids;
  d.top_logprobs = s.logprobs || s.top_logprobs > 0 ? s.top_logprobs : -1;
  return d;
}

std::string RangeString(const Range& r) { return absl::StrCat("[", r.begin, ", ", r.end, ")"); }

std::string ShardString(const RankShard& s) {
  return absl::StrCat("rank ", s.rank, "/", s.world_size, " q_heads ", RangeString(s.q_heads),
                      " kv_heads ", RangeString(s.kv_heads), " ffn ", RangeString(s.ffn_columns),
                      " vocab ", RangeString(s.vocab));
}

int64_t MicrosBetween(absl::Time a, absl::Time b) { return absl::ToInt64Microseconds(b - a); }

// Without a budget from the coordinator or --memory-budget: half of the host's available memory,
// at most kDefaultHostBudgetBytes, shared by the group's ranks as if they all ran on this host
// (`tpserve up`), so that loading them one after another never starves the last.
//
// The cap is there because the CPU KV pool is zero-filled at load and freed at exit, and both
// scale with its size: half of a 23 GiB host (an 11 GiB pool for SmolLM2 at TP=1) took 83 s to
// load and 6 s to exit on the 2-vCPU test VM, past `tpserve up`'s 10 s stop limit. 2 GiB still
// holds ~40k tokens of SmolLM2 KV per rank group; larger pools are a --memory-budget away.
constexpr int64_t kDefaultHostBudgetBytes = int64_t{2} << 30;
int64_t DefaultBudget(int world_size) {
  return std::min(HostAvailableBytes() / 2, kDefaultHostBudgetBytes) / std::max(1, world_size);
}

}  // namespace

const char* WorkerStateName(WorkerState s) {
  switch (s) {
    case WorkerState::kIdle:
      return "IDLE";
    case WorkerState::kLoading:
      return "LOADING";
    case WorkerState::kReady:
      return "READY";
    case WorkerState::kDraining:
      return "DRAINING";
    case WorkerState::kBroken:
      return "BROKEN";
  }
  return "?";
}

// Destroyed in reverse order: the runner (KV cache) and model before the communicator they use,
// and the file mapping the weights point into last.
struct WorkerEngine::Loaded {
  LoadSpec spec;
  ModelFiles files;
  std::unique_ptr<TimedCommunicator> comm;
  std::unique_ptr<CausalLm> model;
  std::unique_ptr<ModelRunner> runner;
};

WorkerEngine::WorkerEngine(WorkerOptions options)
    : options_(std::move(options)),
      device_(options_.device ? options_.device : OpenCpuDevice(options_.threads)),
      backend_(device_->backend()) {}

WorkerEngine::~WorkerEngine() = default;

void WorkerEngine::SetState(WorkerState s, std::string message) {
  {
    absl::MutexLock lock(&mu_);
    state_ = s;
    message_ = std::move(message);
  }
  Publish();
}

void WorkerEngine::Publish() {
  if (!options_.on_state) return;
  // Under publish_mu_ and reading the state inside it: two racing publishers cannot leave the
  // listener with the older state.
  absl::MutexLock publish(&publish_mu_);
  WorkerState now;
  {
    absl::MutexLock lock(&mu_);
    now = state_;
  }
  options_.on_state(now);
}

HealthSnapshot WorkerEngine::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return HealthSnapshot{.state = state_,
                        .rank = options_.rank,
                        .generation = generation_,
                        .steps = steps_,
                        .message = message_};
}

void WorkerEngine::MarkBroken(const absl::Status& why) {
  {
    absl::MutexLock lock(&mu_);
    if (state_ != WorkerState::kReady) return;  // nothing loaded to break
    state_ = WorkerState::kBroken;
    message_ = absl::StrCat("generation ", generation_, " failed: ", why.ToString(),
                            "; waiting for LoadModel with a new generation");
  }
  Publish();
}

void WorkerEngine::MarkDraining() { SetState(WorkerState::kDraining, "Drain called"); }

void WorkerEngine::MarkStopping() { SetState(WorkerState::kDraining, "shutting down"); }

void WorkerEngine::Release() {
  loaded_.reset();
  absl::MutexLock lock(&mu_);
  generation_ = 0;
  steps_ = 0;
}

absl::StatusOr<std::unique_ptr<Communicator>> WorkerEngine::Connect(const LoadSpec& spec) {
  const int world = spec.shard.world_size;
  if (world > 1 && spec.comm_kind == LoadSpec::CommKind::kLocal) {
    return absl::InvalidArgumentError(absl::StrCat(
        "communicator KIND_LOCAL cannot connect a group of ", world, " ranks; use KIND_GLOO"));
  }
  ConnectRequest request;
  request.rank = options_.rank;
  request.world_size = world;
  request.nccl_requested = spec.comm_kind == LoadSpec::CommKind::kNccl;
  request.store_prefix = spec.store_prefix;
  request.timeout = spec.comm_timeout;
  request.make_store = options_.make_store;
  request.make_gloo = [&]() -> absl::StatusOr<std::unique_ptr<Communicator>> {
    if (!options_.make_store) {
      return absl::FailedPreconditionError(
          "this worker has no rendezvous store (start it with --coordinator)");
    }
    std::unique_ptr<KvStore> store = options_.make_store();
    GlooOptions gloo{.rank = options_.rank,
                     .world_size = world,
                     .hostname = options_.data_host,
                     .interface = options_.data_interface,
                     .store_prefix = spec.store_prefix,
                     .timeout = spec.comm_timeout};
    ASSIGN_OR_RETURN(std::unique_ptr<GlooCommunicator> comm,
                     GlooCommunicator::Create(*store, gloo));
    // Ranks on one host move their collectives through shared memory (Gloo stays for payloads
    // larger than a slot); elsewhere this is the Gloo communicator itself.
    return ShmCommunicator::Wrap(*store,
                                 ShmOptions{.rank = options_.rank,
                                            .world_size = world,
                                            .store_prefix = spec.store_prefix,
                                            .timeout = spec.comm_timeout},
                                 std::move(comm));
  };
  return device_->Connect(request);
}

absl::StatusOr<LoadReport> WorkerEngine::Load(const LoadSpec& spec) {
  const absl::Time start = absl::Now();
  if (spec.shard.rank != options_.rank) {
    return absl::InvalidArgumentError(absl::StrCat("LoadModel for rank ", spec.shard.rank,
                                                   " sent to the worker of rank ", options_.rank));
  }
  if (spec.generation <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("generation must be > 0, got ", spec.generation));
  }
  if (spec.model_path.empty()) return absl::InvalidArgumentError("model_path is empty");
  if (spec.kv_block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_block_size must be > 0, got ", spec.kv_block_size));
  }
  if (spec.memory_budget_bytes < 0 || spec.max_batch_sequences < 0 || spec.max_batch_tokens < 0 ||
      spec.max_context_length < 0) {
    return absl::InvalidArgumentError(
        "memory_budget_bytes, max_batch_sequences, max_batch_tokens and max_context_length must "
        "be >= 0");
  }
  RETURN_IF_ERROR(device_->CheckDtype(spec.dtype));
  {
    absl::MutexLock lock(&mu_);
    if (generation_ != 0 && spec.generation == generation_) {
      return absl::FailedPreconditionError(
          absl::StrCat("generation ", spec.generation,
                       " is the one already loaded; a reload needs a new generation"));
    }
  }
  loaded_.reset();
  {
    absl::MutexLock lock(&mu_);
    state_ = WorkerState::kLoading;
    generation_ = 0;
    steps_ = 0;
    message_ = absl::StrCat("loading ", spec.model_path, " for generation ", spec.generation);
  }
  Publish();
  absl::StatusOr<LoadReport> report = LoadLocked(spec);
  backend_.Arm(nullptr);
  if (!report.ok()) {
    loaded_.reset();
    SetState(WorkerState::kIdle, absl::StrCat("last LoadModel (generation ", spec.generation,
                                              ") failed: ", report.status().ToString()));
    return report.status();
  }
  report->load_time_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  {
    absl::MutexLock lock(&mu_);
    // A Drain or SIGTERM that came during the load wins: the model is loaded but not served.
    if (state_ == WorkerState::kLoading) {
      state_ = WorkerState::kReady;
      message_.clear();
    }
    generation_ = spec.generation;
  }
  Publish();
  return report;
}

absl::StatusOr<LoadReport> WorkerEngine::LoadLocked(const LoadSpec& spec) {
  auto loaded = std::make_unique<Loaded>();
  loaded->spec = spec;
  ASSIGN_OR_RETURN(loaded->files, OpenModelFiles(spec.model_path));
  const ModelConfig& config = loaded->files.config;
  // The coordinator sends only this rank's slice; the model also needs the others' vocab ranges
  // (to gather the LM head), so the plan is recomputed here and must agree.
  ASSIGN_OR_RETURN(const ShardPlan plan,
                   MakeShardPlan(ShardInputsOf(config, spec.shard.world_size)));
  if (plan.ranks[options_.rank] != spec.shard) {
    return absl::FailedPreconditionError(
        absl::StrCat(spec.model_path, ": the coordinator's shard (", ShardString(spec.shard),
                     ") differs from this model's plan for TP=", spec.shard.world_size, " (",
                     ShardString(plan.ranks[options_.rank]),
                     "); are coordinator and worker the same version and model?"));
  }
  const int64_t weight_bytes = ShardWeightBytes(*loaded->files.source, config, spec.shard);

  ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, Connect(spec));
  loaded->comm = std::make_unique<TimedCommunicator>(std::move(comm));
  LoadProgress::Report on_progress = options_.on_load_progress;
  if (!on_progress) on_progress = [](int64_t, int64_t) {};
  LoadProgress progress(weight_bytes, std::move(on_progress));
  const std::optional<int64_t> free_before = device_->FreeDeviceBytes();
  backend_.Arm(&progress);
  ASSIGN_OR_RETURN(loaded->model, LoadCausalLm(loaded->files, plan, backend_, *loaded->comm));
  backend_.Arm(nullptr);
  progress.Finish();
  const std::optional<int64_t> free_after = device_->FreeDeviceBytes();

  const int64_t block_size = spec.kv_block_size;
  const KvCacheConfig one_block{.num_layers = config.num_layers,
                                .num_blocks = 1,
                                .block_size = block_size,
                                .kv_heads = loaded->model->local_kv_heads(),
                                .head_dim = config.head_dim,
                                .dtype = backend_.kv_dtype()};
  KvSizing sizing{.weight_bytes = weight_bytes, .bytes_per_block = one_block.BytesPerBlock()};
  sizing.budget_bytes = spec.memory_budget_bytes > 0       ? spec.memory_budget_bytes
                        : options_.memory_budget_bytes > 0 ? options_.memory_budget_bytes
                                                           : DefaultBudget(spec.shard.world_size);
  // A GPU holds its weights dequantised (bf16 / fp32), so the file's bytes do not tell what they
  // take: count what the load took from the device. Without an explicit budget the KV pool
  // gets 90 % of what the device has free once the weights are on it.
  if (free_before && free_after) {
    sizing.weight_bytes = std::max<int64_t>(0, *free_before - *free_after);
    if (spec.memory_budget_bytes == 0 && options_.memory_budget_bytes == 0) {
      sizing.budget_bytes = *free_after / 10 * 9 + sizing.weight_bytes;
    }
  }
  sizing.activation_bytes = StepActivationBytes(
      config, spec.shard, spec.max_batch_tokens > 0 ? spec.max_batch_tokens : 512,
      spec.max_batch_sequences > 0 ? spec.max_batch_sequences : 256, backend_.activation_dtype(),
      options_.rank == 0 && backend_.samples_on_device() && !options_.host_sampling);
  // Recorded decode steps keep their activations and upload arenas, one per padded batch size.
  if (loaded->comm->records_in_graphs()) {
    const int64_t max_context =
        spec.max_context_length > 0 ? spec.max_context_length : config.max_position;
    sizing.activation_bytes +=
        RecordedStepBytes(config, spec.shard, backend_.max_recorded_rows(),
                          (std::max<int64_t>(max_context, 1) + block_size - 1) / block_size,
                          backend_.activation_dtype());
  }
  if (spec.max_batch_sequences > 0 && spec.max_context_length > 0) {
    sizing.max_useful_blocks =
        spec.max_batch_sequences * ((spec.max_context_length + block_size - 1) / block_size);
  }
  ASSIGN_OR_RETURN(const int64_t blocks, KvBlocksThatFit(sizing));
  ASSIGN_OR_RETURN(loaded->runner, ModelRunner::Create(*loaded->model, backend_, options_.rank == 0,
                                                       blocks, block_size));
  LoadReport report{.kv_blocks = blocks,
                    .weight_bytes = weight_bytes,
                    .architecture = config.architecture,
                    .num_layers = config.num_layers};
  loaded_ = std::move(loaded);
  return report;
}

absl::StatusOr<StepOutcome> WorkerEngine::Execute(PlanStep plan, absl::Time received) {
  {
    absl::MutexLock lock(&mu_);
    switch (state_) {
      case WorkerState::kReady:
        break;
      case WorkerState::kBroken:
        return absl::FailedPreconditionError(
            absl::StrCat("rank ", options_.rank, " is BROKEN: ", message_));
      case WorkerState::kDraining:
        return absl::UnavailableError(
            absl::StrCat("rank ", options_.rank, " is draining and accepts no plans"));
      case WorkerState::kIdle:
      case WorkerState::kLoading:
        return absl::FailedPreconditionError(
            absl::StrCat("rank ", options_.rank, " has no model loaded (state ",
                         WorkerStateName(state_), "); call LoadModel first"));
    }
    if (plan.generation != generation_) {
      return absl::FailedPreconditionError(
          absl::StrCat("plan ", plan.step_id, " belongs to generation ", plan.generation, ", rank ",
                       options_.rank, " runs generation ", generation_));
    }
  }
  absl::StatusOr<StepOutcome> out = Run(std::move(plan), received);
  if (!out.ok()) {
    MarkBroken(out.status());
    return out.status();
  }
  absl::MutexLock lock(&mu_);
  ++steps_;
  return out;
}

absl::StatusOr<StepOutcome> WorkerEngine::Run(PlanStep plan, absl::Time received) {
  Loaded& l = *loaded_;
  const int64_t V = l.model->config().vocab_size;
  const bool rank0 = options_.rank == 0;
  if (plan.sampling.size() != plan.step.sequences.size()) {
    return absl::InternalError("plan conversion: one SequenceSampling per sequence expected");
  }
  // Validated on every rank, so that all ranks refuse the same plan before any collective.
  for (size_t i = 0; i < plan.sampling.size(); ++i) {
    const SequenceSampling& s = plan.sampling[i];
    absl::Status st = ValidateAdjustments(s.adjustments, V);
    if (st.ok() && s.top_logprobs < 0) {
      st = absl::InvalidArgumentError(
          absl::StrCat("top_logprobs must be >= 0, got ", s.top_logprobs));
    }
    if (!st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s.sequence_id, ": ", st.message()));
    }
  }
  // Rank 0 samples here rather than in the runner: the runner knows no penalties, bias or
  // log-probs. Its logits come back without a copy (the model's host tensor on a CPU backend).
  std::vector<bool> sample(plan.step.sequences.size());
  // On a device that can sample, everything (adjustments, draw, log-probs) happens there and
  // only tokens and log-probs come back: the logits never come to the host.
  const bool on_device = rank0 && backend_.samples_on_device() && !options_.host_sampling;
  for (size_t i = 0; i < sample.size(); ++i) {
    sample[i] = plan.step.sequences[i].sample;
    plan.step.sequences[i].sample = false;
  }
  plan.step.keep_logits = rank0 && !on_device;
  plan.step.keep_device_logits = on_device;

  l.comm->TakeMicros();
  ASSIGN_OR_RETURN(StepResult result, l.runner->Execute(plan.step));
  const int64_t collective_us = l.comm->TakeMicros();
  const absl::Time computed = absl::Now();

  StepOutcome out;
  out.step_id = plan.step_id;
  out.generation = plan.generation;
  out.rank = options_.rank;
  if (on_device) {
    std::vector<int64_t> rows;
    std::vector<Backend::DeviceDraw> draws;
    for (size_t i = 0; i < sample.size(); ++i) {
      if (!sample[i]) continue;
      const StepSequence& seq = plan.step.sequences[i];
      const int64_t n = seq.all_logits ? static_cast<int64_t>(seq.tokens.size()) : 1;
      rows.push_back(result.logits_row[i] + n - 1);
      draws.push_back(DeviceDrawOf(seq, plan.sampling[i]));
    }
    ASSIGN_OR_RETURN(std::vector<Backend::DeviceDrawn> drawn,
                     backend_.SampleOnDevice(result.logits_device, rows, draws));
    out.tokens.resize(drawn.size());
    for (size_t k = 0, i = 0; i < sample.size(); ++i) {
      if (!sample[i]) continue;
      const SequenceSampling& s = plan.sampling[i];
      SampledOut& token = out.tokens[k];
      token.sequence_id = s.sequence_id;
      token.token_id = drawn[k].token;
      if (s.logprobs || s.top_logprobs > 0) {
        token.has_logprobs = true;
        token.logprobs.logprob = drawn[k].logprob;
        token.logprobs.top_ids = std::move(drawn[k].top_ids);
        token.logprobs.top_logprobs = std::move(drawn[k].top_logprobs);
      }
      ++k;
    }
  } else if (rank0) {
    std::vector<size_t> sampled;
    for (size_t i = 0; i < sample.size(); ++i) {
      if (sample[i]) sampled.push_back(i);
    }
    // Each draw reads and adjusts only its own logits row: they run side by side on the host
    // threads (a draw over 49k logits is tens of microseconds; 32 of them in a row would be a
    // visible part of the step).
    out.tokens.resize(sampled.size());
    backend_.ForEachOnHost(static_cast<int64_t>(sampled.size()), [&](int64_t k) {
      const size_t i = sampled[k];
      const StepSequence& seq = plan.step.sequences[i];
      const SequenceSampling& s = plan.sampling[i];
      const int64_t rows = seq.all_logits ? static_cast<int64_t>(seq.tokens.size()) : 1;
      const int64_t last = result.logits_row[i] + rows - 1;
      std::span<float> row(result.logits_host.row(last), V);
      if (s.adjustments.active()) ApplyAdjustments(s.adjustments, row);
      SampledOut& token = out.tokens[k];
      token.sequence_id = s.sequence_id;
      token.token_id = SampleToken(row, seq.sampling, seq.sample_step);
      if (s.logprobs || s.top_logprobs > 0) {
        token.has_logprobs = true;
        token.logprobs = ComputeLogprobs(row, token.token_id, s.top_logprobs);
      }
    });
  }
  const absl::Time done = absl::Now();
  out.timing.total_us = MicrosBetween(received, done);
  out.timing.collective_us = collective_us;
  out.timing.sampling_us = MicrosBetween(computed, done);
  out.timing.compute_us =
      std::max<int64_t>(0, out.timing.total_us - collective_us - out.timing.sampling_us);
  return out;
}

}  // namespace tpserve
