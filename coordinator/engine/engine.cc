#include "coordinator/engine/engine.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/base/status_macros.h"
#include "coordinator/engine/engine_request.h"
#include "spdlog/spdlog.h"

namespace tpserve::engine {

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineConfig& config,
                                                       StepExecutor& executor,
                                                       const Tokenizer* tokenizer,
                                                       EngineObserver* observer) {
  if (config.vocab_size <= 0) return absl::InvalidArgumentError("engine: vocab_size must be > 0");
  ASSIGN_OR_RETURN(std::unique_ptr<scheduler::Scheduler> sched,
                   scheduler::Scheduler::Create(config.scheduler));
  std::unique_ptr<Engine> engine(
      new Engine(config, executor, tokenizer, observer, std::move(sched)));
  engine->thread_ = std::thread([e = engine.get()] { e->Loop(); });
  return engine;
}

Engine::Engine(const EngineConfig& config, StepExecutor& executor, const Tokenizer* tokenizer,
               EngineObserver* observer, std::unique_ptr<scheduler::Scheduler> scheduler)
    : config_(config),
      executor_(executor),
      tokenizer_(tokenizer),
      observer_(observer),
      scheduler_(std::move(scheduler)),
      max_seq_len_(scheduler_->max_seq_len()) {}

Engine::~Engine() { Stop(); }

absl::StatusOr<std::string> Engine::Submit(std::string request_id, RequestOptions o,
                                           RequestSink sink) {
  const int prompt_len = static_cast<int>(o.prompt.size());
  const int context = config_.scheduler.max_model_len;
  if (o.prompt.empty())
    return absl::InvalidArgumentError("prompt: empty (give at least one token)");
  for (size_t i = 0; i < o.prompt.size(); ++i) {
    if (o.prompt[i] < 0 || o.prompt[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt: token ", i, " is id ", o.prompt[i],
                                                     ", outside [0, ", config_.vocab_size, ")"));
    }
  }
  if (prompt_len >= context) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", prompt_len,
                                                   " tokens leave no room in the context length ",
                                                   context, " (shorten the prompt)"));
  }
  if (o.max_tokens < 0) o.max_tokens = context - prompt_len;  // unset: to the end of the context
  if (prompt_len + o.max_tokens > context) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.max_tokens: prompt (", prompt_len,
                                                   " tokens) + max_tokens (", o.max_tokens,
                                                   ") exceed the context length ", context));
  }
  if (prompt_len + std::min(o.max_tokens, 1) > max_seq_len_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("prompt: ", prompt_len, " tokens need more KV cache than the workers have (",
                     max_seq_len_, " tokens); shorten it or give the workers more memory"));
  }
  if (o.min_tokens < 0) return absl::InvalidArgumentError("stopping.min_tokens: must be >= 0");
  if (o.n < 1 || o.n > kMaxCompletions) {
    return absl::InvalidArgumentError(
        absl::StrCat("n: ", o.n, " completions; give 1 to ", kMaxCompletions));
  }
  // The n completions hold n places in the running set from admission (Scheduler::Fork) and
  // count n against the queue limit: more than a whole batch or queue could never run.
  if (o.n > config_.scheduler.max_num_seqs) {
    return absl::InvalidArgumentError(
        absl::StrCat("n: ", o.n, " completions exceed the server's batch of ",
                     config_.scheduler.max_num_seqs, " sequences (--max-seqs)"));
  }
  if (o.n > config_.scheduler.max_waiting) {
    return absl::InvalidArgumentError(
        absl::StrCat("n: ", o.n, " completions exceed the server's queue limit of ",
                     config_.scheduler.max_waiting, " sequences (--max-waiting)"));
  }
  for (TokenId t : o.stop_token_ids) {
    if (t < 0 || t >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("stopping.stop_token_ids: ", t,
                                                     " is outside [0, ", config_.vocab_size, ")"));
    }
  }
  if (!o.stop.empty() && tokenizer_ == nullptr) {
    return absl::FailedPreconditionError(
        "stopping.stop: stop strings need a tokenizer and this model has none");
  }
  if (!executor_.ready()) {
    return absl::UnavailableError(
        absl::StrCat("the worker group is not ready: ", executor_.not_ready_reason()));
  }

  auto r = std::make_unique<Request>();
  r->options = std::move(o);
  r->sink = std::move(sink);
  r->arrival = absl::Now();
  r->forked = r->options.n == 1;
  r->live = r->options.n;
  r->completions.resize(static_cast<size_t>(r->options.n));
  for (int i = 0; i < r->options.n; ++i) {
    Completion& c = r->completions[static_cast<size_t>(i)];
    c.index = i;
    c.stop = StopMatcher(r->options.stop, r->options.include_stop_in_output);
    if (tokenizer_ != nullptr) {
      c.detok =
          std::make_unique<IncrementalDetokenizer>(*tokenizer_, r->options.skip_special_tokens);
    }
  }
  absl::MutexLock lock(&mu_);
  if (stop_) return absl::UnavailableError("the server is shutting down");
  if (queued_ + r->options.n > config_.scheduler.max_waiting) {
    return absl::ResourceExhaustedError(
        absl::StrCat("queue full (", queued_, " sequences waiting, limit ",
                     config_.scheduler.max_waiting, "); retry later"));
  }
  r->seq = next_seq_;
  next_seq_ += r->options.n;
  if (request_id.empty()) request_id = absl::StrCat("req-", r->seq);
  if (live_ids_.contains(request_id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("request_id: '", request_id, "' is already running"));
  }
  r->id = request_id;
  live_ids_[request_id] = r->seq;
  queued_ += r->options.n;
  inbox_.push_back(std::move(r));
  return request_id;
}

