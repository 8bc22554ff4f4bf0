// UTF-8 helpers with Python `str` semantics: templates index, slice, measure and case-map strings
// by code point, and `strip()`/`split()` use Python's notion of whitespace.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "common/base/utf8.h"

namespace tpserve::chat {

// String concatenation for error messages. (absl::StrCat cannot take std::string_view here:
// Debian's abseil has its own string_view type.)
template <typename... Args>
std::string Cat(const Args&... args) {
  std::string out;
  auto append = [&out](const auto& a) {
    using A = std::decay_t<decltype(a)>;
    if constexpr (std::is_arithmetic_v<A> && !std::is_same_v<A, char>) {
      out += std::to_string(a);
    } else if constexpr (std::is_same_v<A, char>) {
      out += a;
    } else {
      out += std::string_view(a);
    }
  };
  (append(args), ...);
  return out;
}

// Invalid bytes decode to U+FFFD, one per byte, so malformed input never aborts a render.
std::u32string DecodeUtf8(std::string_view s);
std::string EncodeUtf8(std::u32string_view s);
using ::tpserve::AppendUtf8;  // common/base/utf8.h
size_t CodePointCount(std::string_view s);

// Python `str.isspace()` for one code point.
bool IsPySpace(char32_t cp);

std::string PyUpper(std::string_view s);
std::string PyLower(std::string_view s);
// Python `str.title()`: a cased letter after an uncased character is uppercased, others lowered.
std::string PyTitle(std::string_view s);
// Python `str.capitalize()`: first code point uppercased, the rest lowered.
std::string PyCapitalize(std::string_view s);

// Python `str.strip/lstrip/rstrip(chars)`; `chars == nullptr` strips whitespace.
std::string PyStrip(std::string_view s, const std::string* chars, bool left, bool right);
// Python `str.split(sep, maxsplit)`; `sep == nullptr` splits on runs of whitespace.
std::vector<std::string> PySplit(std::string_view s, const std::string* sep, int maxsplit);
// Python `str.replace(old, new, count)`; count < 0 replaces all.
std::string PyReplace(std::string_view s, std::string_view old_s, std::string_view new_s,
                      long count);

}  // namespace tpserve::chat
