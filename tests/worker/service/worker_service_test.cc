// The Worker service in this process on loopback, driven by a real gRPC client: LoadModel of a
// tiny golden checkpoint, Execute streams of batched prefill + decode plans whose greedy tokens
// and log-probs must match the transformers goldens, and the error paths (malformed plans, wrong
// generation, bad loads, Drain) with the service still answering Health; grpc.health.v1 following
// the engine's state; shard-loading progress reports.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>

#include "coordinator/api/health_client.h"
#include "grpcpp/grpcpp.h"
#include "tests/worker/model/golden.h"
#include "tests/worker/service/plans.h"
#include "tpserve/v1/worker.grpc.pb.h"
#include "worker/model/model_loader.h"
#include "worker/service/worker_server.h"

namespace tpserve {
namespace {

using testing::GoldenCase;
using ::testing::HasSubstr;
using testing::LoadGoldenCases;

constexpr const char* kModel = "llama-gqa-llama3";

std::string ModelPath() { return std::string(testing::kGoldenDir) + "/" + kModel; }

v1::LoadModelRequest LoadRequest(int64_t generation) {
  v1::LoadModelRequest req;
  req.set_model_path(ModelPath());
  auto files = OpenModelFiles(ModelPath());
  EXPECT_TRUE(files.ok()) << files.status();
  const ShardInputs in = ShardInputsOf(files->config, 1);
  v1::RankShard* shard = req.mutable_shard();
  shard->set_rank(0);
  shard->set_world_size(1);
  shard->mutable_q_heads()->set_end(in.num_heads);
  shard->mutable_kv_heads()->set_end(in.num_kv_heads);
  shard->mutable_ffn_columns()->set_end(in.ffn_size);
  shard->mutable_vocab()->set_end(in.vocab_size);
  req.set_generation(generation);
  req.mutable_communicator()->set_kind(v1::CommunicatorConfig::KIND_LOCAL);
  req.set_kv_block_size(testing::kBlockSize);
  req.set_memory_budget_bytes(64 << 20);
  req.set_max_batch_sequences(8);
  req.set_max_batch_tokens(256);
  req.set_max_context_length(256);
  return req;
}

class WorkerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WorkerOptions options;
    // An fp32 KV cache: logits and log-probs are held to transformers' at 1e-3, which measures
    // the ops, not fp16's rounding of K and V.
    options.device = OpenCpuDevice(1, CpuPrecision::kDefault, KvDType::kFp32);
    absl::StatusOr<std::unique_ptr<WorkerServer>> server =
        WorkerServer::Start("127.0.0.1:0", std::move(options));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    stub_ = v1::Worker::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                                    grpc::InsecureChannelCredentials()));
  }

  grpc::Status Load(const v1::LoadModelRequest& req, v1::LoadModelResponse* resp) {
    grpc::ClientContext ctx;
    return stub_->LoadModel(&ctx, req, resp);
  }

  v1::WorkerHealthResponse Health() {
    grpc::ClientContext ctx;
    v1::WorkerHealthResponse resp;
    EXPECT_TRUE(stub_->Health(&ctx, v1::WorkerHealthRequest(), &resp).ok());
    return resp;
  }

  // Sends one plan on a fresh stream and returns the stream's status (and the result, if any).
  grpc::Status ExecuteOne(const v1::StepPlan& plan, v1::StepResult* result) {
    grpc::ClientContext ctx;
    auto stream = stub_->Execute(&ctx);
    EXPECT_TRUE(stream->Write(plan));
    stream->WritesDone();
    v1::StepResult r;
    while (stream->Read(&r)) *result = r;
    return stream->Finish();
  }

  std::unique_ptr<WorkerServer> server_;
  std::unique_ptr<v1::Worker::Stub> stub_;
};

