// The output half of the engine loop: sampled tokens -> text deltas, stop strings, finish reasons
// and usage per completion -> the request's sink; request release and the observer's reports.
#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/engine/engine.h"
#include "coordinator/engine/engine_request.h"

namespace tpserve::engine {
namespace {

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

FinishReason Mapped(scheduler::FinishReason reason, bool short_of_max_tokens) {
  switch (reason) {
    case scheduler::FinishReason::kEos:
      return FinishReason::kEos;
    case scheduler::FinishReason::kStopToken:
      return FinishReason::kStop;
    case scheduler::FinishReason::kAborted:
      return FinishReason::kAborted;
    default:  // kLength covers max_tokens and the end of the context
      return short_of_max_tokens ? FinishReason::kContextLength : FinishReason::kLength;
  }
}

}  // namespace

std::pair<Engine::Request*, Engine::Completion*> Engine::Owner(scheduler::SeqId seq) {
  auto it = owners_.find(seq);
  if (it == owners_.end()) return {nullptr, nullptr};
  Completion& c = it->second->of(seq);
  if (c.ended) return {nullptr, nullptr};
  return {it->second, &c};
}

void Engine::DeliverTokens(const StepOutput& result, const scheduler::UpdateResult& update) {
  absl::flat_hash_map<scheduler::SeqId, scheduler::FinishReason> finished;
  for (const auto& f : update.finished) finished[f.seq_id] = f.reason;
  const absl::Time now = absl::Now();
  // Token times first, so that the observer has this step's gaps before any sink hears of an end
  // (a client that scrapes /metrics right after its last token sees every gap counted).
  gaps_.clear();
  for (const SampledToken& t : result.tokens) {
    auto [r, c] = Owner(t.seq_id);
    if (c == nullptr) continue;
    if (c->first_token == absl::InfinitePast()) {
      c->first_token = now;
    } else {
      gaps_.push_back(now - c->last_token);
    }
    c->last_token = now;
  }
  if (observer_ != nullptr && !gaps_.empty()) observer_->OnTokenGaps(gaps_);
  for (const SampledToken& t : result.tokens) {
    const auto fit = finished.find(t.seq_id);
    DeliverToken(t, fit == finished.end() ? scheduler::FinishReason::kNone : fit->second);
  }
}

void Engine::DeliverToken(const SampledToken& t, scheduler::FinishReason reason) {
  auto [rp, cp] = Owner(t.seq_id);
  if (cp == nullptr) return;  // aborted while the step ran
  Request& r = *rp;
  Completion& c = *cp;
  ++c.tokens;

  RequestOutput out;
  out.index = c.index;
  TokenOutput& tok = out.tokens.emplace_back();
  tok.id = t.token;
  tok.logprob = t.logprob;
  for (size_t i = 0; i < t.top_ids.size() && i < t.top_logprobs.size(); ++i) {
    tok.top_logprobs.emplace_back(t.top_ids[i], t.top_logprobs[i]);
  }
  if (tokenizer_ != nullptr) {
    const TokenId one[] = {t.token};
    tok.text = tokenizer_->Decode(one).value_or("");
    tok.special = tokenizer_->IsSpecial(t.token);
  }

  const bool end_token =
      reason == scheduler::FinishReason::kStopToken || reason == scheduler::FinishReason::kEos;
  StopMatcher::Result text;
  if (c.detok != nullptr && (!end_token || r.options.include_stop_in_output)) {
    text = c.stop.Push(c.detok->Push(t.token).value_or(""));
  }
  out.text = std::move(text.text);
  if (text.stopped) {
    out.stop_reason = text.matched;
    if (reason == scheduler::FinishReason::kNone) {
      scheduler_->Abort(t.seq_id, scheduler::FinishReason::kStopString).IgnoreError();
    }
    Finish(r, c, FinishReason::kStop, std::move(out));
    return;
  }
  if (reason == scheduler::FinishReason::kNone) {
    r.sink(std::move(out));
    return;
  }
  if (c.detok != nullptr) {
    StopMatcher::Result tail = c.stop.Push(c.detok->Flush());
    out.text += tail.text;
    if (tail.stopped) {
      out.stop_reason = tail.matched;
      Finish(r, c, FinishReason::kStop, std::move(out));
      return;
    }
    out.text += c.stop.Flush();
  }
  if (reason == scheduler::FinishReason::kStopToken) out.stop_reason = tok.text;
  const FinishReason mapped = Mapped(reason, c.tokens < r.options.max_tokens);
  Finish(r, c, mapped, std::move(out));
}

void Engine::Finish(Request& r, Completion& c, FinishReason reason, RequestOutput out) {
  // The scheduler let the sequence go already (Update, Abort): the gauges a client may scrape
  // right after its last token (running, waiting, KV usage) leave it out too.
  RefreshQueueStats();
  const absl::Time now = absl::Now();
  EndCompletion(r, c, reason, now, out);
  const bool alone = r.forked || r.live == 0;
  Emit(r, std::move(out));  // may release r when it was the last completion
  if (alone) return;
  // Not forked yet (aborted, or max_tokens 0, before the prompt's prefill ended): the other
  // completions never started and end with the first.
  for (Completion& other : r.completions) {
    if (other.ended) continue;
    RequestOutput o;
    EndCompletion(r, other, reason, now, o);
    const bool last = r.live == 0;
    Emit(r, std::move(o));
    if (last) return;
  }
}

void Engine::EndCompletion(Request& r, Completion& c, FinishReason reason, absl::Time now,
                           RequestOutput& out) {
  c.ended = true;
  c.reason = reason;
  --r.live;
  out.index = c.index;
  out.finish_reason = reason;
  Usage& u = out.usage;
  u.prompt_tokens = static_cast<int>(r.options.prompt.size());
  u.completion_tokens = c.tokens;
  u.cached_prompt_tokens = r.cached_tokens;
  if (c.first_token != absl::InfinitePast())
    u.time_to_first_token_ms = Ms(c.first_token - r.arrival);
  u.total_time_ms = Ms(now - r.arrival);
  u.queue_time_ms = Ms((r.scheduled_at == absl::InfinitePast() ? now : r.scheduled_at) - r.arrival);
  u.seed = r.options.sampling.seed + static_cast<uint64_t>(c.index);
  u.recomputations = c.recomputations;
}

void Engine::Emit(Request& r, RequestOutput out) {
  if (r.live > 0) {
    r.sink(std::move(out));
    return;
  }
  out.done = true;
  std::unique_ptr<Request> owned = Release(r, /*failed=*/false);
  if (owned != nullptr) owned->sink(std::move(out));
}

void Engine::Fail(Request& r, absl::Status error) {
  RequestOutput out;
  out.error = std::move(error);
  out.done = true;
  r.live = 0;
  std::unique_ptr<Request> owned = Release(r, /*failed=*/true);
  if (owned != nullptr) owned->sink(std::move(out));
}

// The request id is released before the final message is delivered: a client that has seen the
// end of its stream may reuse the id at once, and Abort on it answers NOT_FOUND.
std::unique_ptr<Engine::Request> Engine::Release(Request& r, bool failed) {
  auto it = requests_.find(r.seq);
  if (it == requests_.end()) return nullptr;
  std::unique_ptr<Request> owned = std::move(it->second);
  requests_.erase(it);
  for (int i = 0; i < owned->options.n; ++i) owners_.erase(owned->seq + i);
  {
    absl::MutexLock lock(&mu_);
    live_ids_.erase(owned->id);
    ++(failed ? stats_.requests_failed : stats_.requests_finished);
  }
  if (observer_ != nullptr) {
    const absl::Time now = absl::Now();
    RequestRecord rec;
    rec.num_completions = owned->options.n;
    rec.prompt_tokens = static_cast<int>(owned->options.prompt.size());
    rec.cached_prompt_tokens = owned->cached_tokens;
    absl::Time first = absl::InfiniteFuture();
    for (const Completion& c : owned->completions) {
      rec.completion_tokens += c.tokens;
      rec.recomputations += c.recomputations;
      if (c.first_token != absl::InfinitePast()) first = std::min(first, c.first_token);
    }
    if (first != absl::InfiniteFuture()) rec.time_to_first_token = first - owned->arrival;
    rec.e2e = now - owned->arrival;
    rec.queue =
        (owned->scheduled_at == absl::InfinitePast() ? now : owned->scheduled_at) - owned->arrival;
    rec.failed = failed;
    if (!failed) rec.finish_reason = owned->completions[0].reason;
    observer_->OnRequestEnd(rec);
  }
  return owned;
}

void Engine::FailAll(const absl::Status& error) {
  std::vector<scheduler::SeqId> ids;
  for (const auto& [id, r] : requests_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (scheduler::SeqId id : ids) {
    auto it = requests_.find(id);
    if (it == requests_.end()) continue;
    Request& r = *it->second;
    for (const Completion& c : r.completions) {
      if (!c.ended) scheduler_->Abort(id + c.index).IgnoreError();
    }
    Fail(r, error);
  }
}

}  // namespace tpserve::engine
