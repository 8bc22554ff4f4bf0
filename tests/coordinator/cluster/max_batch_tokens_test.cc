// DefaultMaxBatchTokens: the step token budget picked from the ranks' devices when
// --max-batch-tokens is left at 0.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "coordinator/cluster/worker_group.h"

namespace tpserve {
namespace {

TEST(DefaultMaxBatchTokens, FollowsTheSlowestDevice) {
  struct Case {
    std::vector<std::string> devices;
    int expected;
  };
  const std::vector<Case> cases = {
      {{}, 512},                                 // nobody registered: the CPU figure
      {{"cpu"}, 512},                            // a CPU worker keeps prefill steps ~0.3 s
      {{"cpu", "cpu", "cpu"}, 512},              //
      {{"cuda"}, 8192},                          // GPUs: thousands of tokens per step
      {{"cuda", "cuda", "cuda", "cuda"}, 8192},  //
      {{"cuda", "cpu"}, 512},                    // a CPU rank sets the pace of every step
      {{"cpu", "cuda"}, 512},                    //
      {{"cuda", "something-else"}, 512},         // unknown kinds are not assumed fast
  };
  for (const Case& c : cases) {
    std::string name;
    for (const std::string& d : c.devices) name += d + " ";
    EXPECT_EQ(DefaultMaxBatchTokens(c.devices), c.expected) << name;
  }
}

}  // namespace
}  // namespace tpserve