TEST_F(WorkerServiceTest, LoadsAndDecodesGoldenTokensBatched) {
  EXPECT_EQ(Health().state(), v1::WorkerHealthResponse::STATE_IDLE);
  v1::LoadModelResponse loaded;
  ASSERT_TRUE(Load(LoadRequest(1), &loaded).ok());
  EXPECT_EQ(loaded.architecture(), "llama");
  EXPECT_EQ(loaded.num_layers(), 2);
  // One rank holds every tensor: the file's bytes less its JSON header.
  const int64_t file_bytes = std::filesystem::file_size(ModelPath() + "/model.safetensors");
  EXPECT_LE(loaded.weight_bytes(), file_bytes);
  EXPECT_GE(loaded.weight_bytes(), file_bytes - 16384);
  // 8 sequences of 256 positions in blocks of 16 cap the pool.
  EXPECT_EQ(loaded.kv_blocks(), 8 * 256 / 16);
  EXPECT_GT(loaded.load_time_ms(), 0.0);
  v1::WorkerHealthResponse health = Health();
  EXPECT_EQ(health.state(), v1::WorkerHealthResponse::STATE_READY);
  EXPECT_EQ(health.generation(), 1);

  const std::vector<GoldenCase> cases = LoadGoldenCases(kModel);
  ASSERT_EQ(cases.size(), 3u);
  grpc::ClientContext ctx;
  auto stream = stub_->Execute(&ctx);
  int64_t steps = 0;
  const auto tokens = testing::DecodeGreedy(cases, 1, [&](const v1::StepPlan& plan) {
    EXPECT_TRUE(stream->Write(plan));
    v1::StepResult result;
    EXPECT_TRUE(stream->Read(&result));
    EXPECT_EQ(result.generation(), 1);
    EXPECT_EQ(result.rank(), 0);
    EXPECT_GT(result.timing().total_us(), 0);
    EXPECT_EQ(result.timing().collective_us(), 0);  // one rank: no data plane
    ++steps;
    return result;
  });
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  for (size_t i = 0; i < cases.size(); ++i) EXPECT_EQ(tokens[i], cases[i].greedy) << "case " << i;
  EXPECT_EQ(Health().steps(), static_cast<uint64_t>(steps));
}

// The chosen token's log-prob and the top alternatives are the log-softmax of the reference
// logits of the prompt's last position.
TEST_F(WorkerServiceTest, ReturnsLogprobsOfTheReferenceDistribution) {
  v1::LoadModelResponse loaded;
  ASSERT_TRUE(Load(LoadRequest(1), &loaded).ok());
  const std::vector<GoldenCase> cases = LoadGoldenCases(kModel);
  ASSERT_EQ(cases.size(), 3u);
  const GoldenCase& c = cases[2];
  v1::StepPlan plan;
  plan.set_generation(1);
  v1::SequenceStep* seq = plan.add_sequences();
  *seq = testing::SequenceOf(7, c.input_ids, 0, testing::BlocksPerSequence({c}));
  seq->mutable_sampling()->set_logprobs(true);
  seq->mutable_sampling()->set_top_logprobs(3);
  v1::StepResult result;
  ASSERT_TRUE(ExecuteOne(plan, &result).ok());
  ASSERT_EQ(result.tokens_size(), 1);
  const v1::SampledToken& t = result.tokens(0);
  EXPECT_EQ(t.sequence_id(), 7u);
  EXPECT_EQ(t.token_id(), c.greedy[0]);

  const int64_t V = c.logits_shape[1];
  const float* last = &c.logits[(c.logits_shape[0] - 1) * V];
  double max = last[0], sum = 0.0;
  for (int64_t v = 0; v < V; ++v) max = std::max<double>(max, last[v]);
  for (int64_t v = 0; v < V; ++v) sum += std::exp(last[v] - max);
  const auto ref_logprob = [&](int32_t id) { return last[id] - max - std::log(sum); };
  EXPECT_NEAR(t.logprob(), ref_logprob(c.greedy[0]), 1e-3);
  ASSERT_EQ(t.top_ids_size(), 3);
  ASSERT_EQ(t.top_logprobs_size(), 3);
  EXPECT_EQ(t.top_ids(0), c.greedy[0]);
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(t.top_logprobs(k), ref_logprob(t.top_ids(k)), 1e-3);
  EXPECT_GE(t.top_logprobs(0), t.top_logprobs(1));
  EXPECT_GE(t.top_logprobs(1), t.top_logprobs(2));
}

