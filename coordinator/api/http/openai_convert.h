// OpenAI-compatible request bodies (JSON) <-> the engine's plain structs. Pure functions, no HTTP:
// the server (http_server.h) parses, calls these, and writes what they return. Errors name the
// OpenAI field ("top_p: 1.5 is outside (0, 1]") so a client can fix its request.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/api/served_model.h"
#include "coordinator/engine/request.h"
#include "nlohmann/json.hpp"

namespace tpserve::api::http {

enum class Endpoint { kCompletions, kChat };

// One parsed /v1/completions or /v1/chat/completions body.
struct OpenAiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  engine::RequestOptions options;  // prompt tokenized, defaults resolved
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // the response carries a logprobs object
  int top_logprobs = 0;
};

// Validates `body` and tokenizes its prompt (chat: the template with add_generation_prompt).
// INVALID_ARGUMENT names the field; NOT_FOUND for a `model` that is not served here.
// `default_seed` is used when `seed` is absent; `max_seq_len` caps prompt + max_tokens.
absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(const ServedModel& model, Endpoint endpoint,
                                                 const nlohmann::json& body, uint64_t default_seed,
                                                 int max_seq_len);

// "stop" | "length" | "abort" (the client went away); null while running.
nlohmann::json FinishReasonJson(engine::FinishReason reason);
// OpenAI's (and vLLM's finished_reason label's) name of a finish reason: "length", "abort",
// "stop"; nullptr for kNone (still running).
const char* OpenAiFinishReason(engine::FinishReason reason);

// The "logprobs" object of one choice for these tokens (completions: tokens / token_logprobs /
// top_logprobs / text_offset, starting at `text_offset`; chat: {"content": [...]}).
nlohmann::json LogprobsJson(const ServedModel& model, Endpoint endpoint,
                            const std::vector<engine::TokenOutput>& tokens, int top_logprobs,
                            int text_offset);

nlohmann::json UsageJson(const engine::Usage& usage);

// One completion of a non-streamed request: everything it generated and how it ended.
struct ChoiceResult {
  std::string text;
  std::vector<engine::TokenOutput> tokens;
  engine::FinishReason finish_reason = engine::FinishReason::kNone;
  std::string stop_reason;
};

// The whole answer of a non-streamed request: one choice per completion (index = position) and
// the usage summed over them.
nlohmann::json CompletionJson(const ServedModel& model, const OpenAiRequest& request,
                              const std::string& id, int64_t created,
                              const std::vector<ChoiceResult>& choices, const engine::Usage& usage);

// One streamed chunk for one engine output, as choice out.index (first: that choice's first
// chunk; chat adds role "assistant").
nlohmann::json ChunkJson(const ServedModel& model, const OpenAiRequest& request,
                         const std::string& id, int64_t created, const engine::RequestOutput& out,
                         bool first, int text_offset);

// The final chunk of a stream with include_usage: empty choices and the usage.
nlohmann::json UsageChunkJson(const ServedModel& model, const OpenAiRequest& request,
                              const std::string& id, int64_t created, const engine::Usage& usage);

// An OpenAI error: its HTTP status and body {"error": {"message", "type", "param", "code"}}.
struct HttpError {
  int status = 500;
  nlohmann::json body;
};
// INVALID_ARGUMENT -> 400 (param = the field before ':'), NOT_FOUND -> 404, RESOURCE_EXHAUSTED
// (queue full) and UNAVAILABLE -> 503, anything else -> 500.
HttpError ToHttpError(const absl::Status& status);
HttpError MakeHttpError(int status, const std::string& message, const std::string& type,
                        const std::string& param, const std::string& code);

}  // namespace tpserve::api::http
