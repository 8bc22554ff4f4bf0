// GlooCommunicator with 2 and 3 ranks as threads of this process over loopback TCP, rendezvous
// through an InMemoryKvStore. Results are checked against the arithmetic of the inputs.
#include "worker/parallel/gloo_communicator.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/parallel/in_memory_kv_store.h"

namespace tpserve {
namespace {

using ::testing::HasSubstr;

std::string UniquePrefix() {
  static std::atomic<int> n{0};
  return "test" + std::to_string(n++) + "/";
}

GlooOptions Opts(int rank, int world, const std::string& prefix, absl::Duration timeout) {
  GlooOptions o;
  o.rank = rank;
  o.world_size = world;
  o.store_prefix = prefix;
  o.timeout = timeout;
  return o;
}

// Forms a group of `world` threads and runs body(rank, communicator) on each.
//
// Like the coordinator (DESIGN.md §7), a group whose rendezvous failed on any rank is formed
// again under a fresh prefix: with several Gloo groups starting at once on one host (ctest -j),
// this Gloo snapshot rarely (about 1 in 50 starts) sees a pair's connection closed during
// connectFullMesh.
void RunRanks(int world, absl::Duration timeout,
              const std::function<void(int, GlooCommunicator&)>& body,
              size_t bcube_max_bytes = GlooOptions().bcube_max_bytes) {
  constexpr int kAttempts = 3;
  InMemoryKvStore store;
  std::vector<std::unique_ptr<GlooCommunicator>> comms(world);
  for (int attempt = 1; attempt <= kAttempts; ++attempt) {
    const std::string prefix = UniquePrefix();
    std::vector<absl::Status> errors(world);
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r]() {
        absl::StatusOr<std::unique_ptr<GlooCommunicator>> comm =
            GlooCommunicator::Create(store, [&]() {
              GlooOptions o = Opts(r, world, prefix, timeout);
              o.bcube_max_bytes = bcube_max_bytes;
              return o;
            }());
        if (comm.ok()) {
          comms[r] = std::move(*comm);
        } else {
          errors[r] = comm.status();
        }
      });
    }
    for (std::thread& t : threads) t.join();
    bool all_ok = true;
    for (int r = 0; r < world; ++r) {
      if (!errors[r].ok()) {
        all_ok = false;
        std::cerr << "attempt " << attempt << " rank " << r << ": " << errors[r] << "\n";
        ASSERT_LT(attempt, kAttempts) << errors[r];
      }
    }
    if (all_ok) break;
    for (auto& c : comms) c.reset();
  }
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r]() {
      EXPECT_EQ(comms[r]->rank(), r);
      EXPECT_EQ(comms[r]->world_size(), world);
      body(r, *comms[r]);
    });
  }
  for (std::thread& t : threads) t.join();
}

class GlooCollectivesTest : public ::testing::TestWithParam<int> {};

TEST_P(GlooCollectivesTest, AllReduceSumMatchesArithmetic) {
  const int world = GetParam();
  // 576 floats (one SmolLM2 hidden vector) and 1 Mi floats (4 MiB, several ring chunks), each
  // with the ring and with BCUBE.
  for (size_t bcube_max_bytes : {size_t{0}, size_t{1} << 23}) {
    for (size_t count : {size_t{576}, size_t{1} << 20}) {
      SCOPED_TRACE(::testing::Message() << count << " floats, BCUBE up to " << bcube_max_bytes);
      RunRanks(
          world, absl::Seconds(20),
          [&](int r, GlooCommunicator& comm) {
            std::vector<float> data(count);
            // Small integers and halves: every partial sum is exact in float.
            for (size_t i = 0; i < count; ++i) {
              data[i] = 0.5f * static_cast<float>((r + 1) * (i % 1000));
            }
            ASSERT_TRUE(comm.AllReduceSum(data.data(), count).ok());
            for (size_t i = 0; i < count; ++i) {
              float want = 0;
              for (int k = 0; k < world; ++k) {
                want += 0.5f * static_cast<float>((k + 1) * (i % 1000));
              }
              ASSERT_EQ(data[i], want) << "rank " << r << " index " << i;
            }
          },
          bcube_max_bytes);
    }
  }
}