// Suppressing the greedy token makes the reference's second choice win.
TEST_F(WorkerServiceTest, SuppressedTokenIsNeverSampled) {
  v1::LoadModelResponse loaded;
  ASSERT_TRUE(Load(LoadRequest(1), &loaded).ok());
  const GoldenCase c = LoadGoldenCases(kModel).at(2);
  const int64_t V = c.logits_shape[1];
  const float* last = &c.logits[(c.logits_shape[0] - 1) * V];
  int32_t second = -1;
  for (int32_t v = 0; v < V; ++v) {
    if (v != c.greedy[0] && (second < 0 || last[v] > last[second])) second = v;
  }
  v1::StepPlan plan;
  plan.set_generation(1);
  v1::SequenceStep* seq = plan.add_sequences();
  *seq = testing::SequenceOf(0, c.input_ids, 0, testing::BlocksPerSequence({c}));
  seq->mutable_sampling()->add_suppressed_token_ids(c.greedy[0]);
  v1::StepResult result;
  ASSERT_TRUE(ExecuteOne(plan, &result).ok());
  ASSERT_EQ(result.tokens_size(), 1);
  EXPECT_EQ(result.tokens(0).token_id(), second);
}

TEST_F(WorkerServiceTest, MalformedPlansBreakTheWorkerUntilANewGeneration) {
  v1::LoadModelResponse loaded;
  ASSERT_TRUE(Load(LoadRequest(1), &loaded).ok());
  v1::StepPlan plan;
  plan.set_generation(1);
  *plan.add_sequences() = testing::SequenceOf(0, {1, 2, 384}, 0, 1);  // vocab is 384
  v1::StepResult result;
  grpc::Status st = ExecuteOne(plan, &result);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("token 384 outside the vocabulary [0, 384)"));
  v1::WorkerHealthResponse health = Health();
  EXPECT_EQ(health.state(), v1::WorkerHealthResponse::STATE_BROKEN);
  EXPECT_THAT(health.message(), HasSubstr("outside the vocabulary"));

  // Refused while broken, and the same generation cannot be loaded again.
  *plan.mutable_sequences(0) = testing::SequenceOf(0, {1, 2, 3}, 0, 1);
  st = ExecuteOne(plan, &result);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), HasSubstr("BROKEN"));
  st = Load(LoadRequest(1), &loaded);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), HasSubstr("new generation"));

  // A new generation serves again; a block table too short for its positions breaks it again.
  ASSERT_TRUE(Load(LoadRequest(2), &loaded).ok());
  EXPECT_EQ(Health().state(), v1::WorkerHealthResponse::STATE_READY);
  plan.set_generation(2);
  *plan.mutable_sequences(0) = testing::SequenceOf(0, std::vector<int32_t>(20, 5), 0, 1);
  st = ExecuteOne(plan, &result);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("1 blocks of 16 cannot hold 20 positions"));
  EXPECT_EQ(Health().state(), v1::WorkerHealthResponse::STATE_BROKEN);

  // Sampling options out of range are malformed too.
  ASSERT_TRUE(Load(LoadRequest(3), &loaded).ok());
  plan.set_generation(3);
  *plan.mutable_sequences(0) = testing::SequenceOf(0, {1, 2, 3}, 0, 1);
  plan.mutable_sequences(0)->mutable_sampling()->set_temperature(-1.0f);
  st = ExecuteOne(plan, &result);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("temperature must be >= 0"));
  EXPECT_EQ(Health().state(), v1::WorkerHealthResponse::STATE_BROKEN);
}

// Results already computed are delivered before the stream ends with the failing plan's error.
TEST_F(WorkerServiceTest, ResultsBeforeAFailedPlanAreDelivered) {
  v1::LoadModelResponse loaded;
  ASSERT_TRUE(Load(LoadRequest(1), &loaded).ok());
  grpc::ClientContext ctx;
  auto stream = stub_->Execute(&ctx);
  v1::StepPlan good;
  good.set_generation(1);
  *good.add_sequences() = testing::SequenceOf(0, {5, 6, 7}, 0, 1);
  v1::StepPlan bad = good;
  bad.set_step_id(1);
  bad.mutable_sequences(0)->set_start_position(-1);
  ASSERT_TRUE(stream->Write(good));
  stream->Write(bad);
  stream->WritesDone();
  v1::StepResult result;
  ASSERT_TRUE(stream->Read(&result));
  EXPECT_EQ(result.step_id(), 0u);
  EXPECT_EQ(result.tokens_size(), 1);
  EXPECT_FALSE(stream->Read(&result));
  const grpc::Status st = stream->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("step 1"));
}

TEST_F(WorkerServiceTest, PlanOfAnotherGenerationIsRefusedWithoutBreaking) {
  v1::LoadModelResponse loaded;
  ASSERT_TRUE(Load(LoadRequest(4), &loaded).ok());
  v1::StepPlan plan;
  plan.set_generation(3);
  *plan.add_sequences() = testing::SequenceOf(0, {1, 2, 3}, 0, 1);
  v1::StepResult result;
  const grpc::Status st = ExecuteOne(plan, &result);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), HasSubstr("belongs to generation 3"));
  EXPECT_EQ(Health().state(), v1::WorkerHealthResponse::STATE_READY);
}

