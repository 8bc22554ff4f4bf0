#include "proto/unknown_fields.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/unknown_field_set.h"

namespace tpserve {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

absl::Status Check(const Message& m, const std::string& path) {
  const Reflection* refl = m.GetReflection();
  const google::protobuf::UnknownFieldSet& unknown = refl->GetUnknownFields(m);
  if (!unknown.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("request has unknown field ", unknown.field(0).number(), " in ",
                     path.empty() ? "the request" : path, " (", m.GetDescriptor()->full_name(),
                     "); this server does not support it (is the client built for a newer API?)"));
  }
  std::vector<const FieldDescriptor*> fields;
  refl->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    const std::string sub = path.empty() ? f->name() : absl::StrCat(path, ".", f->name());
    if (f->is_repeated()) {
      const int n = refl->FieldSize(m, f);
      for (int i = 0; i < n; ++i) {
        absl::Status st = Check(refl->GetRepeatedMessage(m, f, i), absl::StrCat(sub, "[", i, "]"));
        if (!st.ok()) return st;
      }
    } else {
      absl::Status st = Check(refl->GetMessage(m, f), sub);
      if (!st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RejectUnknownFields(const Message& message) { return Check(message, ""); }

}  // namespace tpserve
