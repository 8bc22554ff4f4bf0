// Recorded steps (worker/backend/cuda/step_recorder.h): the tape a replay must follow, and
// CudaBackend::RunRecorded's fallbacks. A replay that differs from its recording in anything a
// device call would see must be refused before anything runs; a step that cannot be recorded,
// or keeps changing, runs op by op with the same results.
// Label `gpu` (skips without a GPU); `cuda_emu` on the emulator.
#include "worker/backend/cuda/step_recorder.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "worker/backend/cuda/cuda_backend.h"
#include "worker/backend/cuda/cuda_probe.h"

namespace tpserve {
namespace {

using cuda::StepRecorder;
using cuda::StepRecording;

class StepRecorderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<cuda::DeviceSummary> devices = cuda::ProbeDevices();
    if (!devices.ok()) GTEST_SKIP() << "no GPU here: " << devices.status();
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess);
    rec_ = std::make_shared<StepRecording>();
    rec_->pool = std::make_unique<cuda::DevicePool>();
    rec_->arena_capacity = 4096;
    absl::StatusOr<std::shared_ptr<void>> arena = rec_->pool->Get(rec_->arena_capacity);
    ASSERT_TRUE(arena.ok()) << arena.status();
    rec_->arena = *arena;
    rec_->host_arena.assign(rec_->arena_capacity, 0);
  }
  void TearDown() override {
    rec_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // One step: an allocation, two uploads (the second repeating the first), a third upload, and
  // a "launch" whose scalar argument is `scalar`.
  struct StepArgs {
    size_t alloc_bytes = 1024;
    std::vector<int32_t> a = {1, 2, 3}, b = {1, 2, 3}, c = {7, 8};
    int64_t scalar = 5;
    bool stop_early = false;
  };
  struct Seen {
    void* alloc = nullptr;
    const void* a = nullptr;
    const void* b = nullptr;
    const void* c = nullptr;
    bool launched = false;
  };
  Seen Run(StepRecorder& r, const StepArgs& s) {
    Seen seen;
    std::shared_ptr<void> mem = r.Alloc(s.alloc_bytes);
    seen.alloc = mem.get();
    seen.a = r.Upload(s.a.data(), s.a.size() * sizeof(int32_t));
    seen.b = r.Upload(s.b.data(), s.b.size() * sizeof(int32_t));
    if (s.stop_early) return seen;
    seen.c = r.Upload(s.c.data(), s.c.size() * sizeof(int32_t));
    const struct {
      const void* p;
      int64_t scalar;
    } args{seen.alloc, s.scalar};
    seen.launched = r.OnLaunch("Kernel", dim3(4), dim3(128), 0, stream_, &args, sizeof(args));
    return seen;
  }

  cudaStream_t stream_ = nullptr;
  std::shared_ptr<StepRecording> rec_;
};

TEST_F(StepRecorderTest, ReplayFollowsTheTapeAndWritesTheArena) {
  Seen captured;
  {
    StepRecorder capture(rec_, StepRecorder::Mode::kCapture, stream_);
    captured = Run(capture, StepArgs{});
    ASSERT_FALSE(capture.failed()) << capture.failure();
    EXPECT_TRUE(captured.launched) << "a capture makes the launch (into the graph)";
  }
  EXPECT_EQ(captured.a, captured.b) << "an upload repeating one of the step shares its place";
  EXPECT_NE(captured.a, captured.c);
  ASSERT_EQ(rec_->tape.size(), 5u);

  StepArgs next;
  next.a = next.b = {4, 5, 6, 7};  // grew, within its place
  next.c = {9, 10};
  StepRecorder replay(rec_, StepRecorder::Mode::kReplay, stream_);
  const Seen seen = Run(replay, next);
  ASSERT_FALSE(replay.failed()) << replay.failure();
  EXPECT_TRUE(replay.at_end());
  EXPECT_FALSE(seen.launched) << "a replay makes no launch";
  EXPECT_EQ(seen.alloc, captured.alloc);
  EXPECT_EQ(seen.a, captured.a);
  EXPECT_EQ(seen.c, captured.c);
  const auto* arena = static_cast<const uint8_t*>(rec_->arena.get());
  const size_t off_a = static_cast<const uint8_t*>(seen.a) - arena;
  const size_t off_c = static_cast<const uint8_t*>(seen.c) - arena;
  EXPECT_EQ(std::memcmp(rec_->host_arena.data() + off_a, next.a.data(), 16), 0);
  EXPECT_EQ(std::memcmp(rec_->host_arena.data() + off_c, next.c.data(), 8), 0);
}

