#include "coordinator/scheduler/scheduler.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"

namespace tpserve::scheduler {

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(const SchedulerConfig& config) {
  RETURN_IF_ERROR(config.Validate());
  return std::unique_ptr<Scheduler>(new Scheduler(config));
}

Scheduler::Scheduler(const SchedulerConfig& config)
    : config_(config),
      max_seq_len_(
          std::min<int64_t>(config.max_model_len, int64_t{config.num_blocks} * config.block_size)),
      blocks_(config.num_blocks, config.block_size, config.enable_prefix_caching) {}

absl::Status Scheduler::Add(SequenceSpec spec) {
  if (seqs_.contains(spec.id)) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", spec.id, " is already queued"));
  }
  if (spec.prompt.empty()) return absl::InvalidArgumentError("prompt: is empty");
  if (static_cast<int64_t>(spec.prompt.size()) > max_seq_len_) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt: has ", spec.prompt.size(), " tokens; at most ", max_seq_len_,
                     " fit (context length ", config_.max_model_len, ", KV cache ",
                     int64_t{config_.num_blocks} * config_.block_size, " tokens)"));
  }
  if (spec.stop.max_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens: must be > 0, got ", spec.stop.max_tokens));
  }
  if (spec.stop.min_tokens < 0 || spec.stop.min_tokens > spec.stop.max_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_tokens: must be in [0, max_tokens=", spec.stop.max_tokens, "], got ",
                     spec.stop.min_tokens));
  }
  if (spec.fan_out < 1 || spec.fan_out > std::min(config_.max_num_seqs, config_.max_waiting)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "n: ", spec.fan_out, " completions; give 1 to ",
        std::min(config_.max_num_seqs, config_.max_waiting), " (the batch and the queue limit)"));
  }
  if (waiting_demand() + spec.fan_out > config_.max_waiting) {
    return absl::ResourceExhaustedError(
        absl::StrCat(waiting_demand(), " sequences are waiting (forks included), the configured ",
                     "limit is ", config_.max_waiting, "; retry later"));
  }
  auto seq = std::make_unique<Sequence>(spec.id, std::move(spec.prompt), std::move(spec.stop));
  seq->set_forks_left(spec.fan_out - 1);
  waiting_.push_back(spec.id);
  seqs_.emplace(spec.id, std::move(seq));
  return absl::OkStatus();
}

absl::Status Scheduler::Fork(SeqId parent_id, SeqId child_id, ForkFirstToken first_token) {
  if (seqs_.contains(child_id)) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", child_id, " already exists"));
  }
  auto it = seqs_.find(parent_id);
  if (it == seqs_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", parent_id, " is not live"));
  }
  const Sequence& parent = *it->second;
  if (parent.status() != SequenceStatus::kRunning || !parent.awaiting_token() ||
      parent.abort_requested()) {
    return absl::FailedPreconditionError(
        absl::StrCat("sequence ", parent_id,
                     " can only be forked between the Schedule that samples it and the Update"));
  }
  // Share the blocks the parent has filled completely; the child recomputes the partial tail
  // block itself, so no block is ever written by two sequences.
  const bool own_step = first_token == ForkFirstToken::kOwnStep;
  int shared_blocks = parent.num_computed() / blocks_.block_size();
  if (own_step) {
    // Leave at least the last prompt token to recompute: its logits give the child's first token.
    shared_blocks = std::min(shared_blocks, (parent.num_tokens() - 1) / blocks_.block_size());
  }
  // The child takes one of the places the parent held since admission (none held: a caller
  // forking beyond its fan_out; the child then goes past max_num_seqs until others finish).
  if (parent.forks_left() > 0) it->second->set_forks_left(parent.forks_left() - 1);
  auto child = std::make_unique<Sequence>(parent.Fork(child_id));
  child->set_status(SequenceStatus::kRunning);
  child->set_num_computed(shared_blocks * blocks_.block_size());
  child->set_num_cached_tokens(parent.num_cached_tokens());
  child->set_awaiting_token(!own_step);
  blocks_.Fork(parent_id, child_id, shared_blocks);
  running_.push_back(child_id);
  seqs_.emplace(child_id, std::move(child));
  if (!own_step) ++num_awaiting_;
  return absl::OkStatus();
}

int Scheduler::waiting_demand() const {
  int n = 0;
  for (SeqId id : waiting_) n += 1 + seqs_.at(id)->forks_left();
  return n;
}

int Scheduler::running_demand() const {
  int n = 0;
  for (SeqId id : running_) n += 1 + seqs_.at(id)->forks_left();
  return n;
}

absl::Status Scheduler::Abort(SeqId id, FinishReason reason) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", id, " is not live (finished or unknown)"));
  }
  if (reason != FinishReason::kStopString) reason = FinishReason::kAborted;
  if (!it->second->abort_requested()) it->second->RequestAbort(reason);
  return absl::OkStatus();
}

