// Unknown fields anywhere in a request are refused with the path to them.
#include "proto/unknown_fields.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tpserve/v1/inference.pb.h"

namespace tpserve {
namespace {

using ::testing::HasSubstr;

// Appends a varint field `number` = 1 to serialized bytes (wire type 0), as a newer client would.
std::string WithExtraVarint(std::string bytes, int number) {
  bytes.push_back(static_cast<char>(number << 3));  // number < 16: one-byte tag
  bytes.push_back(1);
  return bytes;
}

TEST(UnknownFieldsTest, KnownRequestPasses) {
  v1::GenerateRequest req;
  req.mutable_prompt()->set_text("hello");
  req.mutable_sampling()->set_temperature(0.5f);
  req.mutable_stopping()->add_stop("\n");
  v1::GenerateRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(req.SerializeAsString()));
  EXPECT_TRUE(RejectUnknownFields(parsed).ok());
}

TEST(UnknownFieldsTest, TopLevelUnknownFieldIsInvalidArgument) {
  v1::GenerateRequest req;
  req.mutable_prompt()->set_text("hello");
  v1::GenerateRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(WithExtraVarint(req.SerializeAsString(), 15)));
  absl::Status st = RejectUnknownFields(parsed);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("unknown field 15 in the request"));
}

TEST(UnknownFieldsTest, NestedUnknownFieldNamesItsPath) {
  v1::SamplingParams sampling;
  sampling.set_top_k(5);
  v1::SamplingParams with_extra;
  ASSERT_TRUE(with_extra.ParseFromString(WithExtraVarint(sampling.SerializeAsString(), 14)));
  v1::Chat chat;
  chat.add_messages()->set_content("hi");
  v1::ChatMessage msg;
  ASSERT_TRUE(msg.ParseFromString(WithExtraVarint(chat.messages(0).SerializeAsString(), 9)));

  v1::GenerateRequest req;
  *req.mutable_sampling() = with_extra;
  absl::Status st = RejectUnknownFields(req);
  EXPECT_THAT(std::string(st.message()), HasSubstr("unknown field 14 in sampling"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("tpserve.v1.SamplingParams"));

  v1::GenerateRequest chat_req;
  *chat_req.mutable_prompt()->mutable_chat()->add_messages() = msg;
  st = RejectUnknownFields(chat_req);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("in prompt.chat.messages[0]"));
}

}  // namespace
}  // namespace tpserve
