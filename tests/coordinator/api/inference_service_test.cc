// The Inference service in-process over real gRPC on loopback, with a fake StepExecutor behind
// the engine (policy only: the tokens are (last token + 1) % vocab). Checks the reactors: the
// stream, Complete, cancellation reaching the engine, errors before the engine exists.
#include "coordinator/api/inference_service.h"

#include <map>
#include <memory>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace tpserve::api {
namespace {

using ::testing::ElementsAre;

class CountingExecutor : public engine::StepExecutor {
 public:
  absl::StatusOr<engine::StepOutput> Execute(const engine::StepPlan& plan) override {
    absl::SleepFor(delay_);
    engine::StepOutput out;
    absl::MutexLock lock(&mu_);
    ++steps_;
    for (const engine::PlanSequence& s : plan.sequences) {
      if (s.sample)
        out.tokens.push_back({.seq_id = s.seq_id, .token = (s.tokens.back() + 1) % 256});
    }
    return out;
  }
  bool ready() const override { return true; }
  int steps() const {
    absl::MutexLock lock(&mu_);
    return steps_;
  }
  absl::Duration delay_ = absl::ZeroDuration();

 private:
  mutable absl::Mutex mu_;
  int steps_ = 0;
};

class InferenceServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = LoadServedModel("tests/data/golden/models/llama-mha");
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    service_ = std::make_unique<InferenceService>(*model_, ServingInfo{.tensor_parallel = 2});
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(service_.get());
    server_ = b.BuildAndStart();
    ASSERT_NE(port, 0);
    stub_ = v1::Inference::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                       grpc::InsecureChannelCredentials()));
  }
  void StartEngine() {
    engine::EngineConfig c;
    c.vocab_size = static_cast<int>(model_->config().vocab_size);
    c.scheduler.num_blocks = 64;
    c.scheduler.max_model_len = model_->context_length();
    c.scheduler.max_num_seqs = 8;
    c.scheduler.max_num_batched_tokens = 256;
    auto e = engine::Engine::Create(c, exec_, nullptr);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    service_->set_engine(engine_.get(), 64);
  }
  void TearDown() override {
    server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    if (engine_) engine_->Stop();
  }

  static v1::GenerateRequest Request(std::vector<int32_t> ids, int max_tokens) {
    v1::GenerateRequest r;
    r.mutable_prompt()->mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
    r.mutable_sampling()->set_temperature(0);
    r.mutable_stopping()->set_max_tokens(max_tokens);
    r.mutable_stopping()->set_ignore_eos(true);
    return r;
  }

  CountingExecutor exec_;
  std::unique_ptr<ServedModel> model_;
  std::unique_ptr<InferenceService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

TEST_F(InferenceServiceTest, UnavailableBeforeTheWorkersAreLoaded) {
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, Request({1, 2}, 3));
  v1::GenerateResponse resp;
  EXPECT_FALSE(reader->Read(&resp));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  // Model facts do not need the workers.
  grpc::ClientContext info_ctx;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&info_ctx, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.hidden_size(), 64);  // tests/data/golden/models/llama-mha/config.json
  EXPECT_EQ(info.num_heads(), 4);
  EXPECT_EQ(info.context_length(), 256);
  EXPECT_EQ(info.tensor_parallel(), 2);
  EXPECT_EQ(info.format(), "safetensors");
}

TEST_F(InferenceServiceTest, StreamsOneResponsePerTokenThenUsage) {
  StartEngine();
  grpc::ClientContext ctx;
  v1::GenerateRequest req = Request({10, 11}, 4);
  req.set_request_id("mine");
  auto reader = stub_->Generate(&ctx, req);
  std::vector<int32_t> ids;
  v1::GenerateResponse resp;
  int n = 0;
  while (reader->Read(&resp)) {
    ++n;
    EXPECT_EQ(resp.request_id(), "mine");
    for (const auto& t : resp.tokens()) ids.push_back(t.id());
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_THAT(ids, ElementsAre(12, 13, 14, 15));
  EXPECT_EQ(n, 4);
  EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(resp.usage().prompt_tokens(), 2);
  EXPECT_EQ(resp.usage().completion_tokens(), 4);
}

TEST_F(InferenceServiceTest, CompleteAnswersOnce) {
  StartEngine();
  grpc::ClientContext ctx;
  v1::CompleteResponse resp;
  v1::GenerateRequest req = Request({40}, 3);
  req.mutable_output()->set_echo_prompt(true);
  ASSERT_TRUE(stub_->Complete(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.tokens_size(), 3);
  EXPECT_EQ(resp.tokens(2).id(), 43);
  EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_LENGTH);
  ASSERT_EQ(resp.prompt_tokens_size(), 1);
  EXPECT_EQ(resp.prompt_tokens(0).id(), 40);
  EXPECT_FALSE(resp.request_id().empty());
}

TEST_F(InferenceServiceTest, GenerateStreamsEachCompletionWithItsIndex) {
  StartEngine();
  grpc::ClientContext ctx;
  v1::GenerateRequest req = Request({10, 11, 12}, 3);
  req.set_n(3);
  auto reader = stub_->Generate(&ctx, req);
  std::map<int, std::vector<int32_t>> ids;
  std::map<int, v1::GenerateResponse> ends;
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    for (const auto& t : resp.tokens()) ids[resp.index()].push_back(t.id());
    if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) ends[resp.index()] = resp;
  }
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(ids.size(), 3u);
  ASSERT_EQ(ends.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(ids[i], ElementsAre(13, 14, 15)) << "completion " << i;  // greedy fake
    EXPECT_EQ(ends[i].finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(ends[i].usage().completion_tokens(), 3);  // its own
    EXPECT_EQ(ends[i].usage().prompt_tokens(), 3);
  }
}

