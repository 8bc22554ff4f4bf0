// Child processes for tests that start real binaries (workers, Gloo ranks): spawn with arguments,
// wait for the exit code with a deadline.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace tpserve::testing {

// posix_spawn of args[0] (a path) with args; the child's pid, or -1 (a test failure is recorded).
pid_t Spawn(const std::vector<std::string>& args);

// The exit code of `pid` (128 + signal when killed by one), or -1 if it is still running after
// `timeout` (it is then SIGKILLed and reaped).
int WaitExit(pid_t pid, absl::Duration timeout);

}  // namespace tpserve::testing
