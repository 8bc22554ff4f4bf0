// The engine's own state of one request and its completions (private to engine*.cc; the loop
// thread owns them).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/tokenizer/tokenizer.h"
#include "coordinator/engine/engine.h"
#include "coordinator/engine/stop_matcher.h"

namespace tpserve::engine {

struct Engine::Completion {
  int index = 0;
  std::unique_ptr<IncrementalDetokenizer> detok;  // null without a tokenizer
  StopMatcher stop;
  absl::Time first_token = absl::InfinitePast();
  absl::Time last_token = absl::InfinitePast();
  int tokens = 0;
  int recomputations = 0;
  bool ended = false;
  FinishReason reason = FinishReason::kNone;
};

struct Engine::Request {
  std::string id;
  scheduler::SeqId seq = 0;  // completion i runs as sequence seq + i
  RequestOptions options;
  RequestSink sink;
  absl::Time arrival;
  absl::Time scheduled_at = absl::InfinitePast();  // first admission
  int cached_tokens = 0;                           // prompt tokens from the prefix cache
  bool forked = false;  // completions 1..n-1 exist in the scheduler (or n == 1)
  int live = 0;         // completions not ended
  std::vector<Completion> completions;

  Completion& of(scheduler::SeqId s) { return completions[static_cast<size_t>(s - seq)]; }
};

}  // namespace tpserve::engine