TEST_F(InferenceServiceTest, CompleteFillsChoicesAndSumsUsage) {
  StartEngine();
  for (int n : {1, 2}) {
    grpc::ClientContext ctx;
    v1::CompleteResponse resp;
    v1::GenerateRequest req = Request({40}, 3);
    req.set_n(n);
    req.mutable_sampling()->set_seed(9);
    ASSERT_TRUE(stub_->Complete(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.choices_size(), n);
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(resp.choices(i).index(), i);
      ASSERT_EQ(resp.choices(i).tokens_size(), 3);
      EXPECT_EQ(resp.choices(i).tokens(2).id(), 43);
      EXPECT_EQ(resp.choices(i).finish_reason(), v1::FINISH_REASON_LENGTH);
    }
    // The fields from before n repeat choice 0; usage covers all completions.
    ASSERT_EQ(resp.tokens_size(), 3);
    EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(resp.usage().prompt_tokens(), 1);
    EXPECT_EQ(resp.usage().completion_tokens(), 3 * n);
    EXPECT_EQ(resp.usage().seed(), 9u);
  }
}

TEST_F(InferenceServiceTest, NOutsideZeroToSixteenIsInvalidArgumentNamingN) {
  StartEngine();
  for (int n : {-1, 17}) {
    grpc::ClientContext ctx;
    v1::CompleteResponse resp;
    v1::GenerateRequest req = Request({40}, 3);
    req.set_n(n);
    const grpc::Status st = stub_->Complete(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(st.error_message().rfind("n: ", 0), 0u) << st.error_message();
  }
  grpc::ClientContext ctx;
  v1::CompleteResponse resp;
  v1::GenerateRequest req = Request({40}, 2);
  req.set_n(0);  // 0 means 1
  ASSERT_TRUE(stub_->Complete(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.choices_size(), 1);
}

TEST_F(InferenceServiceTest, CancellingTheCallAbortsTheRequest) {
  exec_.delay_ = absl::Milliseconds(5);
  StartEngine();
  auto ctx = std::make_unique<grpc::ClientContext>();
  v1::GenerateRequest req = Request({1}, 200);
  req.set_request_id("gone");
  auto reader = stub_->Generate(ctx.get(), req);
  v1::GenerateResponse resp;
  ASSERT_TRUE(reader->Read(&resp));
  ctx->TryCancel();
  while (reader->Read(&resp)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The engine lets go of it at the next step boundary: its id is free, and steps stop.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (engine_->stats().running > 0 && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(5));
  const int steps = exec_.steps();
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(exec_.steps(), steps);
  EXPECT_LT(steps, 200);
  grpc::ClientContext abort_ctx;
  v1::AbortRequest abort;
  abort.set_request_id("gone");
  v1::AbortResponse abort_resp;
  EXPECT_EQ(stub_->Abort(&abort_ctx, abort, &abort_resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(InferenceServiceTest, AbortFromAnotherCallEndsWithAborted) {
  exec_.delay_ = absl::Milliseconds(5);
  StartEngine();
  grpc::ClientContext ctx;
  v1::GenerateRequest req = Request({1}, 200);
  req.set_request_id("victim");
  auto reader = stub_->Generate(&ctx, req);
  v1::GenerateResponse resp;
  ASSERT_TRUE(reader->Read(&resp));
  grpc::ClientContext abort_ctx;
  v1::AbortRequest abort;
  abort.set_request_id("victim");
  v1::AbortResponse abort_resp;
  ASSERT_TRUE(stub_->Abort(&abort_ctx, abort, &abort_resp).ok());
  while (reader->Read(&resp)) {
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_ABORTED);
}

TEST_F(InferenceServiceTest, EmbedOnADecoderIsAFailedPrecondition) {
  grpc::ClientContext ctx;
  v1::EmbedRequest req;
  req.add_inputs("x");
  v1::EmbedResponse resp;
  EXPECT_EQ(stub_->Embed(&ctx, req, &resp).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

}  // namespace
}  // namespace tpserve::api
