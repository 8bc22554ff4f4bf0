// The HTTP server in-process on loopback with cpp-httplib's client, a real Engine and a fake
// StepExecutor behind it (the tiny llama-mha checkpoint, no tokenizer: prompts are token ids;
// each sampled token is (last token + 1) % 256). Checks the OpenAI shapes, SSE framing, errors,
// health, metrics, and that a client closing a stream aborts its request.
#include "coordinator/api/http/http_server.h"

#include <httplib.h>

#include <atomic>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace tpserve::api::http {
namespace {

using json = nlohmann::json;

class NextTokenExecutor : public engine::StepExecutor {
 public:
  absl::StatusOr<engine::StepOutput> Execute(const engine::StepPlan& plan) override {
    absl::SleepFor(delay);
    engine::StepOutput out;
    for (const engine::PlanSequence& s : plan.sequences) {
      if (s.sample)
        out.tokens.push_back({.seq_id = s.seq_id, .token = (s.tokens.back() + 1) % 256});
    }
    return out;
  }
  bool ready() const override { return true; }
  absl::Duration delay = absl::ZeroDuration();
};

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = LoadServedModel("tests/data/golden/models/llama-mha");
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    server_ = std::make_unique<HttpServer>(
        *model_, HttpServerOptions{.threads = 8, .workers_up = [] { return 2; }});
    ASSERT_TRUE(server_->Start("127.0.0.1:0").ok());
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client_->set_read_timeout(30, 0);
  }
  void StartEngine() {
    engine::EngineConfig c;
    c.vocab_size = static_cast<int>(model_->config().vocab_size);
    c.scheduler.num_blocks = 64;
    c.scheduler.block_size = 16;
    c.scheduler.max_model_len = 256;
    c.scheduler.max_num_seqs = 8;
    c.scheduler.max_num_batched_tokens = 256;
    auto e = engine::Engine::Create(c, exec_, nullptr, server_->observer());
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    server_->set_engine(engine_.get(), 64);
  }
  void TearDown() override {
    if (engine_) engine_->Stop();
    server_->Stop();
    server_->set_engine(nullptr, 0);
  }
  httplib::Result Post(const std::string& path, const json& body) {
    return client_->Post(path.c_str(), body.dump(), "application/json");
  }

  NextTokenExecutor exec_;
  std::unique_ptr<ServedModel> model_;
  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(HttpServerTest, HealthIs503UntilTheEngineIsSet) {
  auto r = client_->Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "unavailable");
  auto c = Post("/v1/completions", {{"prompt", {1, 2}}});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->status, 503);
  StartEngine();
  r = client_->Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpServerTest, CompletionOfTokenIds) {
  StartEngine();
  auto r = Post("/v1/completions", {{"model", model_->name},
                                    {"prompt", {5, 6, 7}},
                                    {"max_tokens", 4},
                                    {"temperature", 0},
                                    {"ignore_eos", true}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], model_->name);
  EXPECT_TRUE(absl::StartsWith(j["id"].get<std::string>(), "cmpl-"));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(j["usage"]["completion_tokens"], 4);
  EXPECT_EQ(j["usage"]["total_tokens"], 7);
}

