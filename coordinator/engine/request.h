// A generation request as the engine sees it (after the API validated and tokenized it), and what
// the engine streams back to its sink. Plain data; the API turns these into proto messages.
#pragma once

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
};

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

// One delivery to a request's sink: new tokens and text, and on the last one the finish reason
// and usage, or an error (the stream then ends with that status).
struct RequestOutput {
  std::vector<TokenOutput> tokens;
  std::string text;
  FinishReason finish_reason = FinishReason::kNone;
  std::string stop_reason;  // the matched stop string / stop token's text
  Usage usage;
  absl::Status error;  // non-OK: the request failed (UNAVAILABLE when a worker was lost)
  bool last() const { return finish_reason != FinishReason::kNone || !error.ok(); }
};

// Called on the engine thread, in order, never after the output with last() == true. Must not
// block (the API's reactors queue the message and return).
using RequestSink = std::function<void(RequestOutput)>;

}  // namespace tpserve::engine
