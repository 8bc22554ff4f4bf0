// NCCL communicator (issue 6 "Proof": NCCL with one rank end to end; NCCL refuses two ranks of
// one communicator on one GPU). Label `gpu`: skips with the reason without a usable GPU, except
// the checks that the failure is explained and nothing hangs.
#include "worker/parallel/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "tests/worker/model/golden.h"
#include "worker/backend/cuda/cuda_backend.h"
#include "worker/backend/cuda/cuda_probe.h"
#include "worker/backend/cuda/host_staged_communicator.h"
#include "worker/model/llama.h"
#include "worker/model/model_loader.h"
#include "worker/parallel/in_memory_kv_store.h"
#include "worker/parallel/shard_plan.h"
#include "worker/runtime/model_runner.h"

#if defined(TPSERVE_CUDA_EMULATOR)
#include "tpserve_cuda_emulator.h"
#endif

namespace tpserve {
namespace {

bool HaveGpu() { return cuda::ProbeDevices().ok(); }

TEST(NcclCommunicator, WithoutGpuFailsCleanly) {
  if (HaveGpu()) GTEST_SKIP() << "a GPU is present; this checks the no-GPU path";
  InMemoryKvStore store;
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm =
      NcclCommunicator::Create(store, NcclOptions{.store_prefix = "nogpu/"}, nullptr);
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kFailedPrecondition) << comm.status();
  EXPECT_NE(comm.status().message().find("no"), std::string::npos) << comm.status();
}

TEST(NcclCommunicator, RejectsInvalidRank) {
  InMemoryKvStore store;
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm = NcclCommunicator::Create(
      store, NcclOptions{.rank = 2, .world_size = 2, .store_prefix = "bad/"}, nullptr);
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kInvalidArgument) << comm.status();
}

class NcclOnGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<cuda::DeviceSummary> devices = cuda::ProbeDevices();
    if (!devices.ok()) GTEST_SKIP() << "no GPU here: " << devices.status();
    absl::StatusOr<std::unique_ptr<CudaBackend>> be =
        CudaBackend::Create({.device = 0, .precision = CudaPrecision::kFp32});
    ASSERT_TRUE(be.ok()) << be.status();
    backend_ = std::move(*be);
  }
  std::unique_ptr<CudaBackend> backend_;
};

// One rank: every collective runs through NCCL and leaves the right values.
TEST_F(NcclOnGpu, OneRankCollectives) {
  InMemoryKvStore store;
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm =
      NcclCommunicator::Create(store, NcclOptions{.store_prefix = "one/"}, backend_->stream());
  ASSERT_TRUE(comm.ok()) << comm.status();
  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 7.0f, -0.5f};
  Tensor t = backend_->FromHost(values, {5});
  ASSERT_TRUE((*comm)->AllReduceSum(t.data(), 5).ok());
  EXPECT_EQ(backend_->ToHost(t), values);
  Tensor out = backend_->Alloc({5});
  const std::vector<size_t> counts = {5};
  ASSERT_TRUE((*comm)->GatherV(t.data(), counts, out.data(), 0).ok());
  EXPECT_EQ(backend_->ToHost(out), values);
  ASSERT_TRUE((*comm)->Broadcast(t.data(), 5 * sizeof(float), 0).ok());
  EXPECT_EQ(backend_->ToHost(t), values);
  EXPECT_TRUE((*comm)->Barrier().ok());
  EXPECT_FALSE((*comm)->broken());
}

// A peer that never joins: init must give up at the deadline with a clear error, not hang.
TEST_F(NcclOnGpu, MissingPeerTimesOutAndAborts) {
  InMemoryKvStore store;
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm = NcclCommunicator::Create(
      store,
      NcclOptions{
          .rank = 0, .world_size = 2, .store_prefix = "lonely/", .init_timeout = absl::Seconds(5)},
      backend_->stream());
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
}