TEST_P(GlooCollectivesTest, GatherVConcatenatesUnevenSlicesInRankOrder) {
  const int world = GetParam();
  // Uneven like a vocab split, and one rank with nothing to send.
  std::vector<size_t> counts = {7, 0, 4};
  counts.resize(world);
  size_t total = 0;
  for (size_t c : counts) total += c;
  for (int root : {0, world - 1}) {
    RunRanks(world, absl::Seconds(20), [&](int r, GlooCommunicator& comm) {
      std::vector<float> in(counts[r]);
      for (size_t j = 0; j < in.size(); ++j) in[j] = static_cast<float>(1000 * r + j);
      std::vector<float> out(r == root ? total : 0, -1.0f);
      ASSERT_TRUE(comm.GatherV(in.data(), counts, out.data(), root).ok());
      if (r != root) return;
      size_t i = 0;
      for (int k = 0; k < world; ++k) {
        for (size_t j = 0; j < counts[k]; ++j, ++i) {
          EXPECT_EQ(out[i], static_cast<float>(1000 * k + j)) << "from rank " << k << " item " << j;
        }
      }
    });
  }
}

TEST_P(GlooCollectivesTest, BroadcastCopiesRootBytesAndBarrierPasses) {
  const int world = GetParam();
  const int root = world - 1;
  RunRanks(world, absl::Seconds(20), [&](int r, GlooCommunicator& comm) {
    std::vector<int32_t> tokens(33, r == root ? 0 : -1);
    if (r == root) {
      for (int i = 0; i < 33; ++i) tokens[i] = 17 * i + 3;
    }
    ASSERT_TRUE(comm.Broadcast(tokens.data(), tokens.size() * sizeof(int32_t), root).ok());
    for (int i = 0; i < 33; ++i) EXPECT_EQ(tokens[i], 17 * i + 3) << "rank " << r;
    EXPECT_TRUE(comm.Barrier().ok());
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, GlooCollectivesTest, ::testing::Values(2, 3),
                         [](const auto& info) { return std::to_string(info.param) + "ranks"; });

TEST(GlooCommunicatorTest, ArgumentErrorsDoNotBreakTheCommunicator) {
  RunRanks(2, absl::Seconds(20), [&](int r, GlooCommunicator& comm) {
    float x = 1;
    std::vector<size_t> wrong = {1, 1, 1};
    absl::Status st = comm.GatherV(&x, wrong, &x, 0);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(comm.Broadcast(&x, sizeof(x), 5).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_FALSE(comm.broken());
    ASSERT_TRUE(comm.AllReduceSum(&x, 1).ok());
    EXPECT_EQ(x, 2.0f);
  });
}

TEST(GlooCommunicatorTest, RendezvousTimesOutWhenARankNeverComes) {
  InMemoryKvStore store;
  const GlooOptions opts = Opts(0, 2, UniquePrefix(), absl::Milliseconds(500));
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<GlooCommunicator>> comm = GlooCommunicator::Create(store, opts);
  ASSERT_FALSE(comm.ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_THAT(std::string(comm.status().message()), HasSubstr("rendezvous"));
  EXPECT_THAT(std::string(comm.status().message()), HasSubstr("rank 0 of 2"));
}

TEST(GlooCommunicatorTest, ListensOnANamedInterface) {
  InMemoryKvStore store;
  const std::string prefix = UniquePrefix();
  std::vector<std::thread> threads;
  std::vector<float> sums(2, 0.0f);
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r]() {
      GlooOptions opts = Opts(r, 2, prefix, absl::Seconds(20));
      opts.hostname = "ignored.invalid";  // the interface takes precedence
      opts.interface = "lo";
      auto comm = GlooCommunicator::Create(store, opts);
      ASSERT_TRUE(comm.ok()) << comm.status();
      float x = static_cast<float>(r + 1);
      ASSERT_TRUE((*comm)->AllReduceSum(&x, 1).ok());
      sums[r] = x;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(sums[0], 3.0f);
  EXPECT_EQ(sums[1], 3.0f);
}

TEST(GlooCommunicatorTest, UnresolvableHostIsAnErrorNotACrash) {
  InMemoryKvStore store;
  GlooOptions opts = Opts(0, 2, UniquePrefix(), absl::Seconds(1));
  opts.hostname = "no-such-host.invalid";
  absl::StatusOr<std::unique_ptr<GlooCommunicator>> comm = GlooCommunicator::Create(store, opts);
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(comm.status().message()), HasSubstr("gloo rendezvous (rank 0 of 2"));
  EXPECT_THAT(std::string(comm.status().message()), HasSubstr("cannot resolve"));

  opts.interface = "nosuchif0";
  comm = GlooCommunicator::Create(store, opts);
  ASSERT_FALSE(comm.ok());
  EXPECT_THAT(std::string(comm.status().message()), HasSubstr("interface 'nosuchif0'"));

  // Resolves, but is no address of this host: Gloo cannot bind it.
  opts.interface.clear();
  opts.hostname = "192.0.2.1";
  comm = GlooCommunicator::Create(store, opts);
  ASSERT_FALSE(comm.ok());
  EXPECT_THAT(std::string(comm.status().message()), HasSubstr("gloo rendezvous (rank 0 of 2"));
}

TEST(GlooCommunicatorTest, BadRankIsInvalidArgument) {
  InMemoryKvStore store;
  absl::StatusOr<std::unique_ptr<GlooCommunicator>> comm =
      GlooCommunicator::Create(store, Opts(3, 2, "bad/", absl::Seconds(1)));
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kInvalidArgument);
}

// A rank that stops taking part (hung, or stopped by a debugger): the others' collective fails
// with DEADLINE_EXCEEDED after the timeout, and the communicator stays broken.
TEST(GlooCommunicatorTest, SilentPeerMakesSurvivorsTimeOut) {
  const absl::Duration timeout = absl::Seconds(1);
  std::atomic<int> survivors_done{0};
  RunRanks(3, timeout, [&](int r, GlooCommunicator& comm) {
    ASSERT_TRUE(comm.Barrier().ok());
    if (r == 2) {
      // Keep the connection open but never join: wait until the others gave up.
      while (survivors_done.load() < 2) absl::SleepFor(absl::Milliseconds(10));
      return;
    }
    std::vector<float> data(576, 1.0f);
    const absl::Time start = absl::Now();
    absl::Status st = comm.AllReduceSum(data.data(), data.size());
    const absl::Duration took = absl::Now() - start;
    ++survivors_done;
    EXPECT_FALSE(st.ok());
    EXPECT_LT(took, timeout + absl::Seconds(3)) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr("AllReduceSum"));
    EXPECT_THAT(std::string(st.message()), HasSubstr("rank " + std::to_string(r) + " of 3"));
    EXPECT_TRUE(comm.broken());
    absl::Status again = comm.Barrier();
    EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(again.message()), HasSubstr("must be rebuilt"));
  });
}