absl::StatusOr<UpdateResult> Scheduler::Update(const StepResult& result) {
  // Validate everything first so that a bad result changes nothing.
  absl::flat_hash_set<SeqId> seen;
  for (const SampledToken& t : result.tokens) {
    auto it = seqs_.find(t.seq_id);
    if (it == seqs_.end() || !it->second->awaiting_token()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", t.seq_id, " was not sampled in the last step"));
    }
    if (!seen.insert(t.seq_id).second) {
      return absl::InvalidArgumentError(absl::StrCat("two tokens for sequence ", t.seq_id));
    }
  }
  for (const auto& [id, seq] : seqs_) {
    if (seq->awaiting_token() && !seq->abort_requested() && !seen.contains(id)) {
      return absl::InvalidArgumentError(absl::StrCat("no token for sequence ", id));
    }
  }

  // The step has written the KV of the scheduled tokens: their full blocks become shareable.
  for (SeqId id : last_scheduled_) {
    auto it = seqs_.find(id);
    if (it == seqs_.end() || !blocks_.Has(id)) continue;
    blocks_.Commit(id, it->second->tokens(), it->second->num_computed());
  }
  last_scheduled_.clear();

  UpdateResult update;
  for (const SampledToken& t : result.tokens) {
    Sequence& seq = *seqs_.at(t.seq_id);
    seq.set_awaiting_token(false);
    if (seq.abort_requested()) continue;  // dropped: the client is gone
    const FinishReason reason = seq.AppendToken(t.token, max_seq_len_, config_.eos_token_ids);
    if (reason == FinishReason::kNone) continue;
    Retire(t.seq_id, reason);
    update.finished.push_back({t.seq_id, reason});
    pending_finished_.push_back({t.seq_id, reason});
    ++counters_.finished;
  }
  for (auto& [id, seq] : seqs_) seq->set_awaiting_token(false);  // aborted ones owed nothing
  num_awaiting_ = 0;
  return update;
}

void Scheduler::RecoverFromFailedStep() {
  // Newest first to the front, so the queue keeps admission order.
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    Sequence& seq = *seqs_.at(*it);
    blocks_.Free(*it);
    seq.set_num_computed(0);
    seq.set_awaiting_token(false);
    seq.set_status(SequenceStatus::kWaiting);
    waiting_.push_front(*it);
  }
  running_.clear();
  for (SeqId id : waiting_) seqs_.at(id)->set_awaiting_token(false);
  last_scheduled_.clear();
  num_awaiting_ = 0;
  blocks_.ResetPrefixCache();
}

void Scheduler::Retire(SeqId id, FinishReason reason) {
  blocks_.Free(id);
  Sequence& seq = *seqs_.at(id);
  if (seq.status() == SequenceStatus::kRunning) {
    running_.erase(std::find(running_.begin(), running_.end(), id));
  } else {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), id));
  }
  seqs_.erase(id);
}

const Sequence* Scheduler::Find(SeqId id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : it->second.get();
}

QueueSnapshot Scheduler::Queues() const {
  QueueSnapshot q;
  q.running = running_;
  for (SeqId id : waiting_) {
    (seqs_.at(id)->status() == SequenceStatus::kPreempted ? q.preempted : q.waiting).push_back(id);
  }
  return q;
}

absl::Status Scheduler::CheckInvariants() const {
  RETURN_IF_ERROR(blocks_.CheckInvariants());
  if (running_.size() + waiting_.size() != seqs_.size()) {
    return absl::InternalError("a live sequence is in no queue, or in two");
  }
  const int bs = blocks_.block_size();
  for (SeqId id : running_) {
    const Sequence& seq = *seqs_.at(id);
    if (seq.status() != SequenceStatus::kRunning) {
      return absl::InternalError(absl::StrCat("sequence ", id, " in running queue is ",
                                              std::string(SequenceStatusName(seq.status()))));
    }
    const auto table = blocks_.Table(id);
    if (static_cast<int>(table.size()) < blocks_.BlocksForTokens(seq.num_computed())) {
      return absl::InternalError(absl::StrCat("sequence ", id, " has ", table.size(),
                                              " blocks for ", seq.num_computed(), " tokens"));
    }
    if (seq.num_computed() > seq.num_tokens() || seq.num_tokens() > max_seq_len_) {
      return absl::InternalError(absl::StrCat("sequence ", id, " token counts out of range"));
    }
    // Blocks it will write (from the first not fully computed one on) must be its alone.
    for (size_t b = seq.num_computed() / bs; b < table.size(); ++b) {
      if (blocks_.RefCount(table[b]) != 1) {
        return absl::InternalError(
            absl::StrCat("sequence ", id, " writes shared block ", table[b]));
      }
    }
  }
  for (SeqId id : waiting_) {
    const Sequence& seq = *seqs_.at(id);
    if (seq.status() != SequenceStatus::kWaiting && seq.status() != SequenceStatus::kPreempted) {
      return absl::InternalError(absl::StrCat("sequence ", id, " in waiting queue is ",
                                              std::string(SequenceStatusName(seq.status()))));
    }
    if (blocks_.Has(id) || seq.num_computed() != 0) {
      return absl::InternalError(absl::StrCat("waiting sequence ", id, " holds KV"));
    }
  }
  return absl::OkStatus();
}

absl::Status SchedulerConfig::Validate() const {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v > 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(name, ": must be > 0, got ", v));
  };
  RETURN_IF_ERROR(positive("num_blocks", num_blocks));
  RETURN_IF_ERROR(positive("block_size", block_size));
  RETURN_IF_ERROR(positive("max_num_batched_tokens", max_num_batched_tokens));
  RETURN_IF_ERROR(positive("max_num_seqs", max_num_seqs));
  RETURN_IF_ERROR(positive("max_waiting", max_waiting));
  RETURN_IF_ERROR(positive("max_model_len", max_model_len));
  if (max_prefill_chunk < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_prefill_chunk: must be >= 0 (0: no cap), got ", max_prefill_chunk));
  }
  if (max_num_batched_tokens < max_num_seqs) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_num_batched_tokens: ", max_num_batched_tokens, " is below max_num_seqs (",
                     max_num_seqs, "); every running sequence must be able to decode each step"));
  }
  return absl::OkStatus();
}

}  // namespace tpserve::scheduler
