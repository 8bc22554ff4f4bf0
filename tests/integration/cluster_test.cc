// End to end on loopback: a real tpserve-coordinator and 2 or 3 real tpserve-worker processes
// (real gRPC, real Gloo), driven by a gRPC client. Expected tokens come from the transformers
// goldens in tests/data/golden/models/ (see its README).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/api/health_client.h"
#include "gmock/gmock.h"
#include "google/protobuf/unknown_field_set.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/local_cluster.h"

namespace tpserve::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kGolden[] = "tests/data/golden/models";

nlohmann::json Expected(const std::string& folder) {
  std::ifstream in(absl::StrCat(kGolden, "/", folder, "/expected.json"));
  return nlohmann::json::parse(in);
}

struct Result {
  std::vector<int32_t> ids;
  std::string text;
  v1::GenerateResponse last;
  grpc::Status status;
  int responses = 0;
};

Result Generate(v1::Inference::Stub& stub, const v1::GenerateRequest& req,
                absl::Duration timeout = absl::Seconds(120)) {
  Result r;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  auto reader = stub.Generate(&ctx, req);
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    ++r.responses;
    for (const v1::Token& t : resp.tokens()) r.ids.push_back(t.id());
    r.text += resp.text();
    r.last = resp;
  }
  r.status = reader->Finish();
  return r;
}

v1::GenerateRequest Greedy(const std::vector<int32_t>& prompt, int max_tokens) {
  v1::GenerateRequest req;
  req.mutable_prompt()->mutable_tokens()->mutable_ids()->Add(prompt.begin(), prompt.end());
  req.mutable_sampling()->set_temperature(0);
  req.mutable_stopping()->set_max_tokens(max_tokens);
  req.mutable_stopping()->set_ignore_eos(true);  // the goldens feed EOS back like any token
  return req;
}