TEST_F(HttpServerTest, NCompletionsAreChoicesWithIndexAndSummedUsage) {
  StartEngine();
  auto r = Post("/v1/completions",
                {{"prompt", {5, 6, 7}}, {"max_tokens", 4}, {"n", 3}, {"ignore_eos", true}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  ASSERT_EQ(j["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(j["choices"][i]["index"], i);
    EXPECT_EQ(j["choices"][i]["finish_reason"], "length");
  }
  EXPECT_EQ(j["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(j["usage"]["completion_tokens"], 12);
  EXPECT_EQ(j["usage"]["total_tokens"], 15);
}

TEST_F(HttpServerTest, StreamedNCompletionsInterleaveByIndex) {
  StartEngine();
  auto r = Post("/v1/completions", {{"prompt", {5, 6, 7}},
                                    {"max_tokens", 3},
                                    {"n", 2},
                                    {"ignore_eos", true},
                                    {"stream", true},
                                    {"stream_options", {{"include_usage", true}}}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  std::map<int, int> finished;
  json usage;
  for (absl::string_view e : absl::StrSplit(r->body, "\n\n", absl::SkipEmpty())) {
    if (absl::StartsWith(e, ":") || e == "data: [DONE]") continue;
    const json chunk = json::parse(e.substr(6));
    if (chunk["choices"].empty()) {
      usage = chunk["usage"];
      continue;
    }
    for (const json& c : chunk["choices"]) {
      const int i = c["index"].get<int>();
      if (!c["finish_reason"].is_null()) ++finished[i];
    }
  }
  EXPECT_EQ(finished, (std::map<int, int>{{0, 1}, {1, 1}}));
  EXPECT_EQ(usage["completion_tokens"], 6);
  EXPECT_EQ(usage["prompt_tokens"], 3);
}

TEST_F(HttpServerTest, StreamIsSseEndingWithDone) {
  StartEngine();
  auto r = Post("/v1/completions", {{"prompt", {5, 6, 7}},
                                    {"max_tokens", 3},
                                    {"ignore_eos", true},
                                    {"stream", true},
                                    {"stream_options", {{"include_usage", true}}}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  std::vector<std::string> events;
  for (absl::string_view e : absl::StrSplit(r->body, "\n\n", absl::SkipEmpty())) {
    if (absl::StartsWith(e, ":")) continue;  // keep-alive comments
    ASSERT_TRUE(absl::StartsWith(e, "data: ")) << e;
    events.emplace_back(e.substr(6));
  }
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  const json usage = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 3);
  const json last = json::parse(events[events.size() - 3]);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(last["usage"].is_null());
}

TEST_F(HttpServerTest, ErrorsAreOpenAiShaped) {
  StartEngine();
  struct Case {
    json body;
    int status;
    std::string param;
  } cases[] = {
      {{{"prompt", {1}}, {"top_p", 1.5}}, 400, "top_p"},
      {{{"prompt", {1}}, {"n", 17}}, 400, "n"},
      {{{"prompt", {1}}, {"n", 0}}, 400, "n"},
      {{{"prompt", {1}}, {"best_of", 2}}, 400, "best_of"},
      {{{"prompt", {1}}, {"stop", 5}}, 400, "stop"},
      {{{"prompt", {1}}, {"max_tokens", 1000}}, 400, "max_tokens"},
      {{{"prompt", {1, 99999}}}, 400, "prompt[1]"},
      {{{"prompt", "text"}}, 400, "prompt"},  // no tokenizer in this checkpoint
      {{{"prompt", {1}}, {"model", "gpt-4"}}, 404, "model"},
  };
  for (const Case& c : cases) {
    auto r = Post("/v1/completions", c.body);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, c.status) << c.body << " -> " << r->body;
    const json e = json::parse(r->body)["error"];
    EXPECT_EQ(e["param"], c.param) << r->body;
    EXPECT_TRUE(e.contains("message") && e.contains("type") && e.contains("code"));
  }
  auto bad = client_->Post("/v1/chat/completions", "{not json", "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
  auto chat = Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "x"}}}}});
  ASSERT_TRUE(chat);
  EXPECT_EQ(chat->status, 400);  // no chat template
  EXPECT_EQ(json::parse(chat->body)["error"]["param"], "messages");
  auto missing = client_->Get("/v2/nothing");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(json::parse(missing->body)["error"]["code"], "not_found");
}

TEST_F(HttpServerTest, ClosingAStreamAbortsTheRequest) {
  exec_.delay = absl::Milliseconds(5);
  StartEngine();
  int chunks = 0;
  httplib::Headers headers;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body =
      json{{"prompt", {1}}, {"max_tokens", 200}, {"ignore_eos", true}, {"stream", true}}.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };
  auto r = client_->send(req);
  EXPECT_FALSE(r);  // we cancelled the read
  // The engine must end the request well before its 200 tokens (5 ms each = 1 s).
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline &&
         (engine_->stats().running > 0 || engine_->stats().requests_finished == 0)) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(engine_->stats().running, 0);
  EXPECT_LT(engine_->stats().generated_tokens, 200);
}

