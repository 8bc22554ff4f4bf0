#include "common/chat/text_util.h"

#include <utf8proc.h>

namespace tpserve::chat {

std::u32string DecodeUtf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > s.size()) {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    bool ok = true;
    for (int k = 1; k < len; ++k) {
      const unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 0x2) {
        ok = false;
        break;
      }
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (!ok) {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

std::string EncodeUtf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t cp : s) AppendUtf8(cp, &out);
  return out;
}

size_t CodePointCount(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

bool IsPySpace(char32_t cp) {
  // The code points for which CPython's str.isspace() is true (bidi class WS/B/S or category Zs).
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x1C:
    case 0x1D:
    case 0x1E:
    case 0x1F:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

namespace {

bool IsCased(char32_t cp) {
  return utf8proc_toupper(cp) != static_cast<utf8proc_int32_t>(cp) ||
         utf8proc_tolower(cp) != static_cast<utf8proc_int32_t>(cp) ||
         utf8proc_totitle(cp) != static_cast<utf8proc_int32_t>(cp);
}

char32_t Upper(char32_t cp) { return static_cast<char32_t>(utf8proc_toupper(cp)); }
char32_t Lower(char32_t cp) { return static_cast<char32_t>(utf8proc_tolower(cp)); }

}  // namespace

std::string PyUpper(std::string_view s) {
  std::u32string u = DecodeUtf8(s);
  for (char32_t& cp : u) cp = Upper(cp);
  return EncodeUtf8(u);
}

std::string PyLower(std::string_view s) {
  std::u32string u = DecodeUtf8(s);
  for (char32_t& cp : u) cp = Lower(cp);
  return EncodeUtf8(u);
}

std::string PyTitle(std::string_view s) {
  std::u32string u = DecodeUtf8(s);
  bool prev_cased = false;
  for (char32_t& cp : u) {
    const bool cased = IsCased(cp);
    cp = prev_cased ? Lower(cp) : static_cast<char32_t>(utf8proc_totitle(cp));
    prev_cased = cased;
  }
  return EncodeUtf8(u);
}

std::string PyCapitalize(std::string_view s) {
  std::u32string u = DecodeUtf8(s);
  for (size_t i = 0; i < u.size(); ++i) {
    u[i] = i == 0 ? static_cast<char32_t>(utf8proc_totitle(u[i])) : Lower(u[i]);
  }
  return EncodeUtf8(u);
}

std::string PyStrip(std::string_view s, const std::string* chars, bool left, bool right) {
  const std::u32string u = DecodeUtf8(s);
  const std::u32string set = chars ? DecodeUtf8(*chars) : std::u32string();
  auto strip = [&](char32_t cp) {
    return chars ? set.find(cp) != std::u32string::npos : IsPySpace(cp);
  };
  size_t b = 0, e = u.size();
  if (left) {
    while (b < e && strip(u[b])) ++b;
  }
  if (right) {
    while (e > b && strip(u[e - 1])) --e;
  }
  return EncodeUtf8(std::u32string_view(u).substr(b, e - b));
}

std::vector<std::string> PySplit(std::string_view s, const std::string* sep, int maxsplit) {
  std::vector<std::string> parts;
  if (sep != nullptr) {
    size_t start = 0;
    while (maxsplit < 0 || static_cast<int>(parts.size()) < maxsplit) {
      const size_t at = s.find(*sep, start);
      if (at == std::string_view::npos) break;
      parts.emplace_back(s.substr(start, at - start));
      start = at + sep->size();
    }
    parts.emplace_back(s.substr(start));
    return parts;
  }
  const std::u32string u = DecodeUtf8(s);
  size_t i = 0;
  while (true) {
    while (i < u.size() && IsPySpace(u[i])) ++i;
    if (i == u.size()) break;
    if (maxsplit >= 0 && static_cast<int>(parts.size()) == maxsplit) {
      size_t e = u.size();
      while (e > i && IsPySpace(u[e - 1])) --e;
      parts.push_back(EncodeUtf8(std::u32string_view(u).substr(i, e - i)));
      break;
    }
    size_t j = i;
    while (j < u.size() && !IsPySpace(u[j])) ++j;
    parts.push_back(EncodeUtf8(std::u32string_view(u).substr(i, j - i)));
    i = j;
  }
  return parts;
}

std::string PyReplace(std::string_view s, std::string_view old_s, std::string_view new_s,
                      long count) {
  std::string out;
  if (old_s.empty()) {
    // Python inserts `new` before every code point and at the end.
    const std::u32string u = DecodeUtf8(s);
    long n = 0;
    for (char32_t cp : u) {
      if (count < 0 || n < count) {
        out += new_s;
        ++n;
      }
      AppendUtf8(cp, &out);
    }
    if (count < 0 || n < count) out += new_s;
    return out;
  }
  size_t start = 0;
  long n = 0;
  while (count < 0 || n < count) {
    const size_t at = s.find(old_s, start);
    if (at == std::string_view::npos) break;
    out.append(s.substr(start, at - start));
    out.append(new_s);
    start = at + old_s.size();
    ++n;
  }
  out.append(s.substr(start));
  return out;
}

}  // namespace tpserve::chat
