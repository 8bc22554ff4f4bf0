// Two real tpserve-worker processes and the coordinator's Cluster service in this process: the
// workers register, this test (playing the coordinator) loads a tiny golden checkpoint at TP=2
// (Gloo rendezvous through the Cluster store over gRPC), streams the same plans to both ranks
// and checks rank 0's greedy tokens against the transformers goldens. Then SIGTERM stops both
// cleanly. Also: a worker started for the wrong group size exits with a clear error.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/cluster/cluster_server.h"
#include "grpcpp/grpcpp.h"
#include "proto/shard_plan_proto.h"
#include "tests/worker/model/golden.h"
#include "tests/worker/service/plans.h"
#include "tpserve/v1/worker.grpc.pb.h"
#include "worker/model/model_loader.h"

extern char** environ;

namespace tpserve {
namespace {

using testing::GoldenCase;

constexpr const char* kModel = "llama-gqa-llama3";

pid_t Spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ);
  EXPECT_EQ(rc, 0) << "posix_spawn " << args[0];
  return rc == 0 ? pid : -1;
}

// The exit code of `pid`, or -1 if it is still running after `timeout` (it is then killed).
int WaitExit(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

std::vector<pid_t> StartWorkers(const std::string& coordinator, int world, int tp_flag,
                                const std::string& register_interval = "2") {
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    pids.push_back(Spawn({TPSERVE_WORKER_BIN, "--coordinator", coordinator, "--rank",
                          std::to_string(r), "--tp", std::to_string(tp_flag), "--listen",
                          "127.0.0.1:0", "--threads", "1", "--memory-budget",
                          std::to_string(64 << 20), "--register-interval", register_interval}));
  }
  return pids;
}

bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

TEST(WorkerProcessTest, TwoWorkerProcessesProduceTheGoldenTokens) {
  constexpr int kWorld = 2;
  WorkerRegistry registry(kWorld, "", "");
  InMemoryKvStore store;
  auto cluster = ClusterServer::Start("127.0.0.1:0", registry, store);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::vector<pid_t> pids = StartWorkers((*cluster)->address(), kWorld, kWorld);

  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!registry.complete() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_TRUE(registry.complete()) << registry.registered() << " of 2 workers registered";
  const std::vector<WorkerInfo> workers = registry.workers();
  ASSERT_EQ(workers.size(), 2u);

  const std::string path = std::string(testing::kGoldenDir) + "/" + kModel;
  auto files = OpenModelFiles(path);
  ASSERT_TRUE(files.ok()) << files.status();
  auto plan = MakeShardPlan(ShardInputsOf(files->config, kWorld));
  ASSERT_TRUE(plan.ok()) << plan.status();

  std::vector<std::unique_ptr<v1::Worker::Stub>> stubs;
  for (const WorkerInfo& w : workers) {
    EXPECT_EQ(w.device_kind, "cpu");
    EXPECT_EQ(w.data_host, "127.0.0.1");
    stubs.push_back(v1::Worker::NewStub(
        grpc::CreateChannel(w.control_address, grpc::InsecureChannelCredentials())));
  }

  // LoadModel on both ranks at once: they meet in the Gloo rendezvous.
  std::vector<grpc::Status> load_status(kWorld);
  std::vector<v1::LoadModelResponse> loaded(kWorld);
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorld; ++r) {
    threads.emplace_back([&, r]() {
      v1::LoadModelRequest req;
      req.set_model_path(path);
      *req.mutable_shard() = RankShardToProto(plan->ranks[r]);
      req.set_generation(1);
      req.mutable_communicator()->set_kind(v1::CommunicatorConfig::KIND_GLOO);
      req.mutable_communicator()->set_store_prefix("g1/gloo/");
      req.mutable_communicator()->set_timeout_ms(30000);
      req.set_kv_block_size(testing::kBlockSize);
      req.set_max_batch_sequences(4);
      req.set_max_batch_tokens(128);
      req.set_max_context_length(256);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      load_status[r] = stubs[r]->LoadModel(&ctx, req, &loaded[r]);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < kWorld; ++r) {
    ASSERT_TRUE(load_status[r].ok()) << "rank " << r << ": " << load_status[r].error_message();
    EXPECT_EQ(loaded[r].kv_blocks(), 4 * 256 / 16);
    EXPECT_GT(loaded[r].weight_bytes(), 0);
  }

  const std::vector<GoldenCase> cases = testing::LoadGoldenCases(kModel);
  ASSERT_EQ(cases.size(), 3u);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReaderWriter<v1::StepPlan, v1::StepResult>>> streams;
  for (int r = 0; r < kWorld; ++r) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    streams.push_back(stubs[r]->Execute(contexts[r].get()));
  }
  int64_t collective_us = 0;
  const auto tokens = testing::DecodeGreedy(cases, 1, [&](const v1::StepPlan& step) {
    for (auto& s : streams) EXPECT_TRUE(s->Write(step));
    v1::StepResult results[kWorld];
    for (int r = 0; r < kWorld; ++r) {
      EXPECT_TRUE(streams[r]->Read(&results[r])) << "rank " << r;
      EXPECT_EQ(results[r].rank(), r);
      collective_us += results[r].timing().collective_us();
    }
    EXPECT_EQ(results[1].tokens_size(), 0);  // only rank 0 samples
    return results[0];
  });
  for (int r = 0; r < kWorld; ++r) {
    streams[r]->WritesDone();
    EXPECT_TRUE(streams[r]->Finish().ok()) << "rank " << r;
  }
  for (size_t i = 0; i < cases.size(); ++i) EXPECT_EQ(tokens[i], cases[i].greedy) << "case " << i;
  EXPECT_GT(collective_us, 0);

  for (pid_t pid : pids) kill(pid, SIGTERM);
  for (int r = 0; r < kWorld; ++r) EXPECT_EQ(WaitExit(pids[r], absl::Seconds(15)), 0) << r;
}