absl::Status Engine::Abort(const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  if (!live_ids_.contains(request_id)) {
    return absl::NotFoundError(absl::StrCat("request_id: no running request '", request_id, "'"));
  }
  aborts_.push_back(request_id);
  return absl::OkStatus();
}

void Engine::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  TakeInbox();
  FailAll(absl::UnavailableError("the server is shutting down"));
}

EngineStats Engine::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void Engine::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (!scheduler_->HasUnfinished()) {
        mu_.AwaitWithTimeout(absl::Condition(this, &Engine::HasInput), config_.idle_wait);
      }
      if (stop_) return;
      // Idle counts as progress: a stuck loop is one with work and no completed step.
      stats_.busy = scheduler_->HasUnfinished() || !inbox_.empty();
      if (!stats_.busy) stats_.last_progress = absl::Now();
    }
    TakeInbox();
    if (!RunStep() && scheduler_->HasUnfinished()) {
      absl::SleepFor(absl::Milliseconds(1));  // nothing schedulable yet; do not spin
    }
  }
}

void Engine::TakeInbox() {
  std::deque<std::unique_ptr<Request>> incoming;
  std::deque<std::string> aborts;
  {
    absl::MutexLock lock(&mu_);
    incoming.swap(inbox_);
    aborts.swap(aborts_);
  }
  for (auto& r : incoming) {
    const scheduler::SeqId seq = r->seq;
    Request& req = *r;
    for (int i = 0; i < req.options.n; ++i) owners_[seq + i] = &req;
    requests_[seq] = std::move(r);
    if (req.options.max_tokens == 0) {  // prompt processing only: nothing to compute here
      Finish(req, req.completions[0], FinishReason::kLength, {});
      continue;
    }
    scheduler::SequenceSpec spec{.id = seq,
                                 .prompt = req.options.prompt,
                                 .stop = {.max_tokens = req.options.max_tokens,
                                          .min_tokens = req.options.min_tokens,
                                          .stop_token_ids = req.options.stop_token_ids,
                                          .ignore_eos = req.options.ignore_eos},
                                 .fan_out = req.options.n};
    absl::Status st = scheduler_->Add(std::move(spec));
    if (!st.ok()) Fail(req, st);
  }
  for (const std::string& id : aborts) {
    scheduler::SeqId seq = 0;
    {
      absl::MutexLock lock(&mu_);
      auto it = live_ids_.find(id);
      if (it == live_ids_.end()) continue;
      seq = it->second;
    }
    auto it = requests_.find(seq);
    if (it == requests_.end()) continue;
    // Completions not forked yet are not in the scheduler; they end with completion 0.
    for (const Completion& c : it->second->completions) {
      if (!c.ended) scheduler_->Abort(seq + c.index).IgnoreError();
    }
  }
  absl::MutexLock lock(&mu_);
  queued_ = QueuedLocked();
}

