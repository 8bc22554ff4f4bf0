#include "worker/service/proto_convert.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "proto/shard_plan_proto.h"

namespace tpserve {
namespace {

constexpr int64_t kDefaultBlockSize = 16;
constexpr absl::Duration kDefaultCommTimeout = absl::Seconds(30);

absl::StatusOr<SamplingParams> SamplingFromProto(const v1::StepSampling& p) {
  if (!std::isfinite(p.temperature()) || p.temperature() < 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be >= 0 (0 = greedy), got ", p.temperature()));
  }
  if (p.top_k() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", p.top_k()));
  }
  if (!(p.top_p() >= 0.0f && p.top_p() <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in [0, 1], got ", p.top_p()));
  }
  if (!(p.min_p() >= 0.0f && p.min_p() <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("min_p must be in [0, 1], got ", p.min_p()));
  }
  return SamplingParams{.temperature = p.temperature(),
                        .top_k = p.top_k(),
                        .top_p = p.top_p() > 0.0f ? p.top_p() : 1.0f,
                        .min_p = p.min_p(),
                        .seed = p.seed()};
}

LogitsAdjustments AdjustmentsFromProto(const v1::SequenceStep& s) {
  const v1::StepSampling& p = s.sampling();
  LogitsAdjustments a;
  a.repetition_penalty = p.repetition_penalty() != 0.0f ? p.repetition_penalty() : 1.0f;
  a.presence_penalty = p.presence_penalty();
  a.frequency_penalty = p.frequency_penalty();
  a.penalty_tokens.assign(s.penalty_tokens().begin(), s.penalty_tokens().end());
  for (const auto& [token, bias] : p.logit_bias()) a.logit_bias.emplace_back(token, bias);
  // proto maps have no order; sorted, every rank applies the same sequence of additions.
  std::sort(a.logit_bias.begin(), a.logit_bias.end());
  a.suppressed_token_ids.assign(p.suppressed_token_ids().begin(), p.suppressed_token_ids().end());
  return a;
}

}  // namespace

absl::StatusOr<LoadSpec> LoadSpecFromProto(const v1::LoadModelRequest& req) {
  LoadSpec spec;
  spec.model_path = req.model_path();
  spec.dtype = req.dtype();
  ASSIGN_OR_RETURN(spec.shard, RankShardFromProto(req.shard()));
  spec.generation = req.generation();
  switch (req.communicator().kind()) {
    case v1::CommunicatorConfig::KIND_UNSPECIFIED:
    case v1::CommunicatorConfig::KIND_LOCAL:
      spec.comm_kind = LoadSpec::CommKind::kLocal;
      break;
    case v1::CommunicatorConfig::KIND_GLOO:
      spec.comm_kind = LoadSpec::CommKind::kGloo;
      break;
    case v1::CommunicatorConfig::KIND_NCCL:
      spec.comm_kind = LoadSpec::CommKind::kNccl;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown communicator kind ", req.communicator().kind()));
  }
  spec.store_prefix = req.communicator().store_prefix();
  if (req.communicator().timeout_ms() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("communicator.timeout_ms must be >= 0, got ",
                                                   req.communicator().timeout_ms()));
  }
  spec.comm_timeout = req.communicator().timeout_ms() > 0
                          ? absl::Milliseconds(req.communicator().timeout_ms())
                          : kDefaultCommTimeout;
  spec.kv_block_size = req.kv_block_size() != 0 ? req.kv_block_size() : kDefaultBlockSize;
  spec.memory_budget_bytes = req.memory_budget_bytes();
  spec.max_batch_sequences = req.max_batch_sequences();
  spec.max_batch_tokens = req.max_batch_tokens();
  spec.max_context_length = req.max_context_length();
  return spec;
}

void LoadReportToProto(const LoadReport& r, v1::LoadModelResponse* resp) {
  resp->set_kv_blocks(r.kv_blocks);
  resp->set_weight_bytes(r.weight_bytes);
  resp->set_load_time_ms(r.load_time_ms);
  resp->set_architecture(r.architecture);
  resp->set_num_layers(static_cast<int32_t>(r.num_layers));
}

absl::StatusOr<PlanStep> PlanStepFromProto(const v1::StepPlan& plan) {
  PlanStep out;
  out.step_id = plan.step_id();
  out.generation = plan.generation();
  out.step.sequences.reserve(plan.sequences_size());
  out.sampling.reserve(plan.sequences_size());
  for (const v1::SequenceStep& s : plan.sequences()) {
    absl::StatusOr<SamplingParams> params = SamplingFromProto(s.sampling());
    if (!params.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s.sequence_id(), ": ", params.status().message()));
    }
    if (s.sampling().step_index() < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", s.sequence_id(), ": negative step_index ", s.sampling().step_index()));
    }
    out.step.sequences.push_back(StepSequence{
        .seq_id = static_cast<int64_t>(s.sequence_id()),
        .tokens = {s.tokens().begin(), s.tokens().end()},
        .start_pos = s.start_position(),
        .block_table = {s.block_table().begin(), s.block_table().end()},
        .sampling = *params,
        .sample_step = static_cast<uint64_t>(s.sampling().step_index()),
        .sample = s.sample(),
    });
    out.sampling.push_back(SequenceSampling{.sequence_id = s.sequence_id(),
                                            .adjustments = AdjustmentsFromProto(s),
                                            .logprobs = s.sampling().logprobs(),
                                            .top_logprobs = s.sampling().top_logprobs()});
  }
  return out;
}

void StepOutcomeToProto(const StepOutcome& out, v1::StepResult* result) {
  result->set_step_id(out.step_id);
  result->set_generation(out.generation);
  result->set_rank(out.rank);
  for (const SampledOut& t : out.tokens) {
    v1::SampledToken* p = result->add_tokens();
    p->set_sequence_id(t.sequence_id);
    p->set_token_id(t.token_id);
    if (t.has_logprobs) {
      p->set_logprob(t.logprobs.logprob);
      p->mutable_top_ids()->Add(t.logprobs.top_ids.begin(), t.logprobs.top_ids.end());
      p->mutable_top_logprobs()->Add(t.logprobs.top_logprobs.begin(),
                                     t.logprobs.top_logprobs.end());
    }
  }
  v1::StepTiming* timing = result->mutable_timing();
  timing->set_total_us(out.timing.total_us);
  timing->set_collective_us(out.timing.collective_us);
  timing->set_compute_us(out.timing.compute_us);
  timing->set_sampling_us(out.timing.sampling_us);
}

void HealthToProto(const HealthSnapshot& h, v1::WorkerHealthResponse* resp) {
  switch (h.state) {
    case WorkerState::kIdle:
      resp->set_state(v1::WorkerHealthResponse::STATE_IDLE);
      break;
    case WorkerState::kLoading:
      resp->set_state(v1::WorkerHealthResponse::STATE_LOADING);
      break;
    case WorkerState::kReady:
      resp->set_state(v1::WorkerHealthResponse::STATE_READY);
      break;
    case WorkerState::kDraining:
      resp->set_state(v1::WorkerHealthResponse::STATE_DRAINING);
      break;
    case WorkerState::kBroken:
      resp->set_state(v1::WorkerHealthResponse::STATE_BROKEN);
      break;
  }
  resp->set_rank(h.rank);
  resp->set_generation(h.generation);
  resp->set_steps(h.steps);
  resp->set_message(h.message);
}

}  // namespace tpserve
