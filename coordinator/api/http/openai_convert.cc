#include "coordinator/api/http/openai_convert.h"

#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/status_macros.h"

namespace tpserve::api::http {
namespace {

using json = nlohmann::json;

constexpr int kMaxStops = 16;
constexpr int kMaxStopBytes = 256;

absl::Status Bad(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

// A field that is absent or null reads as "not given" (clients send null for defaults).
const json* Field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<std::optional<double>> Number(const json& body, const char* name, double lo,
                                             double hi, bool lo_open) {
  const json* f = Field(body, name);
  if (f == nullptr) return std::optional<double>();
  if (!f->is_number()) return Bad(name, absl::StrCat("must be a number, got ", f->type_name()));
  const double v = f->get<double>();
  if (std::isnan(v) || v > hi || (lo_open ? v <= lo : v < lo)) {
    return Bad(name, absl::StrCat(v, " is outside ", lo_open ? "(" : "[", lo, ", ", hi, "]"));
  }
  return std::optional<double>(v);
}

absl::StatusOr<std::optional<int64_t>> Integer(const json& body, const char* name, int64_t lo,
                                               int64_t hi) {
  const json* f = Field(body, name);
  if (f == nullptr) return std::optional<int64_t>();
  if (!f->is_number_integer()) {
    return Bad(name, absl::StrCat("must be an integer, got ", f->type_name()));
  }
  // Unsigned first: seeds up to 2^64-1 must not wrap.
  if (f->is_number_unsigned() && f->get<uint64_t>() > uint64_t(hi)) {
    return Bad(name, absl::StrCat(f->get<uint64_t>(), " is outside [", lo, ", ", hi, "]"));
  }
  const int64_t v = f->get<int64_t>();
  if (v < lo || v > hi) return Bad(name, absl::StrCat(v, " is outside [", lo, ", ", hi, "]"));
  return std::optional<int64_t>(v);
}

absl::StatusOr<bool> Bool(const json& body, const char* name, bool fallback) {
  const json* f = Field(body, name);
  if (f == nullptr) return fallback;
  if (!f->is_boolean()) return Bad(name, absl::StrCat("must be a boolean, got ", f->type_name()));
  return f->get<bool>();
}

absl::StatusOr<std::vector<int32_t>> TokenIds(const ServedModel& model, const json& arr,
                                              const std::string& field) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < arr.size(); ++i) {
    const json& t = arr[i];
    if (!t.is_number_integer() || t.get<int64_t>() < 0 ||
        t.get<int64_t>() >= model.config().vocab_size) {
      return Bad(absl::StrCat(field, "[", i, "]"),
                 absl::StrCat("must be a token id in [0, ", model.config().vocab_size, ")"));
    }
    ids.push_back(t.get<int32_t>());
  }
  return ids;
}

absl::StatusOr<std::vector<int32_t>> CompletionPrompt(const ServedModel& model, const json& body) {
  const json* p = Field(body, "prompt");
  if (p == nullptr) return Bad("prompt", "required");
  json one = *p;
  if (one.is_array() && !one.empty() && (one[0].is_string() || one[0].is_array())) {
    if (one.size() != 1) {
      return Bad("prompt", absl::StrCat("batches of ", one.size(),
                                        " prompts are not supported; send one request each"));
    }
    one = json(one[0]);
  }
  if (one.is_string()) {
    if (model.tokenizer == nullptr) {
      return Bad("prompt", "this model has no tokenizer; send token ids");
    }
    absl::StatusOr<std::vector<int32_t>> ids =
        model.tokenizer->Encode(one.get<std::string>(), true);
    if (!ids.ok()) return Bad("prompt", std::string(ids.status().message()));
    return ids;
  }
  if (one.is_array()) return TokenIds(model, one, "prompt");
  return Bad("prompt", "must be a string, a list of token ids, or a list of one of them");
}

absl::StatusOr<std::vector<int32_t>> ChatPrompt(const ServedModel& model, const json& body) {
  const json* m = Field(body, "messages");
  if (m == nullptr || !m->is_array() || m->empty()) {
    return Bad("messages", "required: a non-empty list of {role, content}");
  }
  if (!model.chat_template || model.tokenizer == nullptr) {
    return Bad("messages", "this model has no chat template; use /v1/completions");
  }
  json messages = json::array();
  for (size_t i = 0; i < m->size(); ++i) {
    const json& msg = (*m)[i];
    const std::string at = absl::StrCat("messages[", i, "]");
    if (!msg.is_object()) return Bad(at, "must be an object {role, content}");
    const json* role = Field(msg, "role");
    if (role == nullptr || !role->is_string() || role->get<std::string>().empty()) {
      return Bad(at + ".role", "required: a non-empty string");
    }
    std::string content;
    if (const json* c = Field(msg, "content"); c == nullptr) {
    } else if (c->is_string()) {
      content = c->get<std::string>();
    } else if (c->is_array()) {
      for (size_t k = 0; k < c->size(); ++k) {
        const json& part = (*c)[k];
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
            !part["text"].is_string()) {
          return Bad(absl::StrCat(at, ".content[", k, "]"), "only {type: text, text} is supported");
        }
        content += part["text"].get<std::string>();
      }
    } else {
      return Bad(at + ".content", "must be a string or a list of text parts");
    }
    messages.push_back({{"role", role->get<std::string>()}, {"content", std::move(content)}});
  }
  ASSIGN_OR_RETURN(const bool add, Bool(body, "add_generation_prompt", true));
  absl::StatusOr<std::vector<int32_t>> ids = EncodeChat(model, messages, add, nullptr);
  if (!ids.ok()) return Bad("messages", std::string(ids.status().message()));
  return ids;
}