bool Engine::RunStep() {
  if (!scheduler_->HasUnfinished()) return false;
  const bool recovering = recovering_since_ != absl::InfinitePast();
  if (recovering && !executor_.ready()) {
    if (absl::Now() - recovering_since_ < config_.resume_window) {
      // Waiting for the group to re-form is not a stuck loop: health says NOT_SERVING through
      // the group, not "stuck" through the engine.
      {
        absl::MutexLock lock(&mu_);
        stats_.last_progress = absl::Now();
      }
      absl::SleepFor(absl::Milliseconds(10));
      return true;
    }
    spdlog::error("engine: the worker group did not re-form within {}; failing {} request(s)",
                  absl::FormatDuration(config_.resume_window), requests_.size());
    recovering_since_ = absl::InfinitePast();
    FailAll(absl::UnavailableError(absl::StrCat(
        "a worker failed during generation (", recovery_cause_.message(),
        ") and the worker group did not re-form within ",
        absl::FormatDuration(config_.resume_window), "; retry when the server reports SERVING")));
    RefreshQueueStats();
    return true;
  }
  if (!executor_.ready()) {
    FailAll(absl::UnavailableError(
        absl::StrCat("the worker group is not ready: ", executor_.not_ready_reason())));
  }
  absl::StatusOr<scheduler::SchedulerOutput> out = scheduler_->Schedule();
  if (!out.ok()) {
    spdlog::error("engine: scheduler: {}", out.status().ToString());
    FailAll(absl::InternalError(absl::StrCat("scheduler: ", out.status().message())));
    scheduler_->RecoverFromFailedStep();
    return true;
  }
  for (const scheduler::FinishedSequence& f : out->finished) {
    auto [r, c] = Owner(f.seq_id);
    if (c == nullptr) continue;  // already finished when its token was delivered
    Finish(*r, *c, FinishReason::kAborted, {});
  }
  for (scheduler::SeqId id : out->preempted) {
    if (auto [r, c] = Owner(id); c != nullptr) ++c->recomputations;
  }
  const absl::Time now = absl::Now();
  for (const scheduler::ScheduledSequence& s : out->scheduled) {
    Request& r = *owners_.at(s.seq_id);
    if (r.scheduled_at == absl::InfinitePast()) {
      r.scheduled_at = now;
      r.cached_tokens = scheduler_->Find(s.seq_id)->num_cached_tokens();
    }
  }
  ForkCompletions(*out);
  RefreshQueueStats();
  if (out->empty()) return !out->finished.empty();

  const StepPlan plan = BuildPlan(*out);
  const absl::Time start = absl::Now();
  absl::StatusOr<StepOutput> result = executor_.Execute(plan);
  const absl::Duration took = absl::Now() - start;
  if (!result.ok()) {
    spdlog::error("engine: step {} failed: {}", plan.step_id, result.status().ToString());
    {
      absl::MutexLock lock(&mu_);
      ++stats_.failed_steps;
      stats_.last_progress = absl::Now();
    }
    // The workers' KV is gone: the scheduler puts every running sequence back in the queue to
    // be recomputed from prompt + output. With a resume window the requests wait for the group
    // to re-form (the check at the top of RunStep); without one they end now.
    scheduler_->RecoverFromFailedStep();
    if (config_.resume_window > absl::ZeroDuration()) {
      if (recovering_since_ == absl::InfinitePast()) {
        recovering_since_ = absl::Now();
        recovery_cause_ = result.status();
        spdlog::warn(
            "engine: {} request(s) wait up to {} for the worker group to re-form, then resume by "
            "recompute",
            requests_.size(), absl::FormatDuration(config_.resume_window));
        absl::MutexLock lock(&mu_);
        ++stats_.recoveries;
      }
      RefreshQueueStats();
      // The group may not have noticed the loss yet: do not fail steps in a tight loop.
      absl::SleepFor(absl::Milliseconds(50));
      return true;
    }
    FailAll(absl::UnavailableError(
        absl::StrCat("a worker failed during generation (", result.status().message(),
                     "); the request was stopped, retry when the server reports SERVING")));
    RefreshQueueStats();
    return true;
  }
  scheduler::StepResult sampled;
  for (const SampledToken& t : result->tokens) sampled.tokens.push_back({t.seq_id, t.token});
  absl::StatusOr<scheduler::UpdateResult> update = scheduler_->Update(sampled);
  if (!update.ok()) {
    spdlog::error("engine: bad step result: {}", update.status().ToString());
    scheduler_->RecoverFromFailedStep();
    FailAll(absl::InternalError(absl::StrCat("bad step result: ", update.status().message())));
    return true;
  }
  if (recovering_since_ != absl::InfinitePast()) {
    spdlog::info("engine: resumed {} request(s) on the re-formed worker group after {}",
                 requests_.size(), absl::FormatDuration(absl::Now() - recovering_since_));
    recovering_since_ = absl::InfinitePast();
    absl::MutexLock lock(&mu_);
    ++stats_.resumed;
  }
  {
    absl::MutexLock lock(&mu_);
    ++stats_.steps;
    stats_.last_progress = absl::Now();
    stats_.generated_tokens += static_cast<int64_t>(result->tokens.size());
    stats_.prompt_tokens += out->num_prefill_tokens;
    stats_.last_step = result->timing;
    stats_.last_step.total_us = absl::ToInt64Microseconds(took);
    stats_.step_us_sum += absl::ToDoubleMicroseconds(took);
    stats_.worker_us_sum += static_cast<double>(result->timing.worker_total_us);
    stats_.compute_us_sum += static_cast<double>(result->timing.compute_us);
    stats_.collective_us_sum += static_cast<double>(result->timing.collective_us);
  }
  DeliverTokens(*result, *update);
  RefreshQueueStats();  // finished sequences left the running set in Update
  return true;
}

