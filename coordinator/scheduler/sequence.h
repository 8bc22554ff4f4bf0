// One generation stream as the scheduler sees it: token ids, how many of them have KV in the cache,
// and when it stops. Plain data, no text: stop strings are matched by the engine (it owns the
// detokenizer) and reported back through Scheduler::Abort with FinishReason::kStopString.
//
// Why this lives in scheduler/ and not engine/: dependencies point engine → scheduler (DESIGN §8),
// and the scheduler needs the sequence state, so the engine's Request wraps these, not the reverse.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace tpserve::scheduler {

using SeqId = int64_t;
using TokenId = int32_t;
using BlockId = int32_t;

enum class SequenceStatus {
  kWaiting,    // queued, never run (or its KV was dropped by PreemptAll)
  kRunning,    // holds KV blocks; scheduled every step while the budget allows
  kPreempted,  // was running, blocks freed; waits at the front of the queue to re-prefill
  kFinished,
};

enum class FinishReason {
  kNone,
  kLength,         // max_tokens reached
  kContextLength,  // prompt + output filled the context length (or the whole KV pool)
  kStopToken,      // one of StopConditions::stop_token_ids was sampled
  kEos,            // an end-of-sequence token of the model was sampled (and ignore_eos is false)
  kStopString,     // the engine matched a stop string in the detokenized text
  kAborted,        // the client called Abort or went away
};

std::string_view FinishReasonName(FinishReason reason);
std::string_view SequenceStatusName(SequenceStatus status);

// When a sequence stops, checked after each sampled token. Tokens are counted in output tokens
// (prompt excluded).
struct StopConditions {
  int max_tokens = 16;                  // > 0
  int min_tokens = 0;                   // stop and EOS tokens do not end the sequence before this
  std::vector<TokenId> stop_token_ids;  // the stop token is kept in the output token ids
  bool ignore_eos = false;
};

// What the caller hands to Scheduler::Add.
struct SequenceSpec {
  SeqId id = 0;
  std::vector<TokenId> prompt;
  StopConditions stop;
  // Completions this sequence becomes (n): it is forked fan_out - 1 times after its prefill
  // (Scheduler::Fork), and holds that many places in the running set from admission on.
  int fan_out = 1;
};

class Sequence {
 public:
  Sequence(SeqId id, std::vector<TokenId> prompt, StopConditions stop);

  SeqId id() const { return id_; }
  SequenceStatus status() const { return status_; }
  FinishReason finish_reason() const { return finish_reason_; }
  const StopConditions& stop() const { return stop_; }

  // Prompt followed by every output token so far. After preemption all of them are re-prefilled.
  std::span<const TokenId> tokens() const { return tokens_; }
  std::span<const TokenId> prompt() const { return {tokens_.data(), size_t(prompt_len_)}; }
  std::span<const TokenId> output() const {
    return std::span<const TokenId>(tokens_).subspan(prompt_len_);
  }
  int num_tokens() const { return static_cast<int>(tokens_.size()); }
  int prompt_len() const { return prompt_len_; }
  int num_output() const { return num_tokens() - prompt_len_; }

  // Tokens whose KV is (or, once the current step runs, will be) in this sequence's blocks.
  int num_computed() const { return num_computed_; }
  int num_uncomputed() const { return num_tokens() - num_computed_; }
  // Prompt tokens served from the prefix cache at the latest admission (metrics only).
  int num_cached_tokens() const { return num_cached_tokens_; }
  int num_preemptions() const { return num_preemptions_; }
  // True between a step that samples this sequence and the Update that delivers the token.
  bool awaiting_token() const { return awaiting_token_; }
  bool abort_requested() const { return abort_reason_ != FinishReason::kNone; }
  // Forks still to come (fan_out - 1 at first; a fork's child has none).
  int forks_left() const { return forks_left_; }
  FinishReason abort_reason() const { return abort_reason_; }

  // Appends a sampled token and returns why the sequence stops now (kNone: it goes on).
  // `max_model_len` is the context length; `eos_token_ids` the model's end tokens.
  FinishReason AppendToken(TokenId token, int max_model_len,
                           std::span<const TokenId> eos_token_ids);

  // Mutators used by the scheduler only.
  void set_status(SequenceStatus status) { status_ = status; }
  void set_num_computed(int n) { num_computed_ = n; }
  void set_num_cached_tokens(int n) { num_cached_tokens_ = n; }
  void set_awaiting_token(bool v) { awaiting_token_ = v; }
  void set_finish_reason(FinishReason r) { finish_reason_ = r; }
  void RequestAbort(FinishReason r) { abort_reason_ = r; }
  void CountPreemption() { ++num_preemptions_; }
  void set_forks_left(int n) { forks_left_ = n; }

  // A copy with a new id for an n > 1 completion: same tokens and stop conditions, no blocks yet.
  Sequence Fork(SeqId child_id) const;

 private:
  SeqId id_;
  std::vector<TokenId> tokens_;
  int prompt_len_;
  StopConditions stop_;
  SequenceStatus status_ = SequenceStatus::kWaiting;
  FinishReason finish_reason_ = FinishReason::kNone;
  FinishReason abort_reason_ = FinishReason::kNone;
  int num_computed_ = 0;
  int num_cached_tokens_ = 0;
  int num_preemptions_ = 0;
  int forks_left_ = 0;
  bool awaiting_token_ = false;
};

}  // namespace tpserve::scheduler