TEST(WorkerProcessTest, WorkerStartedForAnotherGroupSizeExitsWithTheReason) {
  WorkerRegistry registry(2, "", "");
  InMemoryKvStore store;
  auto cluster = ClusterServer::Start("127.0.0.1:0", registry, store);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::vector<pid_t> pids = StartWorkers((*cluster)->address(), 1, /*tp_flag=*/3);
  EXPECT_EQ(WaitExit(pids[0], absl::Seconds(30)), 2);
  EXPECT_EQ(registry.registered(), 0);
}

// A live worker that the coordinator marked lost (or a coordinator that restarted and lost its
// registry) gets it back within the re-registration interval.
TEST(WorkerProcessTest, WorkerRegistersAgainAfterBeingMarkedLostOrACoordinatorRestart) {
  auto registry = std::make_unique<WorkerRegistry>(1, "", "");
  InMemoryKvStore store;
  auto cluster = ClusterServer::Start("127.0.0.1:0", *registry, store);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const int port = (*cluster)->port();
  std::vector<pid_t> pids = StartWorkers((*cluster)->address(), 1, 1, "0.2");
  ASSERT_TRUE(WaitUntil([&]() { return registry->complete(); }, absl::Seconds(30)));
  ASSERT_TRUE(registry->MarkLost(0).ok());
  EXPECT_FALSE(registry->complete());
  EXPECT_TRUE(WaitUntil([&]() { return registry->complete(); }, absl::Seconds(10)));
  EXPECT_EQ(registry->generation(), 2);

  // A new coordinator on the same port, knowing nothing.
  cluster->reset();
  registry = std::make_unique<WorkerRegistry>(1, "", "");
  auto restarted = ClusterServer::Start(absl::StrCat("127.0.0.1:", port), *registry, store);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_TRUE(WaitUntil([&]() { return registry->complete(); }, absl::Seconds(20)));

  kill(pids[0], SIGTERM);
  EXPECT_EQ(WaitExit(pids[0], absl::Seconds(15)), 0);
}

}  // namespace
}  // namespace tpserve