TEST_F(HttpServerTest, HealthSaysWhyItIsNotServing) {
  StartEngine();
  std::atomic<bool> serving{false};
  HttpServer server(
      *model_,
      HttpServerOptions{
          .threads = 4, .health = [&serving] {
            return serving ? HealthVerdict{true, ""} : HealthVerdict{false, "engine stuck: test"};
          }});
  ASSERT_TRUE(server.Start("127.0.0.1:0").ok());
  server.set_engine(engine_.get(), 64);
  httplib::Client client("127.0.0.1", server.port());
  auto r = client.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(json::parse(r->body)["error"]["message"], "engine stuck: test");
  serving = true;
  r = client.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  server.Stop();
  server.set_engine(nullptr, 0);
}

// Requests that do not come through HTTP (gRPC submits to the engine directly) show in /metrics.
TEST_F(HttpServerTest, MetricsCountRequestsFromOtherApis) {
  StartEngine();
  absl::Mutex mu;
  bool done = false;
  engine::RequestOptions o;
  o.prompt = {5, 6, 7, 8};
  o.max_tokens = 3;
  o.n = 2;
  o.ignore_eos = true;
  ASSERT_TRUE(engine_
                  ->Submit("grpc-1", o,
                           [&](engine::RequestOutput out) {
                             absl::MutexLock lock(&mu);
                             done = out.done;
                           })
                  .ok());
  {
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(10)));
  }
  auto m = client_->Get("/metrics");
  ASSERT_TRUE(m);
  const std::string label = "{model_name=\"" + model_->name + "\"}";
  EXPECT_TRUE(absl::StrContains(m->body, "vllm:e2e_request_latency_seconds_count" + label + " 1"))
      << m->body;
  EXPECT_TRUE(absl::StrContains(m->body, "vllm:time_to_first_token_seconds_count" + label + " 1"))
      << m->body;
  // Two completions of 3 tokens: 2 gaps each.
  EXPECT_TRUE(absl::StrContains(m->body, "vllm:inter_token_latency_seconds_count" + label + " 4"))
      << m->body;
  EXPECT_TRUE(absl::StrContains(m->body, "vllm:generation_tokens_total" + label + " 6")) << m->body;
  EXPECT_TRUE(absl::StrContains(
      m->body, "vllm:request_success_total{finished_reason=\"length\",model_name=\"" +
                   model_->name + "\"} 1"))
      << m->body;
  EXPECT_TRUE(absl::StrContains(m->body, "vllm:gpu_cache_usage_perc" + label + " 0")) << m->body;
}

TEST_F(HttpServerTest, MetricsHaveVllmNamesAndCount) {
  StartEngine();
  auto r =
      Post("/v1/completions", {{"prompt", {5, 6, 7}}, {"max_tokens", 4}, {"ignore_eos", true}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  auto m = client_->Get("/metrics");
  ASSERT_TRUE(m);
  ASSERT_EQ(m->status, 200);
  const std::string label = "{model_name=\"" + model_->name + "\"}";
  EXPECT_TRUE(absl::StrContains(m->body, "vllm:generation_tokens_total" + label + " 4")) << m->body;
  EXPECT_TRUE(absl::StrContains(m->body, "vllm:prompt_tokens_total" + label + " 3")) << m->body;
  EXPECT_TRUE(absl::StrContains(m->body, "vllm:e2e_request_latency_seconds_count" + label + " 1"))
      << m->body;
  EXPECT_TRUE(absl::StrContains(m->body, "tpserve_workers_up" + label + " 2")) << m->body;
  EXPECT_TRUE(absl::StrContains(m->body, "vllm:num_requests_running" + label + " 0")) << m->body;
}

}  // namespace
}  // namespace tpserve::api::http
