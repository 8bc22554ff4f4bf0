#include "tests/integration/serving_client.h"

#include <algorithm>
#include <atomic>
#include <fstream>
#include <latch>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace tpserve::testing {

nlohmann::json ExpectedGolden(const std::string& folder) {
  std::ifstream in(absl::StrCat(kGoldenModels, "/", folder, "/expected.json"));
  return nlohmann::json::parse(in);
}

Streamed Generate(v1::Inference::Stub& stub, const v1::GenerateRequest& req,
                  absl::Duration timeout) {
  Streamed r;
  const absl::Time start = absl::Now();
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(start + timeout));
  auto reader = stub.Generate(&ctx, req);
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    if (r.responses++ == 0) r.request_id = resp.request_id();
    const size_t index = static_cast<size_t>(std::max(resp.index(), 0));
    if (r.by_index.size() <= index) {
      r.by_index.resize(index + 1);
      r.usage_by_index.resize(index + 1);
    }
    for (const v1::Token& t : resp.tokens()) {
      r.ids.push_back(t.id());
      r.tokens.push_back(t);
      r.by_index[index].push_back(t.id());
    }
    if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED)
      r.usage_by_index[index] = resp.usage();
    r.text += resp.text();
    r.last = resp;
  }
  r.status = reader->Finish();
  r.end = absl::Now();
  r.took = r.end - start;
  return r;
}

v1::GenerateRequest Greedy(const std::vector<int32_t>& prompt, int max_tokens) {
  v1::GenerateRequest req;
  req.mutable_prompt()->mutable_tokens()->mutable_ids()->Add(prompt.begin(), prompt.end());
  req.mutable_sampling()->set_temperature(0);
  req.mutable_stopping()->set_max_tokens(max_tokens);
  req.mutable_stopping()->set_ignore_eos(true);
  return req;
}

v1::GenerateRequest Sampled(const std::vector<int32_t>& prompt, int max_tokens, float temperature,
                            float top_p, uint64_t seed) {
  v1::GenerateRequest req = Greedy(prompt, max_tokens);
  req.mutable_sampling()->set_temperature(temperature);
  req.mutable_sampling()->set_top_p(top_p);
  req.mutable_sampling()->set_seed(seed);
  return req;
}

std::vector<int32_t> RandomPrompt(uint32_t seed, int n, int vocab) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int32_t> id(3, vocab - 1);
  std::vector<int32_t> out(n);
  for (int32_t& t : out) t = id(gen);
  return out;
}

namespace {

absl::Status FromGrpc(const grpc::Status& st, const char* what) {
  if (st.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                      absl::StrCat(what, ": ", st.error_message()));
}

}  // namespace

absl::StatusOr<v1::ServerStats> Stats(v1::Inference::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::ServerStats out;
  const grpc::Status st = stub.GetServerStats(&ctx, v1::GetServerStatsRequest(), &out);
  if (!st.ok()) return FromGrpc(st, "GetServerStats");
  return out;
}

absl::StatusOr<v1::ModelInfo> Info(v1::Inference::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::ModelInfo out;
  const grpc::Status st = stub.GetModelInfo(&ctx, v1::GetModelInfoRequest(), &out);
  if (!st.ok()) return FromGrpc(st, "GetModelInfo");
  return out;
}

absl::Status WaitIdle(v1::Inference::Stub& stub, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last;
  while (true) {
    absl::StatusOr<v1::ServerStats> s = Stats(stub);
    if (!s.ok()) return s.status();
    if (s->running() == 0 && s->waiting() == 0 && s->kv_blocks_used() == 0) {
      return absl::OkStatus();
    }
    last = s->ShortDebugString();
    if (absl::Now() > deadline) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat("the engine did not become idle within ",
                                                  absl::FormatDuration(timeout),
                                                  "; last stats: ", last));
}

std::unique_ptr<v1::Inference::Stub> StubOnNewConnection(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return v1::Inference::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

BatchRun RunInsideABatch(v1::Inference::Stub& stub, const std::vector<v1::GenerateRequest>& targets,
                         const std::vector<v1::GenerateRequest>& others, int min_running,
                         absl::Duration start_wait, absl::Duration timeout) {
  BatchRun run;
  run.targets.resize(targets.size());
  run.others.resize(others.size());
  std::atomic<int> max_running{0};
  std::atomic<bool> done{false};
  std::thread monitor([&] {
    while (!done) {
      absl::StatusOr<v1::ServerStats> s = Stats(stub);
      if (s.ok()) max_running = std::max(max_running.load(), s->running());
      absl::SleepFor(absl::Milliseconds(5));
    }
  });
  std::vector<std::thread> threads;
  for (size_t i = 0; i < others.size(); ++i) {
    threads.emplace_back([&, i] { run.others[i] = Generate(stub, others[i], timeout); });
  }
  const absl::Time wait_until = absl::Now() + start_wait;
  while (max_running < min_running && absl::Now() < wait_until) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  std::latch go(static_cast<std::ptrdiff_t>(targets.size()));
  std::vector<std::thread> target_threads;
  for (size_t i = 0; i < targets.size(); ++i) {
    target_threads.emplace_back([&, i] {
      go.arrive_and_wait();
      run.targets[i] = Generate(stub, targets[i], timeout);
    });
  }
  for (auto& t : target_threads) t.join();
  for (auto& t : threads) t.join();
  done = true;
  monitor.join();
  run.max_running = max_running.load();
  absl::Time targets_end = absl::InfinitePast();
  for (const Streamed& t : run.targets) targets_end = std::max(targets_end, t.end);
  run.others_outliving =
      static_cast<int>(std::count_if(run.others.begin(), run.others.end(),
                                     [&](const Streamed& r) { return r.end > targets_end; }));
  return run;
}

}  // namespace tpserve::testing
