#include "coordinator/engine/stop_matcher.h"

#include <algorithm>

namespace tpserve::engine {

StopMatcher::Result StopMatcher::Push(std::string_view delta) {
  Result r;
  if (stopped_) return r;
  if (stops_.empty()) {
    r.text = std::string(delta);
    return r;
  }
  std::string buf = pending_ + std::string(delta);
  pending_.clear();
  // Earliest match wins; for two matches at one position, the longer string.
  size_t best = std::string::npos;
  const std::string* best_stop = nullptr;
  for (const std::string& s : stops_) {
    if (s.empty()) continue;
    const size_t p = buf.find(s);
    if (p == std::string::npos) continue;
    if (p < best || (p == best && s.size() > best_stop->size())) {
      best = p;
      best_stop = &s;
    }
  }
  if (best_stop != nullptr) {
    stopped_ = true;
    r.stopped = true;
    r.matched = *best_stop;
    r.text = buf.substr(0, include_stop_ ? best + best_stop->size() : best);
    return r;
  }
  // Any match still to come starts inside the longest suffix of `buf` that is a proper prefix of
  // a stop string (a match starting earlier would make a longer such suffix).
  size_t hold = 0;
  for (const std::string& s : stops_) {
    for (size_t len = std::min(s.size() - 1, buf.size()); len > hold; --len) {
      if (std::string_view(buf).substr(buf.size() - len) == std::string_view(s).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  r.text = buf.substr(0, buf.size() - hold);
  pending_ = buf.substr(buf.size() - hold);
  return r;
}

std::string StopMatcher::Flush() {
  if (stopped_) return "";
  std::string out = std::move(pending_);
  pending_.clear();
  return out;
}

}  // namespace tpserve::engine