TEST_F(WorkerServiceTest, BadLoadsAreClearErrors) {
  v1::LoadModelResponse loaded;
  v1::LoadModelRequest req = LoadRequest(1);
  req.set_model_path("/nonexistent/model.gguf");
  grpc::Status st = Load(req, &loaded);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(st.error_message(), HasSubstr("/nonexistent/model.gguf"));
  v1::WorkerHealthResponse health = Health();
  EXPECT_EQ(health.state(), v1::WorkerHealthResponse::STATE_IDLE);
  EXPECT_THAT(health.message(), HasSubstr("/nonexistent/model.gguf"));

  req = LoadRequest(1);
  req.mutable_shard()->set_rank(1);
  req.mutable_shard()->set_world_size(2);
  st = Load(req, &loaded);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("sent to the worker of rank 0"));

  req = LoadRequest(1);
  req.mutable_shard()->mutable_vocab()->set_end(100);
  st = Load(req, &loaded);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), HasSubstr("differs from this model's plan"));

  req = LoadRequest(1);
  req.set_memory_budget_bytes(100000);  // less than the weights
  st = Load(req, &loaded);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(st.error_message(), HasSubstr("too small"));

  req = LoadRequest(1);
  req.mutable_communicator()->set_kind(v1::CommunicatorConfig::KIND_NCCL);
  st = Load(req, &loaded);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(Health().state(), v1::WorkerHealthResponse::STATE_IDLE);
}

TEST_F(WorkerServiceTest, DrainRefusesPlansAndReleasesTheModel) {
  v1::LoadModelResponse loaded;
  ASSERT_TRUE(Load(LoadRequest(1), &loaded).ok());
  {
    grpc::ClientContext ctx;
    v1::DrainResponse resp;
    ASSERT_TRUE(stub_->Drain(&ctx, v1::DrainRequest(), &resp).ok());
  }
  v1::WorkerHealthResponse health = Health();
  EXPECT_EQ(health.state(), v1::WorkerHealthResponse::STATE_DRAINING);
  EXPECT_EQ(health.generation(), 0);
  v1::StepPlan plan;
  plan.set_generation(1);
  *plan.add_sequences() = testing::SequenceOf(0, {1, 2, 3}, 0, 1);
  v1::StepResult result;
  EXPECT_EQ(ExecuteOne(plan, &result).error_code(), grpc::StatusCode::UNAVAILABLE);
  // Loading again serves again.
  ASSERT_TRUE(Load(LoadRequest(2), &loaded).ok());
  plan.set_generation(2);
  EXPECT_TRUE(ExecuteOne(plan, &result).ok());
}

// A client that walks away mid-stream leaves the worker serving.
TEST_F(WorkerServiceTest, CancelledStreamLeavesTheWorkerReady) {
  v1::LoadModelResponse loaded;
  ASSERT_TRUE(Load(LoadRequest(1), &loaded).ok());
  {
    grpc::ClientContext ctx;
    auto stream = stub_->Execute(&ctx);
    v1::StepPlan plan;
    plan.set_generation(1);
    *plan.add_sequences() = testing::SequenceOf(0, {1, 2, 3}, 0, 1);
    ASSERT_TRUE(stream->Write(plan));
    ctx.TryCancel();
    stream->Finish();
  }
  EXPECT_EQ(Health().state(), v1::WorkerHealthResponse::STATE_READY);
  v1::StepPlan plan;
  plan.set_generation(1);
  *plan.add_sequences() = testing::SequenceOf(0, {1, 2, 3}, 0, 1);
  v1::StepResult result;
  EXPECT_TRUE(ExecuteOne(plan, &result).ok());
}