// Fields OpenAI defines that this server cannot honour: refuse rather than silently ignore.
absl::Status RejectUnsupported(const json& body) {
  ASSIGN_OR_RETURN(std::optional<int64_t> best_of, Integer(body, "best_of", 1, 1 << 20));
  if (best_of && *best_of != 1) return Bad("best_of", "only 1 is supported (use n)");
  ASSIGN_OR_RETURN(const bool echo, Bool(body, "echo", false));
  if (echo) return Bad("echo", "not supported");
  for (const char* name : {"suffix", "tools", "functions", "tool_choice", "function_call"}) {
    const json* f = Field(body, name);
    if (f != nullptr && !(f->is_array() && f->empty()) && !(f->is_string() && *f == "") &&
        !(f->is_string() && *f == "none")) {
      return Bad(name, "not supported by this server");
    }
  }
  if (const json* rf = Field(body, "response_format");
      rf != nullptr && !(rf->is_object() && rf->value("type", "text") == "text")) {
    return Bad("response_format", "only {type: text} is supported");
  }
  return absl::OkStatus();
}

std::string TokenText(const ServedModel& model, int32_t id) {
  if (model.tokenizer == nullptr) return "";
  const int32_t one[] = {id};
  return model.tokenizer->Decode(one, false).value_or("");
}

json Bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(int(c));
  return b;
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(const ServedModel& model, Endpoint endpoint,
                                                 const json& body, uint64_t default_seed,
                                                 int max_seq_len) {
  if (!body.is_object()) return Bad("body", "must be a JSON object");
  OpenAiRequest r;
  r.endpoint = endpoint;
  const bool chat = endpoint == Endpoint::kChat;
  if (const json* m = Field(body, "model"); m != nullptr) {
    if (!m->is_string()) return Bad("model", "must be a string");
    if (*m != model.name) {
      return absl::NotFoundError(absl::StrCat("model: '", m->get<std::string>(),
                                              "' is not served here; this server serves '",
                                              model.name, "' (GET /v1/models)"));
    }
  }
  RETURN_IF_ERROR(RejectUnsupported(body));
  engine::RequestOptions& o = r.options;
  ASSIGN_OR_RETURN(auto n, Integer(body, "n", 1, engine::kMaxCompletions));
  o.n = int(n.value_or(1));
  if (chat) {
    ASSIGN_OR_RETURN(o.prompt, ChatPrompt(model, body));
  } else {
    ASSIGN_OR_RETURN(o.prompt, CompletionPrompt(model, body));
  }
  const char* prompt_field = chat ? "messages" : "prompt";
  if (o.prompt.empty()) return Bad(prompt_field, "tokenizes to no tokens");
  if (int(o.prompt.size()) >= max_seq_len) {
    return Bad(prompt_field, absl::StrCat(o.prompt.size(), " tokens; this server's context is ",
                                          max_seq_len, " tokens (prompt + output)"));
  }

  engine::StepSamplingOptions& s = o.sampling;
  ASSIGN_OR_RETURN(auto temperature, Number(body, "temperature", 0, 2, false));
  s.temperature = temperature.value_or(1.0);
  ASSIGN_OR_RETURN(auto top_p, Number(body, "top_p", 0, 1, true));
  s.top_p = top_p.value_or(1.0);
  ASSIGN_OR_RETURN(auto min_p, Number(body, "min_p", 0, 1, false));
  s.min_p = min_p.value_or(0.0);
  ASSIGN_OR_RETURN(auto top_k, Integer(body, "top_k", -1, model.config().vocab_size));
  s.top_k = top_k && *top_k > 0 ? int(*top_k) : 0;  // vLLM: -1 means off
  ASSIGN_OR_RETURN(auto presence, Number(body, "presence_penalty", -2, 2, false));
  s.presence_penalty = presence.value_or(0.0);
  ASSIGN_OR_RETURN(auto frequency, Number(body, "frequency_penalty", -2, 2, false));
  s.frequency_penalty = frequency.value_or(0.0);
  ASSIGN_OR_RETURN(auto repetition, Number(body, "repetition_penalty", 0, 10, true));
  s.repetition_penalty = repetition.value_or(1.0);
  ASSIGN_OR_RETURN(auto seed, Integer(body, "seed", INT64_MIN, INT64_MAX));
  s.seed = seed ? uint64_t(*seed) : default_seed;
  if (const json* lb = Field(body, "logit_bias"); lb != nullptr) {
    if (!lb->is_object()) return Bad("logit_bias", "must be an object {token id: bias}");
    for (const auto& [key, value] : lb->items()) {
      int64_t id = -1;
      try {
        id = std::stoll(key);
      } catch (...) {
      }
      if (id < 0 || id >= model.config().vocab_size || !value.is_number() ||
          std::abs(value.get<double>()) > 100) {
        return Bad("logit_bias",
                   absl::StrCat("'", key, "': needs a token id in [0, ", model.config().vocab_size,
                                ") and a bias in [-100, 100]"));
      }
      s.logit_bias.emplace_back(int32_t(id), value.get<float>());
    }
  }

  // Completions default to 16 tokens (OpenAI's legacy default); chat runs to the context's end.
  std::optional<int64_t> max_tokens;
  ASSIGN_OR_RETURN(max_tokens, Integer(body, "max_tokens", 0, INT32_MAX));
  if (chat) {
    ASSIGN_OR_RETURN(auto mct, Integer(body, "max_completion_tokens", 0, INT32_MAX));
    if (mct) max_tokens = mct;
  }
  o.max_tokens = max_tokens ? int(*max_tokens) : (chat ? -1 : 16);
  if (o.max_tokens > 0 && int64_t(o.prompt.size()) + o.max_tokens > max_seq_len) {
    return Bad(chat && !Field(body, "max_tokens") ? "max_completion_tokens" : "max_tokens",
               absl::StrCat(o.max_tokens, " + ", o.prompt.size(), " prompt tokens exceeds the ",
                            max_seq_len, "-token context"));
  }
  ASSIGN_OR_RETURN(auto min_tokens, Integer(body, "min_tokens", 0, INT32_MAX));
  o.min_tokens = int(min_tokens.value_or(0));

  if (const json* stop = Field(body, "stop"); stop != nullptr) {
    json list = stop->is_string() ? json::array({*stop}) : *stop;
    if (!list.is_array()) return Bad("stop", "must be a string or a list of strings");
    if (list.size() > kMaxStops) {
      return Bad("stop", absl::StrCat(list.size(), " strings; at most ", kMaxStops));
    }
    for (size_t i = 0; i < list.size(); ++i) {
      if (!list[i].is_string() || list[i].get<std::string>().empty() ||
          list[i].get<std::string>().size() > kMaxStopBytes) {
        return Bad(absl::StrCat("stop[", i, "]"),
                   absl::StrCat("must be a string of 1..", kMaxStopBytes, " bytes"));
      }
      o.stop.push_back(list[i].get<std::string>());
    }
  }
  if (const json* ids = Field(body, "stop_token_ids"); ids != nullptr) {
    if (!ids->is_array()) return Bad("stop_token_ids", "must be a list of token ids");
    ASSIGN_OR_RETURN(o.stop_token_ids, TokenIds(model, *ids, "stop_token_ids"));
  }
  ASSIGN_OR_RETURN(o.ignore_eos, Bool(body, "ignore_eos", false));
  ASSIGN_OR_RETURN(o.include_stop_in_output, Bool(body, "include_stop_str_in_output", false));
  ASSIGN_OR_RETURN(o.skip_special_tokens, Bool(body, "skip_special_tokens", true));

  if (chat) {
    ASSIGN_OR_RETURN(r.logprobs, Bool(body, "logprobs", false));
    ASSIGN_OR_RETURN(auto top, Integer(body, "top_logprobs", 0, 20));
    if (top && !r.logprobs) return Bad("top_logprobs", "needs logprobs: true");
    r.top_logprobs = int(top.value_or(0));
  } else {
    ASSIGN_OR_RETURN(auto lp, Integer(body, "logprobs", 0, 5));
    r.logprobs = lp.has_value();
    r.top_logprobs = int(lp.value_or(0));
  }
  s.logprobs = r.logprobs;
  s.top_logprobs = r.top_logprobs;

  ASSIGN_OR_RETURN(r.stream, Bool(body, "stream", false));
  if (const json* so = Field(body, "stream_options"); so != nullptr) {
    if (!r.stream) return Bad("stream_options", "only allowed with stream: true");
    if (!so->is_object()) return Bad("stream_options", "must be an object");
    ASSIGN_OR_RETURN(r.include_usage, Bool(*so, "include_usage", false));
  }
  return r;
}