// SmolLM2 on the GPU with the NCCL communicator (one rank) generates what it generates with the
// local one.
TEST_F(NcclOnGpu, ModelEndToEndWithOneRank) {
  const std::string path = testing::ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is missing";
  InMemoryKvStore store;
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> nccl =
      NcclCommunicator::Create(store, NcclOptions{.store_prefix = "model/"}, backend_->stream());
  ASSERT_TRUE(nccl.ok()) << nccl.status();
  LocalCommunicator local;
  absl::StatusOr<ModelFiles> files = OpenModelFiles(path);
  ASSERT_TRUE(files.ok()) << files.status();
  std::vector<std::vector<int32_t>> outputs;
  for (Communicator* comm :
       {static_cast<Communicator*>(nccl->get()), static_cast<Communicator*>(&local)}) {
    absl::StatusOr<std::unique_ptr<CausalLm>> model =
        LoadCausalLm(*files, SingleRankPlan(files->config), *backend_, *comm);
    ASSERT_TRUE(model.ok()) << model.status();
    absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
        ModelRunner::Create(**model, *backend_, true, 4, 16);
    ASSERT_TRUE(runner.ok()) << runner.status();
    StepSequence seq;
    seq.tokens = {1, 504, 3458, 282, 4649};
    seq.block_table = {0, 1, 2, 3};
    std::vector<int32_t> out;
    for (int i = 0; i < 16; ++i) {
      Step step;
      step.sequences = {seq};
      absl::StatusOr<StepResult> r = (*runner)->Execute(step);
      ASSERT_TRUE(r.ok()) << r.status();
      out.push_back(r->tokens[0]);
      seq.start_pos += static_cast<int64_t>(seq.tokens.size());
      seq.tokens = {r->tokens[0]};
    }
    outputs.push_back(out);
  }
  EXPECT_EQ(outputs[0], outputs[1]);
  EXPECT_TRUE((*nccl)->Barrier().ok());
}

// Two ranks, one device each (NCCL refuses two ranks on one GPU): needs a machine with two GPUs,
// or the CUDA emulator with TPSERVE_CUDA_EMU_DEVICES=2 (ctest: cuda_emu_nccl_two_ranks). Ranks
// are threads, each with its own backend and stream.
class NcclTwoRanks : public ::testing::Test {
 protected:
  static constexpr int kWorld = 2;
  void SetUp() override {
    int devices = 0;
    if (!cuda::ProbeDevices().ok() || cudaGetDeviceCount(&devices) != cudaSuccess ||
        devices < kWorld) {
      GTEST_SKIP() << "needs " << kWorld << " GPUs";
    }
  }
  static absl::StatusOr<std::unique_ptr<CudaBackend>> RankBackend(int r) {
    return CudaBackend::Create({.device = r, .precision = CudaPrecision::kFp32});
  }
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Join(KvStore& store, int r,
                                                                const std::string& prefix,
                                                                absl::Duration op_timeout,
                                                                CudaBackend& be) {
    return NcclCommunicator::Create(store,
                                    NcclOptions{.rank = r,
                                                .world_size = kWorld,
                                                .device = r,
                                                .store_prefix = prefix,
                                                .init_timeout = absl::Seconds(30),
                                                .op_timeout = op_timeout},
                                    be.stream());
  }
  // Runs fn(rank) on one thread per rank; the ranks' statuses.
  template <class Fn>
  static std::vector<absl::Status> OnRanks(Fn fn) {
    std::vector<absl::Status> st(kWorld);
    std::vector<std::thread> threads;
    for (int r = 0; r < kWorld; ++r) threads.emplace_back([&, r] { st[r] = fn(r); });
    for (std::thread& t : threads) t.join();
    return st;
  }
};

