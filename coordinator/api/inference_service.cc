#include "coordinator/api/inference_service.h"

#include <deque>
#include <memory>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/api/request_convert.h"

namespace tpserve::api {

grpc::Status ToGrpc(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  // absl and gRPC share the canonical code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

namespace {

constexpr char kVersion[] = "0.1.0";

// Reactor calls and the lifetime rule they share: a reactor is deleted in OnDone, which gRPC runs
// only after Finish. Whoever holds the "token" (writing || finished, taken under the state's
// mutex) may call StartWrite / Finish after unlocking; nobody else touches the reactor, so the
// engine thread (the sink) never races with OnDone and no lock is held across a gRPC call.
class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  struct Item {
    v1::GenerateResponse response;
    bool last = false;
    grpc::Status error;  // !ok: finish with it (response unused)
  };
  struct State {
    absl::Mutex mu;
    GenerateReactor* reactor ABSL_GUARDED_BY(mu) = nullptr;
    std::deque<Item> queue ABSL_GUARDED_BY(mu);
    bool writing ABSL_GUARDED_BY(mu) = false;
    bool finished ABSL_GUARDED_BY(mu) = false;
    bool cancelled ABSL_GUARDED_BY(mu) = false;
    bool last_in_flight ABSL_GUARDED_BY(mu) = false;
    std::string request_id ABSL_GUARDED_BY(mu);
  };

  explicit GenerateReactor(engine::Engine* engine) : engine_(engine) {
    absl::MutexLock lock(&state_->mu);
    state_->reactor = this;
  }

  void SetId(const std::string& id) {
    absl::MutexLock lock(&state_->mu);
    state_->request_id = id;
  }
  // After the engine took the request (or refused it: the call ends with that status).
  void Begin(absl::StatusOr<std::string> id) {
    if (id.ok()) return;
    Item item;
    item.error = ToGrpc(id.status());
    Enqueue(state_, std::move(item));
  }

  static engine::RequestSink MakeSink(std::shared_ptr<State> state, bool echo_prompt,
                                      std::vector<int32_t> prompt) {
    return [state, echo_prompt, prompt = std::move(prompt),
            first = true](engine::RequestOutput o) mutable {
      Item item;
      if (!o.error.ok()) {
        item.error = ToGrpc(o.error);
      } else {
        v1::GenerateResponse& r = item.response;
        {
          absl::MutexLock lock(&state->mu);
          r.set_request_id(state->request_id);
        }
        for (const engine::TokenOutput& t : o.tokens) ToProto(t, r.add_tokens());
        r.set_text(std::move(o.text));
        if (first && echo_prompt) {
          for (int32_t id : prompt) r.add_prompt_tokens()->set_id(id);
        }
        first = false;
        r.set_index(o.index);
        if (o.finish_reason != engine::FinishReason::kNone) {
          r.set_finish_reason(ToProto(o.finish_reason));
          r.set_stop_reason(o.stop_reason);
          ToProto(o.usage, r.mutable_usage());
        }
        item.last = o.last();
      }
      Enqueue(state, std::move(item));
    };
  }

  std::shared_ptr<State> state() { return state_; }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&state_->mu);
      state_->writing = false;
      if (!ok) state_->cancelled = true;
      if (ok && state_->last_in_flight) {
        state_->finished = true;
      }
    }
    bool finish_ok;
    {
      absl::MutexLock lock(&state_->mu);
      finish_ok = state_->finished;
    }
    if (finish_ok) {
      Finish(grpc::Status::OK);
      return;
    }
    Drive(state_);
  }

  void OnCancel() override {
    std::string id;
    {
      absl::MutexLock lock(&state_->mu);
      state_->cancelled = true;
      id = state_->request_id;
    }
    if (engine_ != nullptr && !id.empty()) engine_->Abort(id).IgnoreError();
    Drive(state_);
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&state_->mu);
      state_->reactor = nullptr;
    }
    delete this;
  }

 private:
  static void Enqueue(const std::shared_ptr<State>& s, Item item) {
    {
      absl::MutexLock lock(&s->mu);
      if (s->finished || s->reactor == nullptr) return;
      s->queue.push_back(std::move(item));
    }
    Drive(s);
  }

  // Starts the next write or the Finish when no operation is in flight.
  static void Drive(const std::shared_ptr<State>& s) {
    GenerateReactor* r;
    grpc::Status finish_with;
    bool write = false;
    {
      absl::MutexLock lock(&s->mu);
      if (s->writing || s->finished || s->reactor == nullptr) return;
      r = s->reactor;
      if (s->cancelled) {
        s->finished = true;
        finish_with = grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
      } else if (s->queue.empty()) {
        return;
      } else {
        Item item = std::move(s->queue.front());
        s->queue.pop_front();
        if (!item.error.ok()) {
          s->finished = true;
          finish_with = item.error;
        } else {
          r->current_ = std::move(item.response);
          s->last_in_flight = item.last;
          s->writing = true;
          write = true;
        }
      }
    }
    if (write) {
      r->StartWrite(&r->current_);
    } else {
      r->Finish(finish_with);
    }
  }

  engine::Engine* engine_;
  std::shared_ptr<State> state_ = std::make_shared<State>();
  v1::GenerateResponse current_;  // owned by gRPC between StartWrite and OnWriteDone
};

