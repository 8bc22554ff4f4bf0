// Stop strings over a stream of text deltas. A stop string can span several tokens, so text that
// could still turn out to be the start of one is held back until the next delta decides; the
// matched string and whatever follows it never reach the client (unless include_stop is set).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tpserve::engine {

class StopMatcher {
 public:
  StopMatcher() = default;
  StopMatcher(std::vector<std::string> stops, bool include_stop)
      : stops_(std::move(stops)), include_stop_(include_stop) {}

  struct Result {
    std::string text;      // safe to send now
    bool stopped = false;  // a stop string matched: `text` ends the output
    std::string matched;   // which one
  };

  // Adds a delta of the output text. After a stop, further calls return nothing.
  Result Push(std::string_view delta);
  // End of the stream (no stop matched): the held-back text.
  std::string Flush();

 private:
  std::vector<std::string> stops_;
  bool include_stop_ = false;
  bool stopped_ = false;
  std::string pending_;  // held back: a suffix that is a proper prefix of some stop string
};

}  // namespace tpserve::engine