// Each way a step can differ from its recording, and the reason the replay gives.
TEST_F(StepRecorderTest, ReplayStopsAtTheFirstDifference) {
  {
    StepRecorder capture(rec_, StepRecorder::Mode::kCapture, stream_);
    Run(capture, StepArgs{});
    ASSERT_FALSE(capture.failed()) << capture.failure();
  }
  struct Case {
    std::string name;
    StepArgs args;
    std::string reason;  // a part of the failure
  };
  std::vector<Case> cases;
  cases.push_back({"scalar argument", StepArgs{.scalar = 6}, "launch of Kernel"});
  cases.push_back({"allocation size", StepArgs{.alloc_bytes = 2048}, "allocation at entry 0"});
  cases.push_back({"upload outgrew its place",
                   StepArgs{.a = std::vector<int32_t>(100, 1), .b = std::vector<int32_t>(100, 1)},
                   "outgrew"});
  cases.push_back({"repeat no longer repeats", StepArgs{.b = {1, 2, 4}}, "no longer repeats"});
  for (const Case& c : cases) {
    StepRecorder replay(rec_, StepRecorder::Mode::kReplay, stream_);
    const Seen seen = Run(replay, c.args);
    EXPECT_TRUE(replay.failed()) << c.name;
    EXPECT_NE(replay.failure().find(c.reason), std::string::npos)
        << c.name << ": " << replay.failure();
    EXPECT_FALSE(seen.launched) << c.name;
  }
  StepRecorder short_replay(rec_, StepRecorder::Mode::kReplay, stream_);
  Run(short_replay, StepArgs{.stop_early = true});
  EXPECT_FALSE(short_replay.failed());
  EXPECT_FALSE(short_replay.at_end()) << "a step that ends early does not match";
}

// Through the backend: results equal op by op, however the step fares.
class CudaRecordedSteps : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<cuda::DeviceSummary> devices = cuda::ProbeDevices();
    if (!devices.ok()) GTEST_SKIP() << "no GPU here: " << devices.status();
    absl::StatusOr<std::unique_ptr<CudaBackend>> be =
        CudaBackend::Create({.device = 0, .precision = CudaPrecision::kFp32});
    ASSERT_TRUE(be.ok()) << be.status();
    be_ = std::move(*be);
    std::vector<float> table(kVocab * kWidth);
    for (size_t i = 0; i < table.size(); ++i) table[i] = 0.01f * static_cast<float>(i % 97) - 0.3f;
    table_t_ = be_->FromHost(table, {kVocab, kWidth});
    table_ = RowsAsWeight(table_t_);
    norm_ = be_->FromHost(std::vector<float>(kWidth, 1.5f), {kWidth});
  }

  // out = rmsnorm(embedding(tokens)) with `eps`; `peek` reads a value on the host mid-step.
  absl::Status Step(const std::vector<int32_t>& tokens, float eps, bool peek, Tensor* out) {
    const int64_t T = static_cast<int64_t>(tokens.size());
    Tensor x = be_->AllocUninitialized({T, kWidth});
    be_->Embedding(tokens, table_, 0, &x);
    if (peek) be_->ToHost(x);
    *out = be_->AllocUninitialized({T, kWidth});
    be_->RmsNorm(x, norm_, eps, out);
    return absl::OkStatus();
  }
  std::vector<float> Expected(const std::vector<int32_t>& tokens, float eps) {
    Tensor out;
    EXPECT_TRUE(Step(tokens, eps, false, &out).ok());
    return be_->ToHost(out);
  }
  std::vector<float> Recorded(const std::vector<int32_t>& tokens, float eps, bool peek) {
    Tensor out;
    const absl::Status st =
        be_->RunRecorded("test", false, [&] { return Step(tokens, eps, peek, &out); });
    EXPECT_TRUE(st.ok()) << st;
    return be_->ToHost(out);
  }

  static constexpr int64_t kVocab = 50, kWidth = 64;
  std::unique_ptr<CudaBackend> be_;
  Tensor table_t_, norm_;
  Weight table_;
};

