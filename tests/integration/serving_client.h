// Client-side helpers of the serving tests (serving_*_test.cc): a blocking Generate that keeps
// every streamed token, request builders, and the engine's ServerStats / ModelInfo.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "tpserve/v1/inference.grpc.pb.h"

namespace tpserve::testing {

// The tiny transformers checkpoints with goldens (tests/data/golden/models/README.md).
inline constexpr char kGoldenModels[] = "tests/data/golden/models";

// `folder`/expected.json of a golden checkpoint.
nlohmann::json ExpectedGolden(const std::string& folder);

// Everything one Generate call streamed.
struct Streamed {
  std::vector<int32_t> ids;       // generated token ids, in order, over all responses
  std::vector<v1::Token> tokens;  // the same tokens as streamed (log-probs, text)
  // With n > 1: the ids and the final usage of each completion, by GenerateResponse.index.
  std::vector<std::vector<int32_t>> by_index;
  std::vector<v1::Usage> usage_by_index;
  std::string text;
  std::string request_id;  // from the first response
  v1::GenerateResponse last;
  grpc::Status status;
  int responses = 0;
  absl::Duration took;  // from the call to Finish
  absl::Time end;       // when Finish returned
};

Streamed Generate(v1::Inference::Stub& stub, const v1::GenerateRequest& req,
                  absl::Duration timeout = absl::Seconds(120));

// Greedy, `max_tokens` tokens, EOS ignored (the goldens feed EOS back like any token).
v1::GenerateRequest Greedy(const std::vector<int32_t>& prompt, int max_tokens);
// Temperature sampling with top_p and a seed, EOS ignored.
v1::GenerateRequest Sampled(const std::vector<int32_t>& prompt, int max_tokens, float temperature,
                            float top_p, uint64_t seed);

// `n` token ids drawn from [3, vocab) by a generator seeded with `seed` (ids 0-2 are the tiny
// models' special tokens).
std::vector<int32_t> RandomPrompt(uint32_t seed, int n, int vocab);

absl::StatusOr<v1::ServerStats> Stats(v1::Inference::Stub& stub);
absl::StatusOr<v1::ModelInfo> Info(v1::Inference::Stub& stub);

// Polls GetServerStats until no sequence runs or waits and no KV block is held by one (blocks
// kept only by the prefix cache count as free). The last stats are in the error otherwise.
absl::Status WaitIdle(v1::Inference::Stub& stub, absl::Duration timeout);

// Batch invariance runs: `others` start first; once ServerStats.running reaches `min_running`
// (or `start_wait` passed) every target starts at the same moment, so the targets share their
// steps with the others. Waits for all of them.
struct BatchRun {
  std::vector<Streamed> targets;  // by the order of the targets given
  std::vector<Streamed> others;
  int max_running = 0;       // highest ServerStats.running seen during the run
  int others_outliving = 0;  // others that ended after every target (shared all their steps)
};
BatchRun RunInsideABatch(v1::Inference::Stub& stub, const std::vector<v1::GenerateRequest>& targets,
                         const std::vector<v1::GenerateRequest>& others, int min_running,
                         absl::Duration start_wait, absl::Duration timeout);

// A stub on a channel of its own (not sharing the process-wide subchannel pool), i.e. another
// TCP connection than the other stubs of `address`.
std::unique_ptr<v1::Inference::Stub> StubOnNewConnection(const std::string& address);

}  // namespace tpserve::testing
