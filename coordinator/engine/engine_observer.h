// What the engine reports about the traffic it serves, for metrics. Plain data and one small
// interface: the engine knows no Prometheus (coordinator/api/http/metrics implements it), and
// every request is reported whatever API it came through (gRPC, HTTP).
#pragma once

#include <span>

#include "absl/time/time.h"
#include "coordinator/engine/request.h"

namespace tpserve::engine {

// One request, reported once after its last output (all completions ended, or it failed).
struct RequestRecord {
  int num_completions = 1;
  int prompt_tokens = 0;
  int completion_tokens = 0;  // summed over the completions
  int cached_prompt_tokens = 0;
  // Arrival to the first token of any completion; absl::InfiniteDuration() if none came.
  absl::Duration time_to_first_token = absl::InfiniteDuration();
  absl::Duration e2e = absl::ZeroDuration();    // arrival to the last output
  absl::Duration queue = absl::ZeroDuration();  // arrival to its first step (or to the end)
  int recomputations = 0;                       // preemptions, summed over the completions
  // Completion 0's reason; kNone when the request failed (then `failed` is true).
  FinishReason finish_reason = FinishReason::kNone;
  bool failed = false;
};

// Called on the engine's loop thread with no engine lock held: implementations must be quick and
// must not block or call back into the engine.
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  // After each step that delivered tokens: for every token that was not its completion's first,
  // the time since that completion's previous token (inter-token latency).
  virtual void OnTokenGaps(std::span<const absl::Duration> gaps) = 0;
  virtual void OnRequestEnd(const RequestRecord& record) = 0;
};

}  // namespace tpserve::engine
