#include "coordinator/scheduler/sequence.h"

#include <algorithm>
#include <utility>

namespace tpserve::scheduler {

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "none";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kContextLength:
      return "context_length";
    case FinishReason::kStopToken:
      return "stop_token";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kStopString:
      return "stop_string";
    case FinishReason::kAborted:
      return "aborted";
  }
  return "unknown";
}

std::string_view SequenceStatusName(SequenceStatus status) {
  switch (status) {
    case SequenceStatus::kWaiting:
      return "waiting";
    case SequenceStatus::kRunning:
      return "running";
    case SequenceStatus::kPreempted:
      return "preempted";
    case SequenceStatus::kFinished:
      return "finished";
  }
  return "unknown";
}

Sequence::Sequence(SeqId id, std::vector<TokenId> prompt, StopConditions stop)
    : id_(id),
      tokens_(std::move(prompt)),
      prompt_len_(static_cast<int>(tokens_.size())),
      stop_(std::move(stop)) {}

FinishReason Sequence::AppendToken(TokenId token, int max_model_len,
                                   std::span<const TokenId> eos_token_ids) {
  tokens_.push_back(token);
  const auto contains = [token](auto&& ids) {
    return std::find(ids.begin(), ids.end(), token) != ids.end();
  };
  // Stop and EOS tokens win over length when both apply, as in the OpenAI API ("stop" beats
  // "length" on the last token), but never before min_tokens outputs.
  if (num_output() >= stop_.min_tokens) {
    if (contains(stop_.stop_token_ids)) return FinishReason::kStopToken;
    if (!stop_.ignore_eos && contains(eos_token_ids)) return FinishReason::kEos;
  }
  if (num_output() >= stop_.max_tokens) return FinishReason::kLength;
  if (num_tokens() >= max_model_len) return FinishReason::kContextLength;
  return FinishReason::kNone;
}

Sequence Sequence::Fork(SeqId child_id) const {
  Sequence child = *this;
  child.id_ = child_id;
  child.status_ = SequenceStatus::kWaiting;
  child.num_computed_ = 0;
  child.num_preemptions_ = 0;
  child.forks_left_ = 0;
  child.abort_reason_ = FinishReason::kNone;
  return child;
}

}  // namespace tpserve::scheduler
