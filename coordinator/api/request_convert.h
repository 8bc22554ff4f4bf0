// Public API messages <-> the engine's plain structs, with the checks a user can act on:
// INVALID_ARGUMENT names the offending field ("sampling.top_p: 1.5 is outside (0, 1]").
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/api/served_model.h"
#include "coordinator/engine/request.h"
#include "google/protobuf/message.h"
#include "tpserve/v1/inference.pb.h"

namespace tpserve::api {

// The path of the first field the server does not know ("sampling.<unknown field 42>"), or
// empty. Clients newer than the server must not believe an option took effect.
std::string FindUnknownField(const google::protobuf::Message& message);

// Token ids of a prompt (text tokenized, chat rendered + tokenized, ids as given). `rendered`
// gets a chat's template output.
absl::StatusOr<std::vector<int32_t>> PromptIds(const ServedModel& model, const v1::Prompt& prompt,
                                               std::string* rendered = nullptr);

// Validates a GenerateRequest and resolves its defaults. max_tokens unset -> -1 (the engine
// fills it to the end of the context). `default_seed` is used when sampling.seed is unset.
absl::StatusOr<engine::RequestOptions> ToRequestOptions(const ServedModel& model,
                                                        const v1::GenerateRequest& request,
                                                        uint64_t default_seed);

v1::FinishReason ToProto(engine::FinishReason reason);
void ToProto(const engine::TokenOutput& token, v1::Token* out);
void ToProto(const engine::Usage& usage, v1::Usage* out);

}  // namespace tpserve::api