// grpc.health.v1 on the control port: "" and the Worker service SERVING only while a model is
// served; "liveness" SERVING throughout (a rank waiting for its group is alive, not ready).
TEST_F(WorkerServiceTest, GrpcHealthIsServingOnlyWhileAModelIsServed) {
  const std::string address = absl::StrCat("127.0.0.1:", server_->port());
  const auto check = [&](const std::string& service) {
    absl::StatusOr<HealthState> h = CheckHealth(address, service, absl::Seconds(5));
    EXPECT_TRUE(h.ok()) << h.status();
    return h.value_or(HealthState::kUnknown);
  };
  EXPECT_EQ(check(""), HealthState::kNotServing);  // idle: nothing loaded
  EXPECT_EQ(check("tpserve.v1.Worker"), HealthState::kNotServing);
  EXPECT_EQ(check("liveness"), HealthState::kServing);

  v1::LoadModelResponse loaded;
  ASSERT_TRUE(Load(LoadRequest(1), &loaded).ok());
  EXPECT_EQ(check(""), HealthState::kServing);
  EXPECT_EQ(check("tpserve.v1.Worker"), HealthState::kServing);

  // A malformed plan breaks the rank: not ready until a new generation loads.
  v1::StepPlan bad;
  bad.set_generation(1);
  *bad.add_sequences() = testing::SequenceOf(0, {1 << 30}, 0, 1);  // token past the vocabulary
  v1::StepResult result;
  EXPECT_FALSE(ExecuteOne(bad, &result).ok());
  EXPECT_EQ(check(""), HealthState::kNotServing);
  ASSERT_TRUE(Load(LoadRequest(2), &loaded).ok());
  EXPECT_EQ(check(""), HealthState::kServing);

  {
    grpc::ClientContext ctx;
    v1::DrainResponse resp;
    ASSERT_TRUE(stub_->Drain(&ctx, v1::DrainRequest(), &resp).ok());
  }
  EXPECT_EQ(check(""), HealthState::kNotServing);
  EXPECT_EQ(check("liveness"), HealthState::kServing);
  // grpc.health.v1 Check answers NOT_FOUND for a service it does not know.
  EXPECT_EQ(CheckHealth(address, "no.such.Service", absl::Seconds(5)).status().code(),
            absl::StatusCode::kNotFound);
}

// The worker reports its slice's loading progress: increasing byte counts against the slice's
// total (the LoadModel response's weight_bytes), one report per ~10 %, the last one complete.
// The one before the last shows the counting saw (nearly) every byte the loader read. While
// the shard loads, grpc.health.v1 says NOT_SERVING.
TEST(WorkerLoadProgressTest, ReportsBytesOfTheSliceUpToItsTotal) {
  std::vector<std::pair<int64_t, int64_t>> reports;
  absl::Mutex mu;
  std::atomic<int> port{0};
  std::vector<HealthState> health_while_loading;
  WorkerOptions options;
  options.threads = 1;
  options.on_load_progress = [&](int64_t done, int64_t total) {
    absl::MutexLock lock(&mu);
    reports.emplace_back(done, total);
    if (reports.size() == 1) {  // mid-load: the gRPC threads answer while the executor loads
      absl::StatusOr<HealthState> h =
          CheckHealth(absl::StrCat("127.0.0.1:", port.load()), "", absl::Seconds(5));
      health_while_loading.push_back(h.value_or(HealthState::kUnknown));
    }
  };
  absl::StatusOr<std::unique_ptr<WorkerServer>> server =
      WorkerServer::Start("127.0.0.1:0", std::move(options));
  ASSERT_TRUE(server.ok()) << server.status();
  port = (*server)->port();
  auto stub = v1::Worker::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", port.load()),
                                                      grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::LoadModelResponse loaded;
  ASSERT_TRUE(stub->LoadModel(&ctx, LoadRequest(1), &loaded).ok());

  absl::MutexLock lock(&mu);
  ASSERT_GE(reports.size(), 3u);
  EXPECT_LE(reports.size(), 11u);  // one per 10 % step at most, the final one included
  const int64_t total = loaded.weight_bytes();
  for (size_t i = 0; i < reports.size(); ++i) {
    EXPECT_EQ(reports[i].second, total) << "report " << i;
    if (i > 0) {
      EXPECT_GT(reports[i].first, reports[i - 1].first) << "report " << i;
    }
  }
  EXPECT_EQ(reports.back().first, total);
  EXPECT_GE(reports[reports.size() - 2].first * 10, total * 9);
  EXPECT_THAT(health_while_loading, ::testing::ElementsAre(HealthState::kNotServing));
  EXPECT_EQ(CheckHealth(absl::StrCat("127.0.0.1:", port.load()), "", absl::Seconds(5))
                .value_or(HealthState::kUnknown),
            HealthState::kServing);
}

}  // namespace
}  // namespace tpserve