// Every case of a tiny golden checkpoint, all at once (continuous batching), greedy 16 tokens.
void ExpectTinyGoldens(const std::string& folder, int tp) {
  LocalCluster cluster(absl::StrCat(kGolden, "/", folder), tp);
  ASSERT_TRUE(cluster.WaitHealth(true, absl::Seconds(90)).ok()) << cluster.Logs();
  const nlohmann::json expected = Expected(folder);
  auto stub = cluster.Stub();
  std::vector<Result> results(expected["cases"].size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      const auto& c = expected["cases"][i];
      results[i] = Generate(*stub, Greedy(c["input_ids"].get<std::vector<int32_t>>(),
                                          static_cast<int>(c["greedy"].size())));
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& c = expected["cases"][i];
    ASSERT_TRUE(results[i].status.ok())
        << "case " << i << ": " << results[i].status.error_message() << "\n"
        << cluster.Logs();
    EXPECT_EQ(results[i].ids, c["greedy"].get<std::vector<int32_t>>()) << folder << " case " << i;
    EXPECT_EQ(results[i].last.finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(results[i].last.usage().prompt_tokens(), static_cast<int>(c["input_ids"].size()));
    EXPECT_EQ(results[i].last.usage().completion_tokens(), static_cast<int>(c["greedy"].size()));
  }
}

TEST(ClusterTest, TinyGoldensTp2) { ExpectTinyGoldens("llama-gqa-llama3", 2); }

TEST(ClusterTest, TinyGoldensTp3UnevenHeads) { ExpectTinyGoldens("qwen2", 3); }

TEST(ClusterTest, BadRequestsGetClearErrors) {
  LocalCluster cluster(absl::StrCat(kGolden, "/llama-mha"), 2);
  ASSERT_TRUE(cluster.WaitHealth(true, absl::Seconds(90)).ok()) << cluster.Logs();
  auto stub = cluster.Stub();
  auto code_of = [&](const v1::GenerateRequest& req) { return Generate(*stub, req).status; };

  v1::GenerateRequest empty = Greedy({}, 4);
  grpc::Status st = code_of(empty);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("prompt"));

  v1::GenerateRequest negative = Greedy({5, 6}, 4);
  negative.mutable_stopping()->set_max_tokens(-3);
  st = code_of(negative);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("stopping.max_tokens"));

  v1::GenerateRequest too_long = Greedy(std::vector<int32_t>(300, 7), 1);  // context 256
  st = code_of(too_long);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("context"));

  v1::GenerateRequest bad_id = Greedy({5, 100000}, 4);
  EXPECT_EQ(code_of(bad_id).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::GenerateRequest top_p = Greedy({5}, 4);
  top_p.mutable_sampling()->set_top_p(1.5f);
  st = code_of(top_p);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("sampling.top_p"));

  // A field from a newer client: rejected, never silently ignored.
  v1::GenerateRequest unknown = Greedy({5}, 4);
  unknown.mutable_sampling()
      ->GetReflection()
      ->MutableUnknownFields(unknown.mutable_sampling())
      ->AddVarint(999, 1);
  st = code_of(unknown);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("sampling.<unknown field 999>"));

  // No tokenizer in the tiny checkpoints: text needs one.
  v1::GenerateRequest text;
  text.mutable_prompt()->set_text("hello");
  EXPECT_EQ(code_of(text).error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  // Abort of an unknown id; the server still serves afterwards.
  {
    grpc::ClientContext ctx;
    v1::AbortRequest req;
    req.set_request_id("nope");
    v1::AbortResponse resp;
    EXPECT_EQ(stub->Abort(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  Result ok = Generate(*stub, Greedy({5, 6, 7}, 3));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.ids.size(), 3u);
  EXPECT_TRUE(cluster.CoordinatorAlive());
}

// The coordinator refuses what cannot work with a message that says what to fix, at once.
TEST(ClusterTest, CoordinatorStartupErrors) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--model", "/nonexistent/model.gguf", "--tp", "2"}, "/nonexistent/model.gguf"},
      {{"--model", absl::StrCat(kGolden, "/llama-mha"), "--tp", "5"}, "larger than the model"},
  };
  for (const Case& c : cases) {
    const std::string log = "/tmp/tpserve-it-startup.log";
    const pid_t pid = fork();
    if (pid == 0) {
      freopen(log.c_str(), "w", stderr);
      freopen(log.c_str(), "a", stdout);
      std::vector<std::string> argv = {TPSERVE_COORDINATOR_BIN, "--listen", "127.0.0.1:0"};
      argv.insert(argv.end(), c.args.begin(), c.args.end());
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    int status = 0;
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (waitpid(pid, &status, WNOHANG) == 0 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    if (absl::Now() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      ADD_FAILURE() << "the coordinator did not exit for " << c.args[1];
      continue;
    }
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << c.args[1];
    std::ifstream in(log);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_THAT(text, HasSubstr(c.message));
  }
}

// Workers that do not fit the group are refused; the group keeps serving.
TEST(ClusterTest, MismatchedAndDuplicateWorkersAreRefused) {
  LocalCluster cluster(absl::StrCat(kGolden, "/llama-mha"), 2);
  ASSERT_TRUE(cluster.WaitHealth(true, absl::Seconds(90)).ok()) << cluster.Logs();
  const pid_t wrong_size = cluster.StartExtraWorker("wrong-size", 0, 3);
  cluster.StartExtraWorker("duplicate", 1, 2);
  int status = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (waitpid(wrong_size, &status, WNOHANG) == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_THAT(cluster.ReadLog("wrong-size"), HasSubstr("group of 3"));
  while (cluster.ReadLog("duplicate").find("already held") == std::string::npos &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_THAT(cluster.ReadLog("duplicate"), HasSubstr("already held"));
  ASSERT_TRUE(cluster.WaitHealth(true, absl::Seconds(5)).ok());
  auto stub = cluster.Stub();
  const nlohmann::json expected = Expected("llama-mha");
  const auto& c = expected["cases"][0];
  Result r = Generate(*stub, Greedy(c["input_ids"].get<std::vector<int32_t>>(), 16));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, c["greedy"].get<std::vector<int32_t>>());
}

// Starts a 250-token greedy stream on the tiny model, kills rank 1 after its first response (or
// freezes it: SIGSTOP), and reads the stream to its end: the final status and the time from the
// kill to the end.
std::pair<grpc::Status, absl::Duration> KillRankDuringAStream(LocalCluster& cluster,
                                                              v1::Inference::Stub& stub,
                                                              bool freeze = false) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(90)));
  auto reader = stub.Generate(&ctx, Greedy({3}, 250));
  v1::GenerateResponse resp;
  EXPECT_TRUE(reader->Read(&resp)) << cluster.Logs();
  const absl::Time killed = absl::Now();
  if (freeze) {
    cluster.FreezeWorker(1);
  } else {
    cluster.KillWorker(1);
  }
  while (reader->Read(&resp)) {
  }
  const grpc::Status st = reader->Finish();
  return {st, absl::Now() - killed};
}

