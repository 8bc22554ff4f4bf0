// Refuses messages that carry fields this build does not know (issue 4: "requests with unknown
// fields -> INVALID_ARGUMENT"). proto3 keeps unknown fields when parsing, so a client built
// against a newer proto would otherwise believe an option took effect when it was ignored.
#pragma once

#include "absl/status/status.h"
#include "google/protobuf/message.h"

namespace tpserve {

// OK when neither `message` nor any message inside it (singular, repeated or map values) holds
// unknown fields; else INVALID_ARGUMENT naming the path and field number, e.g.
// "request has unknown field 42 in sampling (tpserve.v1.SamplingParams); this server does not
// support it".
absl::Status RejectUnknownFields(const google::protobuf::Message& message);

}  // namespace tpserve