int Engine::QueuedLocked() const {
  int n = scheduler_->waiting_demand();
  for (const auto& r : inbox_) n += r->options.n;
  return n;
}

void Engine::RefreshQueueStats() {
  absl::MutexLock lock(&mu_);
  queued_ = QueuedLocked();
  stats_.running = scheduler_->num_running();
  stats_.waiting = scheduler_->num_waiting();
  stats_.blocks = scheduler_->block_manager().Usage();
  stats_.preemptions = scheduler_->counters().preemptions;
  stats_.prefix_hit_tokens = stats_.blocks.prefix_hit_tokens;
}

void Engine::ForkCompletions(const scheduler::SchedulerOutput& out) {
  for (const scheduler::ScheduledSequence& s : out.scheduled) {
    if (!s.sample || s.num_output_tokens != 0) continue;
    Request& r = *owners_.at(s.seq_id);
    if (r.forked || s.seq_id != r.seq) continue;
    r.forked = true;
    for (int i = 1; i < r.options.n; ++i) {
      absl::Status st =
          scheduler_->Fork(r.seq, r.seq + i, scheduler::Scheduler::ForkFirstToken::kOwnStep);
      if (!st.ok()) {  // a broken invariant, not an input error: end the request loudly
        spdlog::error("engine: fork of request {} completion {}: {}", r.id, i, st.ToString());
        for (int k = 0; k < r.options.n; ++k) scheduler_->Abort(r.seq + k).IgnoreError();
        Fail(r, absl::InternalError(absl::StrCat("n: forking completion ", i, ": ", st.message())));
        break;
      }
    }
  }
}

StepPlan Engine::BuildPlan(const scheduler::SchedulerOutput& out) {
  StepPlan plan;
  plan.step_id = next_step_id_++;
  plan.sequences.reserve(out.scheduled.size());
  for (const scheduler::ScheduledSequence& s : out.scheduled) {
    auto owner = owners_.find(s.seq_id);
    if (owner == owners_.end()) continue;  // failed in ForkCompletions: aborted, owes no token
    const Request& r = *owner->second;
    PlanSequence p{.seq_id = s.seq_id,
                   .tokens = s.tokens,
                   .start_position = s.start_position,
                   .block_table = s.block_table,
                   .sample = s.sample,
                   .sampling = r.options.sampling,
                   .step_index = s.num_output_tokens};
    p.sampling.seed += static_cast<uint64_t>(s.seq_id - r.seq);  // completion i: seed + i
    if (s.sample && s.num_output_tokens < r.options.min_tokens) {
      for (TokenId t : config_.scheduler.eos_token_ids) p.suppressed_token_ids.push_back(t);
      for (TokenId t : r.options.stop_token_ids) p.suppressed_token_ids.push_back(t);
    }
    if (s.sample && p.sampling.penalties_active()) {
      const auto tokens = scheduler_->Find(s.seq_id)->tokens();
      p.penalty_tokens.assign(tokens.begin(), tokens.end());
    }
    plan.sequences.push_back(std::move(p));
  }
  return plan;
}

}  // namespace tpserve::engine