// With --resume-window-s 0 (no waiting for the rank to come back).
TEST(ClusterTest, KilledWorkerEndsTheStreamWithUnavailableAndTheGroupReforms) {
  LocalCluster cluster(absl::StrCat(kGolden, "/llama-mha"), 2, {"--resume-window-s", "0"});
  ASSERT_TRUE(cluster.WaitHealth(true, absl::Seconds(90)).ok()) << cluster.Logs();
  auto stub = cluster.Stub();

  const auto [st, took] = KillRankDuringAStream(cluster, *stub);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_THAT(st.error_message(), HasSubstr("worker"));
  EXPECT_LT(took, absl::Seconds(5));
  EXPECT_TRUE(cluster.WaitHealth(false, absl::Seconds(5)).ok());
  EXPECT_TRUE(cluster.CoordinatorAlive());
  // Not ready, but alive: the liveness service a Kubernetes liveness probe asks stays SERVING.
  absl::StatusOr<HealthState> alive = CheckHealth(cluster.address(), "liveness", absl::Seconds(2));
  ASSERT_TRUE(alive.ok()) << alive.status();
  EXPECT_EQ(*alive, HealthState::kServing);

  // Meanwhile new requests are refused, not hung.
  Result refused = Generate(*stub, Greedy({3}, 2), absl::Seconds(10));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);

  // The rank comes back: it registers again, the group re-forms and serves the goldens.
  cluster.RestartWorker(1);
  ASSERT_TRUE(cluster.WaitHealth(true, absl::Seconds(60)).ok()) << cluster.Logs();
  const nlohmann::json expected = Expected("llama-mha");
  const auto& c = expected["cases"][1];
  Result again = Generate(*stub, Greedy(c["input_ids"].get<std::vector<int32_t>>(), 16));
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(again.ids, c["greedy"].get<std::vector<int32_t>>());
}

// A rank that freezes mid-stream (SIGSTOP: its connections stay open, nothing answers, as with a
// hung host or a link cut without a reset) is noticed by the health probes, well before the
// survivors' 30 s collective timeout or the 60 s step deadline: the stream ends UNAVAILABLE
// naming the probes, health says NOT_SERVING, and once the rank runs again the group re-forms.
TEST(ClusterTest, FrozenWorkerIsNoticedByHealthProbesAndTheGroupReforms) {
  LocalCluster cluster(
      absl::StrCat(kGolden, "/llama-mha"), 2,
      {"--resume-window-s", "0", "--collective-timeout-ms", "30000", "--step-timeout-ms", "60000"});
  ASSERT_TRUE(cluster.WaitHealth(true, absl::Seconds(90)).ok()) << cluster.Logs();
  auto stub = cluster.Stub();
  const auto [st, took] = KillRankDuringAStream(cluster, *stub, /*freeze=*/true);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_THAT(st.error_message(), HasSubstr("health probes")) << cluster.Logs();
  EXPECT_LT(took, absl::Seconds(20)) << cluster.Logs();
  EXPECT_TRUE(cluster.WaitHealth(false, absl::Seconds(5)).ok());
  EXPECT_TRUE(cluster.CoordinatorAlive());

  cluster.ThawWorker(1);
  ASSERT_TRUE(cluster.WaitHealth(true, absl::Seconds(90)).ok()) << cluster.Logs();
  const nlohmann::json expected = Expected("llama-mha");
  const auto& c = expected["cases"][1];
  Result again = Generate(*stub, Greedy(c["input_ids"].get<std::vector<int32_t>>(), 16));
  ASSERT_TRUE(again.status.ok()) << again.status.error_message() << cluster.Logs();
  EXPECT_EQ(again.ids, c["greedy"].get<std::vector<int32_t>>());
}