json FinishReasonJson(engine::FinishReason reason) {
  const char* name = OpenAiFinishReason(reason);
  return name == nullptr ? json(nullptr) : json(name);
}

const char* OpenAiFinishReason(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kNone:
      return nullptr;
    case engine::FinishReason::kLength:
    case engine::FinishReason::kContextLength:
      return "length";
    case engine::FinishReason::kAborted:
      return "abort";
    default:
      return "stop";
  }
}

json LogprobsJson(const ServedModel& model, Endpoint endpoint,
                  const std::vector<engine::TokenOutput>& tokens, int top_logprobs,
                  int text_offset) {
  if (endpoint == Endpoint::kChat) {
    json content = json::array();
    for (const engine::TokenOutput& t : tokens) {
      json top = json::array();
      for (int k = 0; k < int(t.top_logprobs.size()) && k < top_logprobs; ++k) {
        const std::string text = TokenText(model, t.top_logprobs[k].first);
        top.push_back(
            {{"token", text}, {"logprob", t.top_logprobs[k].second}, {"bytes", Bytes(text)}});
      }
      content.push_back({{"token", t.text},
                         {"logprob", t.logprob},
                         {"bytes", Bytes(t.text)},
                         {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}};
  }
  json out = {{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  for (const engine::TokenOutput& t : tokens) {
    out["tokens"].push_back(t.text);
    out["token_logprobs"].push_back(t.logprob);
    json top = json::object();
    for (int k = 0; k < int(t.top_logprobs.size()) && k < top_logprobs; ++k) {
      top[TokenText(model, t.top_logprobs[k].first)] = t.top_logprobs[k].second;
    }
    out["top_logprobs"].push_back(std::move(top));
    out["text_offset"].push_back(text_offset);
    text_offset += int(t.text.size());
  }
  return out;
}

json UsageJson(const engine::Usage& u) {
  json usage = {{"prompt_tokens", u.prompt_tokens},
                {"completion_tokens", u.completion_tokens},
                {"total_tokens", u.prompt_tokens + u.completion_tokens}};
  if (u.cached_prompt_tokens > 0) {
    usage["prompt_tokens_details"] = {{"cached_tokens", u.cached_prompt_tokens}};
  }
  return usage;
}

json CompletionJson(const ServedModel& model, const OpenAiRequest& request, const std::string& id,
                    int64_t created, const std::vector<ChoiceResult>& choices,
                    const engine::Usage& usage) {
  const bool chat = request.endpoint == Endpoint::kChat;
  json out = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceResult& c = choices[i];
    json choice = {{"index", i}, {"finish_reason", FinishReasonJson(c.finish_reason)}};
    choice["logprobs"] =
        request.logprobs ? LogprobsJson(model, request.endpoint, c.tokens, request.top_logprobs, 0)
                         : json(nullptr);
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    } else {
      choice["text"] = c.text;
    }
    if (!c.stop_reason.empty()) choice["stop_reason"] = c.stop_reason;
    out.push_back(std::move(choice));
  }
  return {{"id", id},
          {"object", chat ? "chat.completion" : "text_completion"},
          {"created", created},
          {"model", model.name},
          {"choices", std::move(out)},
          {"usage", UsageJson(usage)}};
}

json ChunkJson(const ServedModel& model, const OpenAiRequest& request, const std::string& id,
               int64_t created, const engine::RequestOutput& out, bool first, int text_offset) {
  const bool chat = request.endpoint == Endpoint::kChat;
  json choice = {{"index", out.index}, {"finish_reason", FinishReasonJson(out.finish_reason)}};
  choice["logprobs"] = request.logprobs ? LogprobsJson(model, request.endpoint, out.tokens,
                                                       request.top_logprobs, text_offset)
                                        : json(nullptr);
  if (chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!out.text.empty() || first) delta["content"] = out.text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = out.text;
  }
  json chunk = {{"id", id},
                {"object", chat ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model.name},
                {"choices", json::array({std::move(choice)})}};
  if (request.include_usage) chunk["usage"] = nullptr;
  return chunk;
}

json UsageChunkJson(const ServedModel& model, const OpenAiRequest& request, const std::string& id,
                    int64_t created, const engine::Usage& usage) {
  const bool chat = request.endpoint == Endpoint::kChat;
  return {{"id", id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model.name},
          {"choices", json::array()},
          {"usage", UsageJson(usage)}};
}

HttpError MakeHttpError(int status, const std::string& message, const std::string& type,
                        const std::string& param, const std::string& code) {
  HttpError e;
  e.status = status;
  e.body = {{"error",
             {{"message", message},
              {"type", type},
              {"param", param.empty() ? json(nullptr) : json(param)},
              {"code", code.empty() ? json(nullptr) : json(code)}}}};
  return e;
}

HttpError ToHttpError(const absl::Status& status) {
  const std::string message(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition: {
      // Our messages start with the field: "top_p: 1.5 is outside (0, 1]".
      const size_t colon = message.find(": ");
      std::string param = colon == std::string::npos ? "" : message.substr(0, colon);
      if (param.find(' ') != std::string::npos) param.clear();
      return MakeHttpError(400, message, "invalid_request_error", param, "");
    }
    case absl::StatusCode::kNotFound:
      return MakeHttpError(404, message, "invalid_request_error",
                           message.rfind("model:", 0) == 0 ? "model" : "", "model_not_found");
    case absl::StatusCode::kResourceExhausted:
      return MakeHttpError(503, message, "server_overloaded", "", "queue_full");
    case absl::StatusCode::kUnavailable:
      return MakeHttpError(503, message, "service_unavailable", "", "unavailable");
    default:
      return MakeHttpError(500, message, "internal_error", "", "");
  }
}

}  // namespace tpserve::api::http