TEST_F(NcclTwoRanks, CollectivesCombineBothRanks) {
  InMemoryKvStore store;
  const std::vector<absl::Status> st = OnRanks([&](int r) -> absl::Status {
    ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> be, RankBackend(r));
    ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> comm,
                     Join(store, r, "pair/", absl::Seconds(30), *be));
    const float base = r == 0 ? 1.0f : 10.0f;
    Tensor t = be->FromHost(std::vector<float>{base, 2 * base, 3 * base}, {3});
    RETURN_IF_ERROR(comm->AllReduceSum(t.data(), 3));
    RETURN_IF_ERROR(comm->WaitPending());  // enqueued only, until waited for
    if (be->ToHost(t) != std::vector<float>{11.0f, 22.0f, 33.0f}) {
      return absl::InternalError(absl::StrCat("rank ", r, ": all-reduce gave the wrong sums"));
    }
    // Gather-v: rank 0 gives 2 values, rank 1 gives 3, to rank 1.
    const std::vector<size_t> counts = {2, 3};
    Tensor mine = be->FromHost(r == 0 ? std::vector<float>{1, 2} : std::vector<float>{3, 4, 5},
                               {static_cast<int64_t>(counts[r])});
    Tensor all = be->FromHost(std::vector<float>(5, -1.0f), {5});
    RETURN_IF_ERROR(comm->GatherV(mine.data(), counts, all.data(), 1));
    RETURN_IF_ERROR(comm->WaitPending());
    if (r == 1 && be->ToHost(all) != std::vector<float>{1, 2, 3, 4, 5}) {
      return absl::InternalError("gather-v: rank 1 did not receive both slices in rank order");
    }
    // Broadcast from rank 1.
    Tensor b = be->FromHost(r == 1 ? std::vector<float>{7, 8} : std::vector<float>{0, 0}, {2});
    RETURN_IF_ERROR(comm->Broadcast(b.data(), 2 * sizeof(float), 1));
    RETURN_IF_ERROR(comm->WaitPending());
    if (be->ToHost(b) != std::vector<float>{7, 8}) {
      return absl::InternalError(absl::StrCat("rank ", r, ": broadcast did not arrive"));
    }
    return comm->Barrier();
  });
  for (int r = 0; r < kWorld; ++r) EXPECT_TRUE(st[r].ok()) << "rank " << r << ": " << st[r];
}

// A rank that stops taking part: its peer's collective is enqueued, the wait for it ends at
// op_timeout, aborted, and the communicator stays broken (the cluster then rebuilds the group).
TEST_F(NcclTwoRanks, SilentPeerTimesOutTheCollective) {
  InMemoryKvStore store;
  const std::vector<absl::Status> st = OnRanks([&](int r) -> absl::Status {
    ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> be, RankBackend(r));
    ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> comm,
                     Join(store, r, "silent/", absl::Seconds(2), *be));
    if (r == 1) return absl::OkStatus();  // never joins the all-reduce
    Tensor t = be->FromHost(std::vector<float>{1.0f}, {1});
    const absl::Time start = absl::Now();
    RETURN_IF_ERROR(comm->AllReduceSum(t.data(), 1));  // enqueued: the host does not wait
    const absl::Status wait = comm->WaitPending();
    if (wait.code() != absl::StatusCode::kDeadlineExceeded) {
      return absl::InternalError(absl::StrCat("expected DEADLINE_EXCEEDED, got ", wait.ToString()));
    }
    if (absl::Now() - start > absl::Seconds(20)) return absl::InternalError("too slow to fail");
    if (!comm->broken() || comm->Barrier().ok()) {
      return absl::InternalError("the communicator should stay broken");
    }
    return absl::OkStatus();
  });
  for (int r = 0; r < kWorld; ++r) EXPECT_TRUE(st[r].ok()) << "rank " << r << ": " << st[r];
}