// A rank that does not come back within the resume window: the stream ends UNAVAILABLE saying
// so, about when the window ends, and the coordinator stays up.
TEST(ClusterTest, ResumeWindowEndsWithUnavailableWhenTheRankStaysAway) {
  LocalCluster cluster(absl::StrCat(kGolden, "/llama-mha"), 2, {"--resume-window-s", "2"});
  ASSERT_TRUE(cluster.WaitHealth(true, absl::Seconds(90)).ok()) << cluster.Logs();
  auto stub = cluster.Stub();
  const auto [st, took] = KillRankDuringAStream(cluster, *stub);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_THAT(st.error_message(), HasSubstr("did not re-form within 2s"));
  EXPECT_GE(took, absl::Seconds(2));
  EXPECT_LT(took, absl::Seconds(10));
  EXPECT_TRUE(cluster.CoordinatorAlive());
}

// The default resume window: a rank killed mid-stream and started again, the stream goes on and
// ends OK with exactly the tokens of the same request run without a failure (SmolLM2 with the
// default int8x2 matmuls, whose rows do not depend on the batch: recomputing prompt + output in
// one prefill gives the bits the decode steps gave). Health is NOT_SERVING meanwhile.
TEST(ClusterTest, KilledWorkerMidStreamResumesWhenTheRankComesBack) {
  const std::string model = ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(model)) GTEST_SKIP() << model << " not found (fetch-models.sh)";
  LocalCluster cluster(model, 2, {"--max-context", "512"});
  ASSERT_TRUE(cluster.WaitHealth(true, absl::Seconds(120)).ok()) << cluster.Logs();
  auto stub = cluster.Stub();
  const v1::GenerateRequest req = Greedy({1, 9690, 314, 253}, 200);
  const Result reference = Generate(*stub, req);
  ASSERT_TRUE(reference.status.ok()) << reference.status.error_message();
  ASSERT_EQ(reference.ids.size(), 200u);

  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
  auto reader = stub->Generate(&ctx, req);
  std::vector<int32_t> ids;
  v1::GenerateResponse resp;
  ASSERT_TRUE(reader->Read(&resp)) << cluster.Logs();
  for (const v1::Token& t : resp.tokens()) ids.push_back(t.id());
  cluster.KillWorker(1);
  EXPECT_TRUE(cluster.WaitHealth(false, absl::Seconds(10)).ok());
  cluster.RestartWorker(1);
  while (reader->Read(&resp)) {
    for (const v1::Token& t : resp.tokens()) ids.push_back(t.id());
  }
  const grpc::Status st = reader->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message() << "\n" << cluster.Logs();
  EXPECT_LT(ids.size(), 200u + 1);
  EXPECT_EQ(ids, reference.ids);  // nothing lost, nothing repeated, same tokens
  EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_LENGTH);
  ASSERT_TRUE(cluster.WaitHealth(true, absl::Seconds(60)).ok()) << cluster.Logs();
  v1::ServerStats stats;
  {
    grpc::ClientContext sctx;
    ASSERT_TRUE(stub->GetServerStats(&sctx, v1::GetServerStatsRequest(), &stats).ok());
  }
  EXPECT_GE(stats.failed_steps(), 1);
}