// Complete: the same request, answered once.
class CompleteReactor final : public grpc::ServerUnaryReactor {
 public:
  struct State {
    absl::Mutex mu;
    CompleteReactor* reactor ABSL_GUARDED_BY(mu) = nullptr;
    v1::CompleteResponse* response ABSL_GUARDED_BY(mu) = nullptr;
    bool finished ABSL_GUARDED_BY(mu) = false;
    std::string request_id ABSL_GUARDED_BY(mu);
    engine::Usage usage ABSL_GUARDED_BY(mu);  // summed over the completions that ended
    int ended ABSL_GUARDED_BY(mu) = 0;
  };

  CompleteReactor(engine::Engine* engine, v1::CompleteResponse* response) : engine_(engine) {
    absl::MutexLock lock(&state_->mu);
    state_->reactor = this;
    state_->response = response;
  }

  void SetId(const std::string& id) {
    absl::MutexLock lock(&state_->mu);
    state_->request_id = id;
    state_->response->set_request_id(id);
  }
  void Begin(absl::StatusOr<std::string> id) {
    if (!id.ok()) Done(state_, ToGrpc(id.status()));
  }

  static engine::RequestSink MakeSink(std::shared_ptr<State> s, bool echo_prompt,
                                      std::vector<int32_t> prompt) {
    return [s, echo_prompt, prompt = std::move(prompt)](engine::RequestOutput o) {
      if (!o.error.ok()) {
        Done(s, ToGrpc(o.error));
        return;
      }
      {
        absl::MutexLock lock(&s->mu);
        if (s->finished || s->response == nullptr) return;
        v1::CompleteResponse& r = *s->response;
        while (r.choices_size() <= o.index) {
          const int index = r.choices_size();
          r.add_choices()->set_index(index);
        }
        v1::Choice& c = *r.mutable_choices(o.index);
        for (const engine::TokenOutput& t : o.tokens) ToProto(t, c.add_tokens());
        c.mutable_text()->append(o.text);
        if (o.finish_reason != engine::FinishReason::kNone) {
          c.set_finish_reason(ToProto(o.finish_reason));
          c.set_stop_reason(o.stop_reason);
          engine::AddCompletionUsage(o.usage, o.index, s->ended++, s->usage);
        }
        if (!o.last()) return;
        if (echo_prompt) {
          for (int32_t id : prompt) r.add_prompt_tokens()->set_id(id);
        }
        // The fields from before n existed repeat choice 0; usage covers every completion.
        const v1::Choice& first = r.choices(0);
        *r.mutable_tokens() = first.tokens();
        r.set_text(first.text());
        r.set_finish_reason(first.finish_reason());
        r.set_stop_reason(first.stop_reason());
        ToProto(s->usage, r.mutable_usage());
      }
      Done(s, grpc::Status::OK);
    };
  }

  std::shared_ptr<State> state() { return state_; }

  void OnCancel() override {
    std::string id;
    {
      absl::MutexLock lock(&state_->mu);
      id = state_->request_id;
    }
    // The engine answers with FINISH_REASON_ABORTED, which finishes the call.
    if (engine_ != nullptr && !id.empty()) engine_->Abort(id).IgnoreError();
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&state_->mu);
      state_->reactor = nullptr;
      state_->response = nullptr;
    }
    delete this;
  }

 private:
  static void Done(const std::shared_ptr<State>& s, grpc::Status status) {
    CompleteReactor* r;
    {
      absl::MutexLock lock(&s->mu);
      if (s->finished || s->reactor == nullptr) return;
      s->finished = true;
      r = s->reactor;
    }
    r->Finish(status);
  }

  engine::Engine* engine_;
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* ctx, const absl::Status& st) {
  grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
  r->Finish(ToGrpc(st));
  return r;
}