// GatherV's root waits on each source separately, so its error names the rank that is missing.
TEST(GlooCommunicatorTest, GatherVTimeoutNamesTheMissingRank) {
  std::atomic<bool> root_done{false};
  RunRanks(3, absl::Milliseconds(500), [&](int r, GlooCommunicator& comm) {
    ASSERT_TRUE(comm.Barrier().ok());
    const std::vector<size_t> counts = {2, 2, 2};
    std::vector<float> in(2, 1.0f), out(6);
    if (r == 2) {
      while (!root_done.load()) absl::SleepFor(absl::Milliseconds(10));
      return;
    }
    absl::Status st = comm.GatherV(in.data(), counts, out.data(), 0);
    if (r == 0) {
      root_done = true;
      EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
      EXPECT_THAT(std::string(st.message()), HasSubstr("peer rank 2")) << st;
    }
  });
}

// A rank whose communicator goes away (its sockets close, as when the process dies): the others
// fail, at once when they were reading from it, at the latest at their deadline.
TEST(GlooCommunicatorTest, ClosedPeerMakesSurvivorsFail) {
  const absl::Duration timeout = absl::Seconds(2);
  InMemoryKvStore store;
  const std::string prefix = UniquePrefix();
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r]() {
      auto comm = GlooCommunicator::Create(store, Opts(r, 3, prefix, timeout));
      ASSERT_TRUE(comm.ok()) << comm.status();
      ASSERT_TRUE((*comm)->Barrier().ok());
      if (r == 1) {
        comm->reset();  // closes its pairs
        return;
      }
      std::vector<float> data(576, 1.0f);
      const absl::Time start = absl::Now();
      absl::Status st = (*comm)->AllReduceSum(data.data(), data.size());
      EXPECT_LT(absl::Now() - start, timeout + absl::Seconds(3));
      EXPECT_TRUE(st.code() == absl::StatusCode::kUnavailable ||
                  st.code() == absl::StatusCode::kDeadlineExceeded)
          << st;
      EXPECT_THAT(std::string(st.message()), HasSubstr("AllReduceSum"));
      EXPECT_TRUE((*comm)->broken());
    });
  }
  for (std::thread& t : threads) t.join();
}

}  // namespace
}  // namespace tpserve