// SmolLM2 (Q4_1 GGUF) at TP=2, the uneven split of 9 heads / 3 KV heads: a chat prompt given as
// text messages must tokenize to the golden's ids and generate its 64 greedy tokens.
TEST(ClusterTest, SmolLm2ChatTp2) {
  const std::string model = ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(model)) GTEST_SKIP() << model << " not found (fetch-models.sh)";
  const nlohmann::json expected = Expected("smollm2-135m-q4_1");
  const nlohmann::json* chat_case = nullptr;
  for (const auto& c : expected["cases"]) {
    if (c.contains("messages")) {
      chat_case = &c;
      break;
    }
  }
  ASSERT_NE(chat_case, nullptr);
  LocalCluster cluster(model, 2, {"--max-context", "512"});
  ASSERT_TRUE(cluster.WaitHealth(true, absl::Seconds(120)).ok()) << cluster.Logs();
  auto stub = cluster.Stub();

  v1::Chat chat;
  for (const auto& m : (*chat_case)["messages"]) {
    v1::ChatMessage* msg = chat.add_messages();
    msg->set_role(m["role"].get<std::string>());
    msg->set_content(m["content"].get<std::string>());
  }
  const auto ids = (*chat_case)["input_ids"].get<std::vector<int32_t>>();
  {  // Tokenize round trip: the rendered template and its ids equal the golden's.
    grpc::ClientContext ctx;
    v1::TokenizeRequest req;
    *req.mutable_prompt()->mutable_chat() = chat;
    v1::TokenizeResponse resp;
    ASSERT_TRUE(stub->Tokenize(&ctx, req, &resp).ok());
    EXPECT_EQ(std::vector<int32_t>(resp.ids().begin(), resp.ids().end()), ids);
    EXPECT_EQ(resp.rendered(), (*chat_case)["text"].get<std::string>());
    grpc::ClientContext dctx;
    v1::DetokenizeRequest dreq;
    dreq.mutable_ids()->Add(ids.begin(), ids.end());
    dreq.set_skip_special_tokens(false);
    v1::DetokenizeResponse dresp;
    ASSERT_TRUE(stub->Detokenize(&dctx, dreq, &dresp).ok());
    EXPECT_EQ(dresp.text(), (*chat_case)["text"].get<std::string>());
  }
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    ASSERT_TRUE(stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
    EXPECT_EQ(info.tensor_parallel(), 2);
    EXPECT_EQ(info.num_heads(), 9);
    EXPECT_EQ(info.num_kv_heads(), 3);
    EXPECT_TRUE(info.has_chat_template());
    EXPECT_GT(info.kv_blocks(), 0);
    // No --max-batch-tokens: the budget the CPU workers were loaded with (DefaultMaxBatchTokens).
    EXPECT_EQ(info.max_batch_tokens(), 512);
    // What the workers compute in, as rank 0 registered it (not a coordinator constant).
    EXPECT_EQ(info.device(), "cpu");
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    EXPECT_EQ(info.compute_dtype(), "int8x2");  // the workers' default with the VNNI kernel
#else
    EXPECT_EQ(info.compute_dtype(), "f32");
#endif
  }
  v1::GenerateRequest req;
  *req.mutable_prompt()->mutable_chat() = chat;
  req.mutable_sampling()->set_temperature(0);
  const auto greedy = (*chat_case)["greedy"].get<std::vector<int32_t>>();
  req.mutable_stopping()->set_max_tokens(static_cast<int>(greedy.size()));
  req.mutable_stopping()->set_ignore_eos(true);
  req.mutable_output()->set_skip_special_tokens(false);
  Result r = Generate(*stub, req, absl::Seconds(150));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message() << "\n" << cluster.Logs();
  EXPECT_EQ(r.ids, greedy);
  EXPECT_EQ(r.text, (*chat_case)["greedy_text"].get<std::string>());
  EXPECT_GT(r.responses, 1);  // streamed, not one lump

  // A stop string that spans several tokens of the golden continuation: the text ends right
  // before it, nothing of it leaks out, generation stops there.
  const std::string golden_text = (*chat_case)["greedy_text"].get<std::string>();
  ASSERT_GT(golden_text.size(), 30u);
  const std::string stop = golden_text.substr(12, 9);
  req.mutable_stopping()->add_stop(stop);
  Result stopped = Generate(*stub, req, absl::Seconds(150));
  ASSERT_TRUE(stopped.status.ok()) << stopped.status.error_message();
  EXPECT_EQ(stopped.text, golden_text.substr(0, golden_text.find(stop)));
  EXPECT_EQ(stopped.last.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(stopped.last.stop_reason(), stop);
  EXPECT_LT(stopped.ids.size(), greedy.size());
  EXPECT_EQ(stopped.ids, std::vector<int32_t>(greedy.begin(), greedy.begin() + stopped.ids.size()));
}

}  // namespace
}  // namespace tpserve::testing
