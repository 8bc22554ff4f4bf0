// GlooCommunicator across real processes: this test hosts the coordinator's Cluster service
// (the rendezvous store over gRPC) and starts each rank as a child process (gloo_rank_child.cc).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/cluster/cluster_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/child_process.h"

namespace tpserve {
namespace {

using ::testing::HasSubstr;

constexpr int kExitStatusError = 3;

std::string UniquePrefix() {
  static std::atomic<int> n{0};
  return absl::StrCat("proc", getpid(), "-", n++, "/");
}

using ::tpserve::testing::Spawn;
using ::tpserve::testing::WaitExit;

class GlooProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<ClusterServer>> server =
        ClusterServer::Start("127.0.0.1:0", registry_, store_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }

  std::vector<pid_t> StartRanks(int world, const std::string& prefix, int timeout_ms,
                                const std::string& mode, bool shm = false) {
    std::vector<pid_t> pids;
    for (int r = 0; r < world; ++r) {
      std::vector<std::string> args = {GLOO_RANK_CHILD,
                                       server_->address(),
                                       std::to_string(r),
                                       std::to_string(world),
                                       prefix,
                                       std::to_string(timeout_ms),
                                       mode};
      if (shm) args.push_back("shm");
      pids.push_back(Spawn(args));
    }
    return pids;
  }

  WorkerRegistry registry_{1, "", ""};  // unused by these tests; the service needs one
  InMemoryKvStore store_;
  std::unique_ptr<ClusterServer> server_;
};

class CollectivesTest : public GlooProcessTest, public ::testing::WithParamInterface<bool> {};

// Over Gloo alone, and wrapped in shared memory (what workers on one host use).
TEST_P(CollectivesTest, CollectivesAcrossTwoAndThreeProcesses) {
  constexpr int kRendezvousFailed = 4;
  for (int world : {2, 3}) {
    SCOPED_TRACE(absl::StrCat(world, " processes"));
    // A group whose rendezvous failed is formed again under a new prefix, as the coordinator
    // does (see RunRanks in gloo_communicator_test.cc for the rare Gloo connect failure).
    for (int attempt = 1; attempt <= 3; ++attempt) {
      std::vector<pid_t> pids =
          StartRanks(world, UniquePrefix(), 20000, "collectives", /*shm=*/GetParam());
      std::vector<int> codes;
      for (pid_t pid : pids) codes.push_back(WaitExit(pid, absl::Seconds(60)));
      if (attempt < 3 && std::count(codes.begin(), codes.end(), kRendezvousFailed) > 0) continue;
      for (int r = 0; r < world; ++r) EXPECT_EQ(codes[r], 0) << "rank " << r;
      break;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Transport, CollectivesTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "shm" : "gloo"; });

// `stop_signal` on the last rank while all ranks all-reduce in a loop: the survivors' collective
// must fail (not hang) within the timeout, with a status that names the op.
void ExpectSurvivorsFail(InMemoryKvStore& store, const std::vector<pid_t>& pids,
                         const std::string& prefix, int stop_signal, absl::Duration timeout,
                         const std::vector<absl::StatusCode>& codes) {
  const int world = static_cast<int>(pids.size());
  std::vector<std::string> ready;
  for (int r = 0; r < world; ++r) ready.push_back(absl::StrCat(prefix, "ready/", r));
  ASSERT_TRUE(store.Wait(ready, absl::Seconds(30)).ok());
  absl::SleepFor(absl::Milliseconds(100));  // let a few all-reduces run
  const pid_t victim = pids[world - 1];
  ASSERT_EQ(kill(victim, stop_signal), 0);
  const absl::Time stopped = absl::Now();
  for (int r = 0; r < world - 1; ++r) {
    SCOPED_TRACE(absl::StrCat("survivor rank ", r));
    EXPECT_EQ(WaitExit(pids[r], timeout + absl::Seconds(10)), kExitStatusError);
    EXPECT_LT(absl::Now() - stopped, timeout + absl::Seconds(10));
    absl::StatusOr<std::string> result =
        store.Get(absl::StrCat(prefix, "result/", r), absl::Seconds(1));
    ASSERT_TRUE(result.ok()) << result.status();
    // "<ms since the last successful all-reduce> <status>"
    const size_t space = result->find(' ');
    int64_t ms = 0;
    ASSERT_TRUE(absl::SimpleAtoi(result->substr(0, space), &ms)) << *result;
    EXPECT_LE(absl::Milliseconds(ms), timeout + absl::Seconds(3)) << *result;
    EXPECT_THAT(*result, HasSubstr("AllReduceSum"));
    EXPECT_THAT(*result, HasSubstr(absl::StrCat("rank ", r, " of ", world)));
    bool code_ok = false;
    for (absl::StatusCode c : codes) {
      code_ok = code_ok || absl::StrContains(*result, absl::StatusCodeToString(c));
    }
    EXPECT_TRUE(code_ok) << *result;
  }
  kill(victim, SIGKILL);
  WaitExit(victim, absl::Seconds(10));
}

TEST_F(GlooProcessTest, KilledPeerMakesSurvivorsFailWithinTheTimeout) {
  const std::string prefix = UniquePrefix();
  std::vector<pid_t> pids = StartRanks(3, prefix, 3000, "hold");
  // A killed process's sockets close at once: a survivor reading from it fails with
  // UNAVAILABLE at once; one whose send waits for a peer's receive may only see its deadline
  // (Gloo does not fail pending sends when a pair closes).
  ExpectSurvivorsFail(store_, pids, prefix, SIGKILL, absl::Seconds(3),
                      {absl::StatusCode::kUnavailable, absl::StatusCode::kDeadlineExceeded});
}

// Shared memory has no socket to close: a survivor waiting on a killed rank notices through
// /proc (it is gone, or a zombie until `up` reaps it) and fails with UNAVAILABLE.
TEST_F(GlooProcessTest, ShmKilledPeerMakesSurvivorsFailWithinTheTimeout) {
  const std::string prefix = UniquePrefix();
  std::vector<pid_t> pids = StartRanks(3, prefix, 3000, "hold", /*shm=*/true);
  ExpectSurvivorsFail(store_, pids, prefix, SIGKILL, absl::Seconds(3),
                      {absl::StatusCode::kUnavailable});
}

TEST_F(GlooProcessTest, ShmStoppedPeerMakesSurvivorsTimeOut) {
  const std::string prefix = UniquePrefix();
  std::vector<pid_t> pids = StartRanks(2, prefix, 1500, "hold", /*shm=*/true);
  ExpectSurvivorsFail(store_, pids, prefix, SIGSTOP, absl::Milliseconds(1500),
                      {absl::StatusCode::kDeadlineExceeded});
}

TEST_F(GlooProcessTest, StoppedPeerMakesSurvivorsTimeOut) {
  const std::string prefix = UniquePrefix();
  std::vector<pid_t> pids = StartRanks(2, prefix, 1500, "hold");
  // A stopped process keeps its sockets open: the survivor fails when the op's deadline passes.
  ExpectSurvivorsFail(store_, pids, prefix, SIGSTOP, absl::Milliseconds(1500),
                      {absl::StatusCode::kDeadlineExceeded});
}

}  // namespace
}  // namespace tpserve