// TP=2 over NCCL generates what one rank generates (tiny GQA checkpoint in the repository).
TEST_F(NcclTwoRanks, ModelTp2EqualsOneRank) {
  const std::string path = std::string(testing::kGoldenDir) + "/llama-gqa-llama3";
  absl::StatusOr<ModelFiles> files = OpenModelFiles(path);
  ASSERT_TRUE(files.ok()) << files.status();
  const std::vector<int32_t> prompt = {1, 7, 42, 99, 3};
  // Runs 12 greedy steps on `world` ranks (threads); rank 0's tokens. `replays`: how many
  // decode steps each rank replayed from a recording (CUDA graphs, with the collectives inside).
  auto generate = [&](int world, int64_t max_recorded_rows,
                      std::vector<int64_t>* replays) -> absl::StatusOr<std::vector<int32_t>> {
    InMemoryKvStore store;
    std::vector<std::unique_ptr<CudaBackend>> backends(world);
    std::vector<std::unique_ptr<Communicator>> comms(world);
    std::vector<std::unique_ptr<CausalLm>> models(world);
    std::vector<std::unique_ptr<ModelRunner>> runners(world);
    std::vector<absl::Status> st(world);
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        st[r] = [&]() -> absl::Status {
          ASSIGN_OR_RETURN(backends[r],
                           CudaBackend::Create({.device = r,
                                                .precision = CudaPrecision::kFp32,
                                                .max_recorded_rows = max_recorded_rows}));
          ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> nccl,
                           NcclCommunicator::Create(store,
                                                    NcclOptions{.rank = r,
                                                                .world_size = world,
                                                                .device = r,
                                                                .store_prefix = "tp/",
                                                                .init_timeout = absl::Seconds(30)},
                                                    backends[r]->stream()));
          // As the worker does (cuda_device.cc).
          comms[r] = std::make_unique<HostAwareCommunicator>(std::move(nccl), *backends[r]);
          ASSIGN_OR_RETURN(const ShardPlan plan,
                           MakeShardPlan(ShardInputsOf(files->config, world)));
          ASSIGN_OR_RETURN(models[r], LoadCausalLm(*files, plan, *backends[r], *comms[r]));
          ASSIGN_OR_RETURN(runners[r],
                           ModelRunner::Create(*models[r], *backends[r], r == 0, 4, 16));
          return absl::OkStatus();
        }();
      });
    }
    for (std::thread& t : threads) t.join();
    for (int r = 0; r < world; ++r) RETURN_IF_ERROR(st[r]);
    StepSequence seq;
    seq.tokens = prompt;
    seq.block_table = {0, 1, 2, 3};
    std::vector<int32_t> out;
    for (int i = 0; i < 12; ++i) {
      Step step;
      step.sequences = {seq};
      std::vector<absl::StatusOr<StepResult>> results(world, absl::UnknownError("not run"));
      threads.clear();
      for (int r = 0; r < world; ++r) {
        threads.emplace_back([&, r] { results[r] = runners[r]->Execute(step); });
      }
      for (std::thread& t : threads) t.join();
      for (int r = 0; r < world; ++r) RETURN_IF_ERROR(results[r].status());
      out.push_back(results[0]->tokens.at(0));
      seq.start_pos += static_cast<int64_t>(seq.tokens.size());
      seq.tokens = {out.back()};
    }
    replays->clear();
    for (int r = 0; r < world; ++r) replays->push_back(backends[r]->recorded_stats().replays);
    return out;
  };
  std::vector<int64_t> replays;
  absl::StatusOr<std::vector<int32_t>> one = generate(1, 0, &replays);
  ASSERT_TRUE(one.ok()) << one.status();
  absl::StatusOr<std::vector<int32_t>> two = generate(kWorld, 0, &replays);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(*two, *one);
  // Recorded: the prefill and the first decode step run and record; the other ten replay, the
  // all-reduces and the logits' gather inside each rank's graph.
  absl::StatusOr<std::vector<int32_t>> recorded = generate(kWorld, 64, &replays);
  ASSERT_TRUE(recorded.ok()) << recorded.status();
  EXPECT_EQ(*recorded, *one);
  EXPECT_EQ(replays, (std::vector<int64_t>{10, 10}));
}

