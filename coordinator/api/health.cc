#include "coordinator/api/health.h"

#include "absl/strings/str_cat.h"

namespace tpserve::api {

HealthVerdict DecideHealth(const HealthInputs& in) {
  if (!in.engine_started) return {false, "the worker group is not loaded yet"};
  if (!in.workers_ready) {
    return {false, in.workers_reason.empty() ? "a worker rank is missing or reloading"
                                             : absl::StrCat("worker group: ", in.workers_reason)};
  }
  if (in.busy && in.last_progress != absl::InfinitePast()) {
    const absl::Duration stalled = in.now - in.last_progress;
    if (stalled > in.step_timeout) {
      return {false, absl::StrCat("engine stuck: requests are pending and no step completed for ",
                                  absl::FormatDuration(absl::Trunc(stalled, absl::Seconds(1))),
                                  " (step timeout ", absl::FormatDuration(in.step_timeout), ")")};
    }
  }
  return {true, ""};
}

}  // namespace tpserve::api