absl::Status NotReady() {
  return absl::UnavailableError(
      "the worker group is not loaded yet (grpc.health.v1 reports SERVING when it is); retry");
}

}  // namespace

std::string InferenceService::RequestId(const v1::GenerateRequest& request) {
  if (!request.request_id().empty()) return request.request_id();
  return absl::StrCat("req-", id_counter_.fetch_add(1) + 1);
}

absl::StatusOr<std::string> InferenceService::Start(const v1::GenerateRequest& request,
                                                    const std::string& id,
                                                    engine::RequestSink sink) {
  engine::Engine* engine = engine_.load();
  if (engine == nullptr) return NotReady();
  const uint64_t seed =
      std::random_device{}() ^ (seed_counter_.fetch_add(1) * 0x9E3779B97F4A7C15ULL);
  absl::StatusOr<engine::RequestOptions> options = ToRequestOptions(model_, request, seed);
  if (!options.ok()) return options.status();
  return engine->Submit(id, std::move(*options), std::move(sink));
}

template <typename Reactor>
Reactor* InferenceService::Launch(Reactor* reactor, const v1::GenerateRequest& request) {
  const bool echo = request.output().echo_prompt();
  std::vector<int32_t> prompt;
  if (echo) prompt = PromptIds(model_, request.prompt()).value_or(std::vector<int32_t>{});
  const std::string id = RequestId(request);
  reactor->SetId(id);
  reactor->Begin(Start(request, id, Reactor::MakeSink(reactor->state(), echo, std::move(prompt))));
  return reactor;
}

grpc::ServerWriteReactor<v1::GenerateResponse>* InferenceService::Generate(
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) {
  return Launch(new GenerateReactor(engine_.load()), *request);
}

grpc::ServerUnaryReactor* InferenceService::Complete(grpc::CallbackServerContext* ctx,
                                                     const v1::GenerateRequest* request,
                                                     v1::CompleteResponse* response) {
  return Launch(new CompleteReactor(engine_.load(), response), *request);
}

