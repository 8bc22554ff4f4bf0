// A generation request as the engine sees it (after the API validated and tokenized it), and what
// the engine streams back to its sink. Plain data; the API turns these into proto messages.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "coordinator/engine/step_executor.h"

namespace tpserve::engine {

enum class FinishReason {
  kNone,           // still running
  kLength,         // max_tokens generated
  kEos,            // a model EOS token
  kStop,           // a stop string or stop token id
  kContextLength,  // the context is full
  kAborted,        // Abort or the client went away
};

struct RequestOptions {
  std::vector<TokenId> prompt;  // non-empty
  StepSamplingOptions sampling;
  int max_tokens = 16;  // >= 0; prompt + max_tokens <= context length (checked by the engine)
  int min_tokens = 0;
  std::vector<std::string> stop;  // stop strings, matched on the detokenized output
  std::vector<TokenId> stop_token_ids;
  bool ignore_eos = false;
  bool include_stop_in_output = false;
  bool skip_special_tokens = true;
  // Completions of this prompt, in [1, kMaxCompletions]. They run as sequences of their own that
  // share the prompt's full KV blocks (forked when the prompt's prefill ends); completion i
  // samples with sampling.seed + i, so completion 0 is the same request with n = 1.
  int n = 1;
};

inline constexpr int kMaxCompletions = 16;

struct TokenOutput {
  TokenId id = 0;
  std::string text;  // the token's own text (empty without a tokenizer)
  float logprob = 0.0f;
  std::vector<std::pair<TokenId, float>> top_logprobs;
  bool special = false;
};

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_prompt_tokens = 0;
  double time_to_first_token_ms = 0;
  double total_time_ms = 0;
  double queue_time_ms = 0;
  uint64_t seed = 0;
  int recomputations = 0;
};

// Folds the usage of a completion's last output into the request's (`merged` completions already
// folded in): the prompt's figures once, completion tokens and recomputations summed, the
// earliest first token, the latest end, the request's seed (completion 0's).
inline void AddCompletionUsage(const Usage& c, int index, int merged, Usage& total) {
  if (merged == 0) {
    total = c;
    total.seed = c.seed - static_cast<uint64_t>(index);
    return;
  }
  total.completion_tokens += c.completion_tokens;
  total.recomputations += c.recomputations;
  if (c.completion_tokens > 0 && (total.time_to_first_token_ms == 0 ||
                                  c.time_to_first_token_ms < total.time_to_first_token_ms)) {
    total.time_to_first_token_ms = c.time_to_first_token_ms;
  }
  total.total_time_ms = std::max(total.total_time_ms, c.total_time_ms);
}

// One delivery to a request's sink: new tokens and text of one completion (`index`), and on that
// completion's last output its finish reason and usage; or an error, which ends the request.
struct RequestOutput {
  int index = 0;  // the completion, in [0, n)
  std::vector<TokenOutput> tokens;
  std::string text;
  FinishReason finish_reason = FinishReason::kNone;  // set on the completion's last output
  std::string stop_reason;                           // the matched stop string / stop token's text
  // On the completion's last output: the prompt's figures and this completion's own
  // completion_tokens, first-token time, recomputations and seed (sampling.seed + index).
  Usage usage;
  absl::Status error;  // non-OK: the request failed (UNAVAILABLE when a worker was lost)
  bool done = false;   // the request's last output: the sink is not called again
  bool last() const { return done; }
};

// The sink contract. Called on the engine thread, one call at a time, never while the engine
// holds a lock, and never after the output with done == true. Outputs of one completion arrive
// in order; completions interleave. Each completion ends with exactly one output that carries
// its finish_reason; the request's done output is the end of its last completion, or an output
// with an error (index 0; completions that had not ended get no end of their own). Aborting the
// request ends every completion (kAborted). The sink must not block: the API's reactors queue
// the message and return.
using RequestSink = std::function<void(RequestOutput)>;

}  // namespace tpserve::engine
