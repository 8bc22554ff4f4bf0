#include "absl/strings/str_cat.h"
#include "common/format/gguf.h"

namespace tpserve {

const char* GgufTypeName(GgufType t) {
  static constexpr const char* kNames[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                           "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

GgufValue GgufValue::Unsigned(GgufType t, uint64_t v) {
  GgufValue r;
  r.type_ = t;
  r.v_ = v;
  return r;
}
GgufValue GgufValue::Signed(GgufType t, int64_t v) {
  GgufValue r;
  r.type_ = t;
  r.v_ = v;
  return r;
}
GgufValue GgufValue::Float(GgufType t, double v) {
  GgufValue r;
  r.type_ = t;
  r.v_ = v;
  return r;
}
GgufValue GgufValue::Bool(bool v) {
  GgufValue r;
  r.type_ = GgufType::kBool;
  r.v_ = v;
  return r;
}
GgufValue GgufValue::String(std::string v) {
  GgufValue r;
  r.type_ = GgufType::kString;
  r.v_ = std::move(v);
  return r;
}
GgufValue GgufValue::Array(GgufType elem_type, std::vector<GgufValue> elems) {
  GgufValue r;
  r.type_ = GgufType::kArray;
  r.array_type_ = elem_type;
  r.v_ = std::move(elems);
  return r;
}

bool IsIntegerType(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kU16:
    case GgufType::kI16:
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kU64:
    case GgufType::kI64:
      return true;
    default:
      return false;
  }
}

std::optional<int64_t> GgufValue::AsInt() const {
  if (const auto* u = std::get_if<uint64_t>(&v_)) {
    if (*u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(*u);
  }
  if (const auto* s = std::get_if<int64_t>(&v_)) return *s;
  return std::nullopt;
}

std::optional<double> GgufValue::AsFloat() const {
  if (const auto* d = std::get_if<double>(&v_)) return *d;
  if (const auto* u = std::get_if<uint64_t>(&v_)) return static_cast<double>(*u);
  if (const auto* s = std::get_if<int64_t>(&v_)) return static_cast<double>(*s);
  return std::nullopt;
}

std::optional<bool> GgufValue::AsBool() const {
  if (const auto* b = std::get_if<bool>(&v_)) return *b;
  return std::nullopt;
}

std::optional<std::string_view> GgufValue::AsString() const {
  if (const auto* s = std::get_if<std::string>(&v_)) return std::string_view(*s);
  return std::nullopt;
}

size_t GgufValue::size() const {
  const auto* e = std::get_if<Elems>(&v_);
  return e == nullptr ? 0 : e->size();
}

const std::vector<GgufValue>& GgufValue::elements() const {
  static const Elems kEmpty;
  const auto* e = std::get_if<Elems>(&v_);
  return e == nullptr ? kEmpty : *e;
}

std::string GgufValue::DebugString() const {
  if (is_array()) {
    return absl::StrCat("array<", GgufTypeName(array_type_), ">[", size(), "]");
  }
  std::string v;
  if (const auto* s = std::get_if<std::string>(&v_)) {
    v = absl::StrCat("\"", s->size() > 40 ? s->substr(0, 40) + "..." : *s, "\"");
  } else if (const auto* b = std::get_if<bool>(&v_)) {
    v = *b ? "true" : "false";
  } else if (const auto* u = std::get_if<uint64_t>(&v_)) {
    v = absl::StrCat(*u);
  } else if (const auto* i = std::get_if<int64_t>(&v_)) {
    v = absl::StrCat(*i);
  } else if (const auto* d = std::get_if<double>(&v_)) {
    v = absl::StrCat(*d);
  }
  return absl::StrCat(GgufTypeName(type_), " ", v);
}

}  // namespace tpserve
