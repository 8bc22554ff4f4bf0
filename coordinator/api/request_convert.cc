#include "coordinator/api/request_convert.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/unknown_field_set.h"

namespace tpserve::api {
namespace {

absl::Status Bad(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Status InRange(const std::string& field, double v, double lo, double hi, bool lo_open) {
  if (std::isnan(v) || v > hi || (lo_open ? v <= lo : v < lo)) {
    return Bad(field, absl::StrCat(v, " is outside ", lo_open ? "(" : "[", lo, ", ", hi, "]"));
  }
  return absl::OkStatus();
}

constexpr int kMaxStops = 16;
constexpr int kMaxStopBytes = 256;

}  // namespace

std::string FindUnknownField(const google::protobuf::Message& message) {
  const google::protobuf::Reflection* refl = message.GetReflection();
  const google::protobuf::UnknownFieldSet& unknown = refl->GetUnknownFields(message);
  if (!unknown.empty()) {
    return absl::StrCat("<unknown field ", unknown.field(0).number(), ">");
  }
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  refl->ListFields(message, &fields);
  for (const google::protobuf::FieldDescriptor* f : fields) {
    if (f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (f->is_map()) continue;
    if (f->is_repeated()) {
      for (int i = 0; i < refl->FieldSize(message, f); ++i) {
        std::string inner = FindUnknownField(refl->GetRepeatedMessage(message, f, i));
        if (!inner.empty()) return absl::StrCat(f->name(), "[", i, "].", inner);
      }
    } else {
      std::string inner = FindUnknownField(refl->GetMessage(message, f));
      if (!inner.empty()) return absl::StrCat(f->name(), ".", inner);
    }
  }
  return "";
}

absl::StatusOr<std::vector<int32_t>> PromptIds(const ServedModel& model, const v1::Prompt& prompt,
                                               std::string* rendered) {
  switch (prompt.input_case()) {
    case v1::Prompt::kText: {
      if (prompt.text().empty()) return Bad("prompt.text", "empty");
      if (model.tokenizer == nullptr) {
        return absl::FailedPreconditionError(
            "prompt.text: this model has no tokenizer; send prompt.tokens");
      }
      return model.tokenizer->Encode(
          prompt.text(), prompt.has_add_special_tokens() ? prompt.add_special_tokens() : true);
    }
    case v1::Prompt::kTokens: {
      if (prompt.tokens().ids().empty()) return Bad("prompt.tokens.ids", "empty");
      return std::vector<int32_t>(prompt.tokens().ids().begin(), prompt.tokens().ids().end());
    }
    case v1::Prompt::kChat: {
      const v1::Chat& chat = prompt.chat();
      if (chat.messages().empty()) return Bad("prompt.chat.messages", "empty");
      nlohmann::json messages = nlohmann::json::array();
      for (int i = 0; i < chat.messages_size(); ++i) {
        const v1::ChatMessage& m = chat.messages(i);
        if (m.role().empty()) {
          return Bad(absl::StrCat("prompt.chat.messages[", i, "].role"), "empty");
        }
        messages.push_back({{"role", m.role()}, {"content", m.content()}});
      }
      const bool add = chat.has_add_generation_prompt() ? chat.add_generation_prompt() : true;
      return EncodeChat(model, messages, add, rendered);
    }
    default:
      return Bad("prompt", "set one of text, tokens or chat");
  }
}

absl::StatusOr<engine::RequestOptions> ToRequestOptions(const ServedModel& model,
                                                        const v1::GenerateRequest& req,
                                                        uint64_t default_seed) {
  if (std::string unknown = FindUnknownField(req); !unknown.empty()) {
    return Bad(unknown, "not a field this server knows (is the client newer than the server?)");
  }
  if (!req.model().empty() && req.model() != model.name) {
    return Bad("model", absl::StrCat("'", req.model(), "' is not served here; this server serves '",
                                     model.name, "'"));
  }
  if (req.n() < 0 || req.n() > engine::kMaxCompletions) {
    return Bad("n",
               absl::StrCat(req.n(), " is outside [0, ", engine::kMaxCompletions, "] (0 means 1)"));
  }
  engine::RequestOptions o;
  o.n = req.n() == 0 ? 1 : req.n();
  ASSIGN_OR_RETURN(o.prompt, PromptIds(model, req.prompt()));
  if (o.prompt.empty()) return Bad("prompt", "tokenizes to no tokens");

  const v1::SamplingParams& s = req.sampling();
  engine::StepSamplingOptions& m = o.sampling;
  m.temperature = s.has_temperature() ? s.temperature() : 1.0f;
  RETURN_IF_ERROR(InRange("sampling.temperature", m.temperature, 0, 100, false));
  if (s.has_top_k()) {
    if (s.top_k() < 0 || s.top_k() > model.config().vocab_size) {
      return Bad("sampling.top_k",
                 absl::StrCat(s.top_k(), " is outside [0, ", model.config().vocab_size, "]"));
    }
    m.top_k = s.top_k();
  }
  if (s.has_top_p()) {
    RETURN_IF_ERROR(InRange("sampling.top_p", s.top_p(), 0, 1, true));
    m.top_p = s.top_p();
  }
  if (s.has_min_p()) {
    RETURN_IF_ERROR(InRange("sampling.min_p", s.min_p(), 0, 1, false));
    m.min_p = s.min_p();
  }
  if (s.has_repetition_penalty()) {
    RETURN_IF_ERROR(InRange("sampling.repetition_penalty", s.repetition_penalty(), 0, 10, true));
    m.repetition_penalty = s.repetition_penalty();
  }
  if (s.has_presence_penalty()) {
    RETURN_IF_ERROR(InRange("sampling.presence_penalty", s.presence_penalty(), -2, 2, false));
    m.presence_penalty = s.presence_penalty();
  }
  if (s.has_frequency_penalty()) {
    RETURN_IF_ERROR(InRange("sampling.frequency_penalty", s.frequency_penalty(), -2, 2, false));
    m.frequency_penalty = s.frequency_penalty();
  }
  m.seed = s.has_seed() ? s.seed() : default_seed;
  for (const auto& [id, bias] : s.logit_bias()) {
    if (id < 0 || id >= model.config().vocab_size) {
      return Bad("sampling.logit_bias",
                 absl::StrCat("token id ", id, " is outside [0, ", model.config().vocab_size, ")"));
    }
    RETURN_IF_ERROR(InRange(absl::StrCat("sampling.logit_bias[", id, "]"), bias, -100, 100, false));
    m.logit_bias.emplace_back(id, bias);
  }

  const v1::StoppingCriteria& st = req.stopping();
  if (st.has_max_tokens()) {
    if (st.max_tokens() < 0) {
      return Bad("stopping.max_tokens", absl::StrCat(st.max_tokens(), " is negative"));
    }
    o.max_tokens = st.max_tokens();
  } else {
    o.max_tokens = -1;
  }
  if (st.min_tokens() < 0) return Bad("stopping.min_tokens", "negative");
  o.min_tokens = st.min_tokens();
  if (st.stop_size() > kMaxStops) {
    return Bad("stopping.stop", absl::StrCat(st.stop_size(), " strings; at most ", kMaxStops));
  }
  for (int i = 0; i < st.stop_size(); ++i) {
    if (st.stop(i).empty() || st.stop(i).size() > kMaxStopBytes) {
      return Bad(absl::StrCat("stopping.stop[", i, "]"),
                 absl::StrCat("must be 1..", kMaxStopBytes, " bytes"));
    }
    o.stop.push_back(st.stop(i));
  }
  o.stop_token_ids.assign(st.stop_token_ids().begin(), st.stop_token_ids().end());
  o.ignore_eos = st.ignore_eos();
  o.include_stop_in_output = st.include_stop_in_output();

  const v1::OutputOptions& out = req.output();
  if (out.top_logprobs() < 0 || out.top_logprobs() > 20) {
    return Bad("output.top_logprobs", absl::StrCat(out.top_logprobs(), " is outside [0, 20]"));
  }
  m.logprobs = out.logprobs() || out.top_logprobs() > 0;
  m.top_logprobs = out.top_logprobs();
  o.skip_special_tokens = out.has_skip_special_tokens() ? out.skip_special_tokens() : true;
  return o;
}

v1::FinishReason ToProto(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case engine::FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case engine::FinishReason::kContextLength:
      return v1::FINISH_REASON_CONTEXT_LENGTH;
    case engine::FinishReason::kAborted:
      return v1::FINISH_REASON_ABORTED;
    default:
      return v1::FINISH_REASON_UNSPECIFIED;
  }
}

void ToProto(const engine::TokenOutput& t, v1::Token* out) {
  out->set_id(t.id);
  out->set_text(t.text);
  out->set_logprob(t.logprob);
  out->set_special(t.special);
  for (const auto& [id, lp] : t.top_logprobs) {
    v1::TopLogprob* top = out->add_top_logprobs();
    top->set_id(id);
    top->set_logprob(lp);
  }
}

void ToProto(const engine::Usage& u, v1::Usage* out) {
  out->set_prompt_tokens(u.prompt_tokens);
  out->set_completion_tokens(u.completion_tokens);
  out->set_cached_prompt_tokens(u.cached_prompt_tokens);
  out->set_time_to_first_token_ms(u.time_to_first_token_ms);
  out->set_total_time_ms(u.total_time_ms);
  out->set_queue_time_ms(u.queue_time_ms);
  out->set_seed(u.seed);
  out->set_recomputations(u.recomputations);
}

}  // namespace tpserve::api
