// Typed access to tokenizer.json fields with errors that name the field ("normalizer.normalizers[1]
// .prepend: expected a string, found number").
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/tokenizer/str_util.h"
#include "nlohmann/json.hpp"

namespace tpserve::tok {

using Json = nlohmann::json;

inline std::string JsonPath(std::string_view parent, std::string_view key) {
  return parent.empty() ? std::string(key) : Cat(parent, ".", key);
}

inline absl::Status JsonFieldError(std::string_view path, std::string_view problem) {
  return absl::InvalidArgumentError(Cat("tokenizer.json field `", path, "`: ", problem));
}

// The member `key` of object `j`; NotFound-style InvalidArgument naming `path.key` when absent.
inline absl::StatusOr<const Json*> JsonMember(const Json& j, std::string_view key,
                                              std::string_view path) {
  if (!j.is_object()) return JsonFieldError(path, "expected an object");
  auto it = j.find(std::string(key));
  if (it == j.end()) return JsonFieldError(JsonPath(path, key), "missing");
  return &*it;
}

inline absl::StatusOr<std::string> JsonString(const Json& j, std::string_view key,
                                              std::string_view path) {
  auto m = JsonMember(j, key, path);
  if (!m.ok()) return m.status();
  if (!(*m)->is_string()) {
    return JsonFieldError(JsonPath(path, key), Cat("expected a string, found ", (*m)->type_name()));
  }
  return (*m)->get<std::string>();
}

// Optional members: the fallback when absent or null, an error when present with another type.
inline absl::StatusOr<bool> JsonBoolOr(const Json& j, std::string_view key, std::string_view path,
                                       bool fallback) {
  auto it = j.find(std::string(key));
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return JsonFieldError(JsonPath(path, key), Cat("expected a boolean, found ", it->type_name()));
  }
  return it->get<bool>();
}

inline absl::StatusOr<std::string> JsonStringOr(const Json& j, std::string_view key,
                                                std::string_view path, std::string fallback) {
  auto it = j.find(std::string(key));
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_string()) {
    return JsonFieldError(JsonPath(path, key), Cat("expected a string, found ", it->type_name()));
  }
  return it->get<std::string>();
}

inline absl::StatusOr<int64_t> JsonIntOr(const Json& j, std::string_view key, std::string_view path,
                                         int64_t fallback) {
  auto it = j.find(std::string(key));
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number_integer()) {
    return JsonFieldError(JsonPath(path, key), Cat("expected an integer, found ", it->type_name()));
  }
  return it->get<int64_t>();
}

}  // namespace tpserve::tok