grpc::ServerUnaryReactor* InferenceService::Tokenize(grpc::CallbackServerContext* ctx,
                                                     const v1::TokenizeRequest* request,
                                                     v1::TokenizeResponse* response) {
  if (std::string unknown = FindUnknownField(*request); !unknown.empty()) {
    return Answer(ctx, absl::InvalidArgumentError(absl::StrCat(unknown, ": unknown field")));
  }
  if (request->prompt().input_case() == v1::Prompt::kTokens) {
    return Answer(ctx, absl::InvalidArgumentError(
                           "prompt.tokens: Tokenize takes prompt.text or prompt.chat"));
  }
  std::string rendered;
  absl::StatusOr<std::vector<int32_t>> ids = PromptIds(model_, request->prompt(), &rendered);
  if (!ids.ok()) return Answer(ctx, ids.status());
  response->mutable_ids()->Add(ids->begin(), ids->end());
  response->set_rendered(std::move(rendered));
  if (request->return_pieces()) {
    for (int32_t id : *ids) {
      const int32_t one[] = {id};
      response->add_pieces(model_.tokenizer->Decode(one).value_or(""));
    }
  }
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::Detokenize(grpc::CallbackServerContext* ctx,
                                                       const v1::DetokenizeRequest* request,
                                                       v1::DetokenizeResponse* response) {
  if (std::string unknown = FindUnknownField(*request); !unknown.empty()) {
    return Answer(ctx, absl::InvalidArgumentError(absl::StrCat(unknown, ": unknown field")));
  }
  if (model_.tokenizer == nullptr) {
    return Answer(ctx, absl::FailedPreconditionError("this model has no tokenizer"));
  }
  const std::vector<int32_t> ids(request->ids().begin(), request->ids().end());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= model_.config().vocab_size) {
      return Answer(
          ctx, absl::InvalidArgumentError(absl::StrCat("ids[", i, "]: ", ids[i], " is outside [0, ",
                                                       model_.config().vocab_size, ")")));
    }
  }
  const bool skip = request->has_skip_special_tokens() ? request->skip_special_tokens() : true;
  absl::StatusOr<std::string> text = model_.tokenizer->Decode(ids, skip);
  if (!text.ok()) return Answer(ctx, text.status());
  response->set_text(std::move(*text));
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::GetModelInfo(grpc::CallbackServerContext* ctx,
                                                         const v1::GetModelInfoRequest*,
                                                         v1::ModelInfo* r) {
  const ModelConfig& c = model_.config();
  r->set_name(model_.name);
  r->set_architecture(c.architecture);
  r->set_kind(v1::MODEL_KIND_DECODER);
  r->set_source(model_.path);
  r->set_format(model_.format);
  r->set_weight_dtype(model_.weight_dtype);
  r->set_compute_dtype(info_.compute_dtype);
  const engine::Engine* engine = engine_.load();
  r->set_context_length(engine != nullptr          ? engine->max_seq_len()
                        : info_.context_length > 0 ? info_.context_length
                                                   : model_.context_length());
  r->set_vocab_size(static_cast<int32_t>(c.vocab_size));
  r->set_hidden_size(static_cast<int32_t>(c.hidden_size));
  r->set_num_layers(static_cast<int32_t>(c.num_layers));
  r->set_num_heads(static_cast<int32_t>(c.num_heads));
  r->set_num_kv_heads(static_cast<int32_t>(c.num_kv_heads));
  r->set_head_dim(static_cast<int32_t>(c.head_dim));
  r->set_ffn_size(static_cast<int32_t>(c.intermediate_size));
  for (int64_t e : c.eos_token_ids) r->add_eos_token_ids(static_cast<int32_t>(e));
  r->set_bos_token_id(static_cast<int32_t>(c.bos_token_id));
  r->set_has_chat_template(model_.chat_template.has_value());
  r->set_tensor_parallel(info_.tensor_parallel);
  r->set_device(info_.device);
  if (info_.worker_device) {
    if (auto d = info_.worker_device(); d.has_value()) {
      if (!d->device.empty()) r->set_device(d->device);
      if (!d->compute_dtype.empty()) r->set_compute_dtype(d->compute_dtype);
      r->set_kv_cache_dtype(d->kv_cache_dtype);
    }
  }
  r->set_kv_block_size(info_.kv_block_size);
  r->set_kv_blocks(kv_blocks_.load());
  r->set_max_batch_sequences(info_.max_batch_sequences);
  const int batch_tokens = max_batch_tokens_.load();
  r->set_max_batch_tokens(batch_tokens > 0 ? batch_tokens : info_.max_batch_tokens);
  r->set_server_version(kVersion);
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::Abort(grpc::CallbackServerContext* ctx,
                                                  const v1::AbortRequest* request,
                                                  v1::AbortResponse*) {
  engine::Engine* engine = engine_.load();
  if (engine == nullptr) return Answer(ctx, NotReady());
  return Answer(ctx, engine->Abort(request->request_id()));
}

grpc::ServerUnaryReactor* InferenceService::Embed(grpc::CallbackServerContext* ctx,
                                                  const v1::EmbedRequest*, v1::EmbedResponse*) {
  return Answer(
      ctx, absl::FailedPreconditionError(absl::StrCat("Embed needs an encoder model; ", model_.name,
                                                      " is a decoder (use Generate)")));
}

grpc::ServerUnaryReactor* InferenceService::GetServerStats(grpc::CallbackServerContext* ctx,
                                                           const v1::GetServerStatsRequest*,
                                                           v1::ServerStats* r) {
  engine::Engine* engine = engine_.load();
  r->set_serving(engine != nullptr && (!info_.serving || info_.serving()));
  if (engine == nullptr) return Answer(ctx, absl::OkStatus());  // all zero until loaded
  const engine::EngineStats s = engine->stats();
  r->set_running(s.running);
  r->set_waiting(s.waiting);
  // Before the first step the pool figures are not known yet: the pool is all free.
  const int64_t total = s.blocks.total > 0 ? s.blocks.total : kv_blocks_.load();
  r->set_kv_blocks_total(total);
  r->set_kv_blocks_used(s.blocks.used);
  r->set_kv_usage(total > 0 ? static_cast<double>(s.blocks.used) / static_cast<double>(total) : 0);
  r->set_preemptions(s.preemptions);
  r->set_requests_finished(s.requests_finished);
  r->set_requests_failed(s.requests_failed);
  r->set_prompt_tokens(s.prompt_tokens);
  r->set_generation_tokens(s.generated_tokens);
  r->set_prefix_cache_hit_tokens(s.prefix_hit_tokens);
  r->set_steps(s.steps);
  r->set_failed_steps(s.failed_steps);
  if (s.steps > 0) {
    const double n = static_cast<double>(s.steps) * 1000.0;
    r->set_mean_step_ms(s.step_us_sum / n);
    r->set_mean_compute_ms(s.compute_us_sum / n);
    r->set_mean_collective_ms(s.collective_us_sum / n);
  }
  return Answer(ctx, absl::OkStatus());
}

}  // namespace tpserve::api