TEST_F(CudaRecordedSteps, ReplaysComputeWithEachStepsInputs) {
  const std::vector<std::vector<int32_t>> steps = {{1, 2, 3}, {4, 5, 6}, {49, 0, 7}, {3, 3, 3}};
  for (const auto& tokens : steps) {
    EXPECT_EQ(Recorded(tokens, 1e-5f, false), Expected(tokens, 1e-5f));
  }
  const CudaBackend::RecordedStats s = be_->recorded_stats();
  EXPECT_EQ(s.captures, 1);
  EXPECT_EQ(s.replays, 3);
  EXPECT_EQ(s.graphs, 1);
}

TEST_F(CudaRecordedSteps, StepThatReadsTheDeviceRunsOpByOp) {
  for (int i = 0; i < 3; ++i) {
    const std::vector<int32_t> tokens = {i, i + 1};
    EXPECT_EQ(Recorded(tokens, 1e-5f, /*peek=*/true), Expected(tokens, 1e-5f));
  }
  const CudaBackend::RecordedStats s = be_->recorded_stats();
  EXPECT_EQ(s.graphs, 0);
  EXPECT_EQ(s.fallbacks, 3);
  EXPECT_EQ(s.replays, 0);
}

TEST_F(CudaRecordedSteps, StepThatKeepsChangingIsRecordedAgainThenGivenUp) {
  // The scalar eps differs every step: each replay is refused, recorded again, and after 8
  // recordings the key runs op by op. Every result is right throughout.
  for (int i = 0; i < 12; ++i) {
    const float eps = 1e-5f * static_cast<float>(i + 1);
    EXPECT_EQ(Recorded({1, 2}, eps, false), Expected({1, 2}, eps)) << "step " << i;
  }
  const CudaBackend::RecordedStats s = be_->recorded_stats();
  EXPECT_EQ(s.captures, 8);
  EXPECT_EQ(s.replays, 0);
}

// A step that changes now and then (here every 20 steps, 12 times: more than the 8 recordings a
// key that keeps changing gets) is recorded again each time and replayed in between, for good.
TEST_F(CudaRecordedSteps, StepThatChangesNowAndThenStaysRecorded) {
  for (int i = 0; i < 240; ++i) {
    const float eps = 1e-5f * static_cast<float>(i / 20 % 2 + 1);
    EXPECT_EQ(Recorded({1, 2}, eps, false), Expected({1, 2}, eps)) << "step " << i;
  }
  const CudaBackend::RecordedStats s = be_->recorded_stats();
  EXPECT_EQ(s.captures, 12);
  EXPECT_EQ(s.replays, 240 - 12);
}

// With peers (TP > 1 over NCCL) a rank that cannot record a step its peers may have recorded
// must not run it op by op alone: the step fails, saying why and what to change.
TEST_F(CudaRecordedSteps, WithPeersARankThatCannotRecordFailsTheStep) {
  const absl::Status st = be_->RunRecorded("huge", /*with_peers=*/true, [&]() -> absl::Status {
    Tensor t = be_->AllocUninitialized({int64_t{1} << 40});  // 4 TiB: beyond any device
    be_->Add(t, &t);
    return absl::OkStatus();
  });
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_NE(st.message().find("--cuda-graph-max-batch"), std::string::npos) << st;
  // The backend is usable afterwards, and a step that fits records and runs.
  EXPECT_EQ(Recorded({1, 2}, 1e-5f, false), Expected({1, 2}, 1e-5f));
}

}  // namespace
}  // namespace tpserve
