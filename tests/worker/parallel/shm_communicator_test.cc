// ShmCommunicator with ranks as threads of this process (each maps the segment itself): results
// bitwise the same on every rank and equal to the rank-order sums, uneven GatherV, Broadcast,
// many collectives in a row, the routing of payloads larger than a slot to the fallback, the
// negotiation keeping the fallback on every rank when one rank is elsewhere, and a missing rank
// failing the wait at its deadline. Real processes (killed and stopped peers, the Gloo fallback
// for a large payload) are in gloo_process_test.cc.
#include "worker/parallel/shm_communicator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "worker/parallel/in_memory_kv_store.h"

namespace tpserve {
namespace {

using ::testing::HasSubstr;

// Records what the shared-memory path handed over; computes nothing.
class RecordingFallback final : public Communicator {
 public:
  RecordingFallback(int rank, int world) : rank_(rank), world_(world) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  absl::Status AllReduceSum(float*, size_t count) override {
    calls.push_back(absl::StrCat("AllReduceSum ", count));
    return absl::OkStatus();
  }
  absl::Status GatherV(const float*, std::span<const size_t>, float*, int) override {
    calls.push_back("GatherV");
    return absl::OkStatus();
  }
  absl::Status Broadcast(void*, size_t bytes, int) override {
    calls.push_back(absl::StrCat("Broadcast ", bytes));
    return absl::OkStatus();
  }
  absl::Status Barrier() override {
    calls.push_back("Barrier");
    return absl::OkStatus();
  }
  std::vector<std::string> calls;

 private:
  int rank_, world_;
};

std::string UniquePrefix() {
  static std::atomic<int> n{0};
  return absl::StrCat("shmtest", getpid(), "-", n++, "/");
}

// Wraps a RecordingFallback per rank (threads), then runs body(rank, comm, fallback).
void RunRanks(int world, ShmOptions base,
              const std::function<void(int, Communicator&, RecordingFallback*)>& body) {
  InMemoryKvStore store;
  base.store_prefix = UniquePrefix();
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      auto fallback = std::make_unique<RecordingFallback>(r, world);
      RecordingFallback* raw = fallback.get();
      ShmOptions o = base;
      o.rank = r;
      o.world_size = world;
      if (r == 1 && !base.identity_override.empty()) {
        o.identity_override = base.identity_override;
      } else {
        o.identity_override.clear();
      }
      absl::StatusOr<std::unique_ptr<Communicator>> comm =
          ShmCommunicator::Wrap(store, o, std::move(fallback));
      ASSERT_TRUE(comm.ok()) << comm.status();
      body(r, **comm, comm->get() == raw ? nullptr : raw);
    });
  }
  for (std::thread& t : threads) t.join();
}

TEST(ShmCommunicator, CollectivesAreExactAndTheSameOnEveryRank) {
  constexpr int kWorld = 3;
  constexpr size_t kCount = 4099;
  std::vector<std::vector<float>> inputs(kWorld, std::vector<float>(kCount));
  std::mt19937 rng(9);
  std::normal_distribution<float> normal;
  for (auto& in : inputs) {
    for (float& v : in) v = normal(rng);
  }
  std::vector<float> want(kCount);
  for (size_t i = 0; i < kCount; ++i) want[i] = (inputs[0][i] + inputs[1][i]) + inputs[2][i];
  std::vector<std::vector<float>> got(kWorld);
  RunRanks(kWorld, ShmOptions{.timeout = absl::Seconds(20)},
           [&](int r, Communicator& comm, RecordingFallback* fallback) {
             ASSERT_NE(dynamic_cast<ShmCommunicator*>(&comm), nullptr) << "rank " << r;
             EXPECT_EQ(comm.rank(), r);
             for (int rep = 0; rep < 50; ++rep) {  // slots reused: sequence numbers must hold
               std::vector<float> data = inputs[r];
               ASSERT_TRUE(comm.AllReduceSum(data.data(), kCount).ok());
               if (rep == 0) got[r] = data;
               ASSERT_EQ(std::memcmp(data.data(), got[r].data(), kCount * sizeof(float)), 0);
             }
             const std::vector<size_t> counts = {3, 0, 7};  // uneven, one empty
             std::vector<float> in(counts[r]);
             for (size_t j = 0; j < in.size(); ++j) in[j] = static_cast<float>(10 * r + j);
             std::vector<float> out(10, -1.0f);
             ASSERT_TRUE(comm.GatherV(in.data(), counts, out.data(), 2).ok());
             if (r == 2) {
               EXPECT_THAT(out, ::testing::ElementsAre(0, 1, 2, 20, 21, 22, 23, 24, 25, 26));
             }
             std::vector<int> tokens(5, r == 1 ? 7 : 0);
             ASSERT_TRUE(comm.Broadcast(tokens.data(), tokens.size() * sizeof(int), 1).ok());
             EXPECT_THAT(tokens, ::testing::Each(7));
             ASSERT_TRUE(comm.Barrier().ok());
             EXPECT_TRUE(fallback->calls.empty());
           });
  for (int r = 0; r < kWorld; ++r) {
    ASSERT_EQ(got[r].size(), kCount);
    EXPECT_EQ(std::memcmp(got[r].data(), want.data(), kCount * sizeof(float)), 0) << "rank " << r;
  }
}

