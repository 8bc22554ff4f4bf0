// Schedule() and its steps (see scheduler.h for the order and the reasons).
#include <algorithm>

#include "coordinator/scheduler/scheduler.h"

namespace tpserve::scheduler {

absl::StatusOr<SchedulerOutput> Scheduler::Schedule() {
  if (num_awaiting_ > 0) {
    return absl::FailedPreconditionError(
        "Schedule called before Update delivered the tokens of the previous step");
  }
  StepState step;
  step.budget = config_.max_num_batched_tokens;
  step.out.finished = std::move(pending_finished_);
  pending_finished_.clear();

  ReapAborted(step);
  ScheduleRunning(/*decodes=*/true, step);
  ScheduleRunning(/*decodes=*/false, step);
  // A step that had to preempt is short of blocks: admitting now would only preempt again.
  if (step.out.preempted.empty()) AdmitWaiting(step);
  Finalize(step);
  return std::move(step.out);
}

void Scheduler::ReapAborted(StepState& step) {
  std::vector<SeqId> gone;
  for (SeqId id : running_) {
    if (seqs_.at(id)->abort_requested()) gone.push_back(id);
  }
  for (SeqId id : waiting_) {
    if (seqs_.at(id)->abort_requested()) gone.push_back(id);
  }
  for (SeqId id : gone) {
    const FinishReason reason = seqs_.at(id)->abort_reason();
    Retire(id, reason);
    step.out.finished.push_back({id, reason});
    ++counters_.aborted;
  }
}

int Scheduler::ChunkSize(int uncomputed, int budget) const {
  if (config_.enable_chunked_prefill) {
    int n = std::min(uncomputed, budget);
    if (config_.max_prefill_chunk > 0) n = std::min(n, config_.max_prefill_chunk);
    return n;
  }
  if (uncomputed <= budget) return uncomputed;
  // Without chunked prefill a prompt waits for a step with room for all of it, unless it is
  // larger than any step (a long prompt, or prompt + outputs re-prefilled after a preemption):
  // then chunking is the only way it ever runs.
  if (uncomputed <= config_.max_num_batched_tokens) return 0;
  return budget;
}

void Scheduler::ScheduleRunning(bool decodes, StepState& step) {
  for (size_t i = 0; i < running_.size(); ++i) {
    Sequence& seq = *seqs_.at(running_[i]);
    const int uncomputed = seq.num_uncomputed();
    if ((uncomputed == 1) != decodes) continue;
    const int n = ChunkSize(uncomputed, step.budget);
    if (n <= 0) continue;
    if (!GrowOrPreempt(i, seq.num_computed() + n, step)) break;  // it preempted itself (the tail)
    step.out.scheduled.emplace_back().seq_id = seq.id();
    step.out.scheduled.back().tokens.resize(n);  // filled in Finalize
    step.budget -= n;
  }
}

bool Scheduler::GrowOrPreempt(size_t index, int num_tokens, StepState& step) {
  const SeqId id = running_[index];
  while (!blocks_.Grow(id, num_tokens)) {
    const bool self = running_.back() == id;
    PreemptNewest(step);
    if (self) return false;
  }
  return true;
}

void Scheduler::PreemptNewest(StepState& step) {
  const SeqId id = running_.back();
  running_.pop_back();
  auto& scheduled = step.out.scheduled;
  auto it = std::find_if(scheduled.begin(), scheduled.end(),
                         [id](const ScheduledSequence& s) { return s.seq_id == id; });
  if (it != scheduled.end()) {
    step.budget += static_cast<int>(it->tokens.size());
    scheduled.erase(it);
  }
  blocks_.Free(id);
  Sequence& seq = *seqs_.at(id);
  seq.set_num_computed(0);
  seq.set_status(SequenceStatus::kPreempted);
  seq.CountPreemption();
  waiting_.push_front(id);
  step.out.preempted.push_back(id);
  ++counters_.preemptions;
}

void Scheduler::AdmitWaiting(StepState& step) {
  // Places in the running set: each running sequence's and those its forks will take.
  int held = running_demand();
  while (!waiting_.empty() && step.budget > 0) {
    Sequence& seq = *seqs_.at(waiting_.front());
    if (held + 1 + seq.forks_left() > config_.max_num_seqs) break;
    const PrefixHit hit = blocks_.FindCachedPrefix(seq.tokens());
    const int cached = hit.num_tokens(blocks_.block_size());
    const int n = ChunkSize(seq.num_tokens() - cached, step.budget);
    // FCFS: the head of the queue is never overtaken, so it is not starved by shorter prompts.
    if (n <= 0) break;
    if (!blocks_.AllocateNew(seq.id(), hit, cached + n)) break;
    waiting_.pop_front();
    running_.push_back(seq.id());
    held += 1 + seq.forks_left();
    seq.set_status(SequenceStatus::kRunning);
    seq.set_num_computed(cached);
    seq.set_num_cached_tokens(cached);
    step.out.scheduled.emplace_back().seq_id = seq.id();
    step.out.scheduled.back().tokens.resize(n);
    step.budget -= n;
  }
}

void Scheduler::Finalize(StepState& step) {
  SchedulerOutput& out = step.out;
  last_scheduled_.clear();
  for (ScheduledSequence& s : out.scheduled) {
    Sequence& seq = *seqs_.at(s.seq_id);
    const int n = static_cast<int>(s.tokens.size());
    const bool decode = n == 1 && seq.num_uncomputed() == 1 && seq.num_output() > 0;
    const auto feed = seq.tokens().subspan(seq.num_computed(), n);
    s.tokens.assign(feed.begin(), feed.end());
    s.start_position = seq.num_computed();
    const auto table = blocks_.Table(s.seq_id);
    s.block_table.assign(table.begin(), table.end());
    seq.set_num_computed(seq.num_computed() + n);
    s.sample = seq.num_uncomputed() == 0;
    s.num_output_tokens = seq.num_output();
    if (s.sample) {
      seq.set_awaiting_token(true);
      ++num_awaiting_;
    }
    out.num_batched_tokens += n;
    if (!decode) {
      out.num_prefill_tokens += n;
      counters_.prompt_tokens_scheduled += n;
    } else {
      counters_.decode_tokens_scheduled += n;
    }
    last_scheduled_.push_back(s.seq_id);
  }
  out.blocks = blocks_.Usage();
  out.num_running = num_running();
  out.num_waiting = num_waiting();
  ++counters_.steps;
}

}  // namespace tpserve::scheduler
