// String concatenation over std::string_view. This abseil build has its own absl::string_view
// (not an alias of std::string_view), so absl::StrCat does not take std::string_view arguments.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/string_view.h"

namespace tpserve::tok {
namespace cat_internal {
inline void Append(std::string* s, const char* v) { s->append(v); }
inline void Append(std::string* s, const std::string& v) { s->append(v); }
inline void Append(std::string* s, std::string_view v) { s->append(v); }
inline void Append(std::string* s, absl::string_view v) { s->append(v.data(), v.size()); }
template <typename T>
requires std::is_integral_v<T>
void Append(std::string* s, T v) { s->append(std::to_string(v)); }
}  // namespace cat_internal

template <typename... Args>
std::string Cat(const Args&... args) {
  std::string s;
  (cat_internal::Append(&s, args), ...);
  return s;
}

inline absl::string_view AbslView(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

}  // namespace tpserve::tok