TEST(ShmCommunicator, PayloadsLargerThanASlotGoToTheFallback) {
  RunRanks(2, ShmOptions{.timeout = absl::Seconds(20), .slot_bytes = 1024},
           [&](int r, Communicator& comm, RecordingFallback* fallback) {
             ASSERT_NE(fallback, nullptr);
             std::vector<float> small(256, 1.0f + r), big(257, 1.0f);
             ASSERT_TRUE(comm.AllReduceSum(small.data(), small.size()).ok());
             EXPECT_THAT(small, ::testing::Each(3.0f));
             ASSERT_TRUE(comm.AllReduceSum(big.data(), big.size()).ok());
             EXPECT_THAT(big, ::testing::Each(1.0f));  // untouched: the fallback had it
             std::vector<uint8_t> blob(2000);
             ASSERT_TRUE(comm.Broadcast(blob.data(), blob.size(), 0).ok());
             EXPECT_THAT(fallback->calls,
                         ::testing::ElementsAre("AllReduceSum 257", "Broadcast 2000"));
           });
}

TEST(ShmCommunicator, ARankOnAnotherHostKeepsTheFallbackEverywhere) {
  RunRanks(3, ShmOptions{.timeout = absl::Seconds(20), .identity_override = "elsewhere"},
           [&](int r, Communicator& comm, RecordingFallback* fallback) {
             EXPECT_EQ(fallback, nullptr) << "rank " << r << " got shared memory";
             EXPECT_EQ(dynamic_cast<ShmCommunicator*>(&comm), nullptr);
           });
}

// A segment /dev/shm cannot hold (here: 1 TiB per rank) is refused when rank 0 reserves it:
// every rank keeps the fallback, nothing crashes later.
TEST(ShmCommunicator, ASegmentThatDoesNotFitKeepsTheFallbackEverywhere) {
  RunRanks(2, ShmOptions{.timeout = absl::Seconds(20), .slot_bytes = size_t{1} << 40},
           [&](int r, Communicator& comm, RecordingFallback* fallback) {
             EXPECT_EQ(fallback, nullptr) << "rank " << r << " got shared memory";
             EXPECT_EQ(dynamic_cast<ShmCommunicator*>(&comm), nullptr);
           });
}

TEST(ShmCommunicator, AMissingRankFailsTheWaitAtTheDeadline) {
  RunRanks(2, ShmOptions{.timeout = absl::Milliseconds(300)},
           [&](int r, Communicator& comm, RecordingFallback*) {
             if (r == 1) return;  // never arrives (but stays alive: the deadline decides)
             std::vector<float> data(16, 1.0f);
             const absl::Time start = absl::Now();
             absl::Status st = comm.AllReduceSum(data.data(), data.size());
             EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
             EXPECT_THAT(st.message(), HasSubstr("AllReduceSum on rank 0 of 2: rank 1"));
             EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
             EXPECT_LT(absl::Now() - start, absl::Seconds(5));
             EXPECT_EQ(comm.Barrier().code(), absl::StatusCode::kDeadlineExceeded);  // broken
           });
}

}  // namespace
}  // namespace tpserve