#if defined(TPSERVE_CUDA_EMULATOR)
// How a TP=2 decode step over NCCL drives the GPUs (the emulator's counters, both ranks): each
// rank's step is a recorded graph with the collectives (two a layer and the logits' gather)
// inside, the logits stay on rank 0's device, and the host waits once a step on each rank (the
// model's WaitPending after the graph) plus once for rank 0's token.
TEST_F(NcclTwoRanks, DecodeStepWaitsOncePerRank) {
  const std::string path = std::string(testing::kGoldenDir) + "/llama-gqa-llama3";
  absl::StatusOr<ModelFiles> files = OpenModelFiles(path);
  ASSERT_TRUE(files.ok()) << files.status();
  InMemoryKvStore store;
  std::vector<std::unique_ptr<CudaBackend>> backends(kWorld);
  std::vector<std::unique_ptr<Communicator>> comms(kWorld);
  std::vector<std::unique_ptr<CausalLm>> models(kWorld);
  std::vector<std::unique_ptr<ModelRunner>> runners(kWorld);
  const std::vector<absl::Status> loaded = OnRanks([&](int r) -> absl::Status {
    ASSIGN_OR_RETURN(backends[r],
                     CudaBackend::Create({.device = r, .precision = CudaPrecision::kBf16}));
    ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> nccl,
                     Join(store, r, "steps/", absl::Seconds(30), *backends[r]));
    comms[r] = std::make_unique<HostAwareCommunicator>(std::move(nccl), *backends[r]);
    ASSIGN_OR_RETURN(const ShardPlan plan, MakeShardPlan(ShardInputsOf(files->config, kWorld)));
    ASSIGN_OR_RETURN(models[r], LoadCausalLm(*files, plan, *backends[r], *comms[r]));
    ASSIGN_OR_RETURN(runners[r], ModelRunner::Create(*models[r], *backends[r], r == 0, 4, 16));
    return absl::OkStatus();
  });
  for (int r = 0; r < kWorld; ++r) ASSERT_TRUE(loaded[r].ok()) << "rank " << r << ": " << loaded[r];

  StepSequence seq;
  seq.tokens = {1, 7, 42, 99, 3};
  seq.block_table = {0, 1, 2, 3};
  seq.sample = false;
  constexpr int kSteps = 6, kMeasured = 4;  // the prefill and the first decode step warm up
  for (int i = 0; i < kSteps; ++i) {
    if (i == kSteps - kMeasured) tpserve_emu::ResetCounters();
    Step step;
    step.sequences = {seq};
    step.keep_device_logits = true;
    std::vector<int32_t> token(1, -1);
    const std::vector<absl::Status> ran = OnRanks([&](int r) -> absl::Status {
      ASSIGN_OR_RETURN(StepResult result, runners[r]->Execute(step));
      if (r != 0) return absl::OkStatus();
      if (result.logits_device.device() == Device::kCpu) {
        return absl::InternalError("rank 0's logits came back to the host");
      }
      const std::vector<int64_t> rows = {result.logits_row.at(0)};
      const std::vector<Backend::DeviceDraw> greedy(1);
      ASSIGN_OR_RETURN(std::vector<Backend::DeviceDrawn> drawn,
                       backends[r]->SampleOnDevice(result.logits_device, rows, greedy));
      token[0] = drawn.at(0).token;
      return absl::OkStatus();
    });
    for (int r = 0; r < kWorld; ++r) ASSERT_TRUE(ran[r].ok()) << "rank " << r << ": " << ran[r];
    seq.start_pos += static_cast<int64_t>(seq.tokens.size());
    seq.tokens = {token[0]};
  }
  const tpserve_emu::Counters c = tpserve_emu::GetCounters();
  std::printf(
      "TP=2 decode step, both ranks: %.1f host waits, %.1f downloads, %.1f pageable "
      "uploads\n",
      double(c.host_waits) / kMeasured, double(c.d2h) / kMeasured,
      double(c.h2d_pageable) / kMeasured);
  EXPECT_EQ(c.host_waits, uint64_t{3 * kMeasured}) << "rank 0: step end + token; rank 1: step end";
  EXPECT_EQ(c.d2h, uint64_t{kMeasured}) << "only rank 0's token comes back";
  EXPECT_EQ(c.h2d_pageable, 0u);
  // Each rank's step is one recorded graph, its collectives included.
  EXPECT_EQ(c.graph_launches, uint64_t{2 * kMeasured});
  EXPECT_LE(c.kernels, uint64_t{kMeasured}) << "rank 0's arg-max only";
}
#endif

}  // namespace
}  // namespace tpserve
