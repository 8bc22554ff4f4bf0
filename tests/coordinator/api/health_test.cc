// The coordinator's health decision as a table: workers, then a stuck engine loop.
#include "coordinator/api/health.h"

#include "gtest/gtest.h"

namespace tpserve::api {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'000'000);

HealthInputs Healthy() {
  return {.engine_started = true,
          .workers_ready = true,
          .busy = false,
          .last_progress = kNow - absl::Milliseconds(50),
          .now = kNow,
          .step_timeout = absl::Seconds(60)};
}

TEST(HealthTest, Table) {
  struct Case {
    const char* name;
    HealthInputs in;
    bool serving;
    const char* reason_prefix;
  };
  HealthInputs not_started = Healthy();
  not_started.engine_started = false;
  HealthInputs rank_lost = Healthy();
  rank_lost.workers_ready = false;
  rank_lost.workers_reason = "rank 1 is gone";
  HealthInputs busy_recent = Healthy();
  busy_recent.busy = true;
  busy_recent.last_progress = kNow - absl::Seconds(59);
  HealthInputs stuck = Healthy();
  stuck.busy = true;
  stuck.last_progress = kNow - absl::Seconds(61);
  HealthInputs idle_long = Healthy();  // no work: an old last step is not a stuck loop
  idle_long.last_progress = kNow - absl::Hours(1);
  HealthInputs stuck_and_lost = stuck;
  stuck_and_lost.workers_ready = false;
  HealthInputs never_stepped = Healthy();
  never_stepped.busy = true;
  never_stepped.last_progress = absl::InfinitePast();
  const Case cases[] = {
      {"healthy", Healthy(), true, ""},
      {"not started", not_started, false, "the worker group is not loaded"},
      {"rank lost", rank_lost, false, "worker group: rank 1 is gone"},
      {"busy, last step 59 s ago", busy_recent, true, ""},
      {"busy, last step 61 s ago", stuck, false, "engine stuck: requests are pending"},
      {"idle for an hour", idle_long, true, ""},
      {"workers first", stuck_and_lost, false, "a worker rank is missing"},
      {"no progress time yet", never_stepped, true, ""},
  };
  for (const Case& c : cases) {
    const HealthVerdict v = DecideHealth(c.in);
    EXPECT_EQ(v.serving, c.serving) << c.name;
    EXPECT_EQ(v.reason.rfind(c.reason_prefix, 0), 0u) << c.name << ": " << v.reason;
    if (c.serving) EXPECT_TRUE(v.reason.empty()) << c.name;
  }
}

TEST(HealthTest, StuckReasonSaysForHowLongAndTheTimeout) {
  HealthInputs in = Healthy();
  in.busy = true;
  in.last_progress = kNow - absl::Seconds(75) - absl::Milliseconds(300);
  EXPECT_EQ(DecideHealth(in).reason,
            "engine stuck: requests are pending and no step completed for 1m15s (step timeout "
            "1m)");
  in.last_progress = kNow;  // a step completed: back to serving
  EXPECT_TRUE(DecideHealth(in).serving);
}

}  // namespace
}  // namespace tpserve::api
