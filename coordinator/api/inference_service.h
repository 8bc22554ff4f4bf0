// The public Inference service (proto/tpserve/v1/inference.proto) with gRPC's callback API: one
// reactor per call, never blocking a gRPC thread. Generate and Complete hand the request to the
// Engine and are woken by its sink; Tokenize / Detokenize / GetModelInfo answer inline (pure CPU
// work on the coordinator's tokenizer). The only coordinator/api file besides the main that sees
// gRPC types (DESIGN.md §8).
#pragma once

#include <atomic>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "coordinator/api/served_model.h"
#include "coordinator/engine/engine.h"
#include "tpserve/v1/inference.grpc.pb.h"

namespace tpserve::api {

// ModelInfo fields the coordinator decides (the rest comes from the ServedModel).
struct ServingInfo {
  int tensor_parallel = 1;
  std::string device = "cpu";
  std::string compute_dtype = "f32";
  int kv_block_size = 16;
  int max_batch_sequences = 64;
  int max_batch_tokens = 512;  // until set_engine says what the workers were loaded with
  // Context length served (--max-context applied; 0: the model's). Once the engine exists,
  // ModelInfo.context_length is the engine's longest sequence, the figure /v1/models reports.
  int context_length = 0;
  // What the workers report (rank 0's), when one has registered: takes precedence over device
  // and compute_dtype. Null: always those.
  struct WorkerDevice {
    std::string device, compute_dtype, kv_cache_dtype;
  };
  std::function<std::optional<WorkerDevice>()> worker_device;
  // Whether the cluster serves now (ServerStats.serving); null: whenever the engine exists.
  std::function<bool()> serving;
};

class InferenceService final : public v1::Inference::CallbackService {
 public:
  InferenceService(const ServedModel& model, ServingInfo info) : model_(model), info_(info) {}

  // The engine exists once the workers are loaded; until then Generate / Complete / Abort answer
  // UNAVAILABLE. `engine` must outlive the service (or be reset to null first).
  // max_batch_tokens: the step budget the workers were loaded with (ModelInfo reports it; 0
  // keeps ServingInfo's).
  void set_engine(engine::Engine* engine, int64_t kv_blocks, int max_batch_tokens = 0) {
    kv_blocks_.store(kv_blocks);
    if (max_batch_tokens > 0) max_batch_tokens_.store(max_batch_tokens);
    engine_.store(engine);
  }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* ctx,
                                     const v1::GenerateRequest* request,
                                     v1::CompleteResponse* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* ctx,
                                       const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* ctx, const v1::AbortRequest* request,
                                  v1::AbortResponse* response) override;
  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* ctx, const v1::EmbedRequest* request,
                                  v1::EmbedResponse* response) override;
  grpc::ServerUnaryReactor* GetServerStats(grpc::CallbackServerContext* ctx,
                                           const v1::GetServerStatsRequest* request,
                                           v1::ServerStats* response) override;

 private:
  // Validates and submits; on error the status to finish the call with.
  absl::StatusOr<std::string> Start(const v1::GenerateRequest& request, const std::string& id,
                                    engine::RequestSink sink);
  // Generate and Complete: names the call, submits it and starts `reactor` (a new'ed reactor
  // that deletes itself when done); returns it.
  template <typename Reactor>
  Reactor* Launch(Reactor* reactor, const v1::GenerateRequest& request);
  // The request's id: the client's, or a new one (known before the engine can answer).
  std::string RequestId(const v1::GenerateRequest& request);

  const ServedModel& model_;
  const ServingInfo info_;
  std::atomic<engine::Engine*> engine_{nullptr};
  std::atomic<int64_t> kv_blocks_{0};
  std::atomic<int> max_batch_tokens_{0};  // 0: info_.max_batch_tokens
  std::atomic<uint64_t> seed_counter_{0};
  std::atomic<uint64_t> id_counter_{0};
};

grpc::Status ToGrpc(const absl::Status& status);

}  // namespace tpserve::api
