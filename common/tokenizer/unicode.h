// UTF-8 and Unicode helpers for the tokenizer: decoding, character classes with the meanings that
// Hugging Face `tokenizers` (Rust `char` methods) gives them, normalisation forms via utf8proc, and
// the GPT-2 byte <-> printable-character table used by byte-level BPE.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/base/utf8.h"

namespace tpserve::tok {

// Decodes the code point at s[*pos] and advances *pos. The input must be valid UTF-8 (see
// SanitizeUtf8); returns U+FFFD and advances one byte on a malformed sequence.
char32_t NextCodePoint(std::string_view s, size_t* pos);
// Byte length of the UTF-8 sequence that starts with `lead` (1 for continuation / invalid bytes).
inline int Utf8SeqLen(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;
}
using ::tpserve::AppendUtf8;  // common/base/utf8.h
// Length of the longest prefix of `s` that is complete, valid UTF-8 (stops before a sequence that
// is truncated at the end or malformed).
size_t ValidUtf8Prefix(std::string_view s);
// True when `s` is valid UTF-8.
bool IsValidUtf8(std::string_view s);
// Replaces every maximal invalid subsequence with U+FFFD, as Python's errors="replace" and Rust's
// String::from_utf8_lossy do.
std::string SanitizeUtf8(std::string_view s);

// Character classes (Unicode general categories from utf8proc).
bool IsWhitespace(char32_t c);    // Rust char::is_whitespace (White_Space property)
bool IsAlphanumeric(char32_t c);  // Rust char::is_alphanumeric (L*, Nd, Nl, No)
bool IsWordChar(char32_t c);      // regex \w: alphanumeric, marks, connector punctuation
bool IsPunctuation(char32_t c);   // P* categories
bool IsOther(char32_t c);         // C* categories (control, format, unassigned, private, surrogate)
bool IsMarkNonspacing(char32_t c);  // Mn
bool IsMark(char32_t c);            // Mn, Mc, Me
bool IsDigit(char32_t c);           // Rust char::is_numeric (Nd, Nl, No)
bool IsCjkIdeograph(char32_t c);    // the CJK blocks BERT pads with spaces

// Normalisation forms; the input must be valid UTF-8.
enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };
std::string Normalize(std::string_view s, NormalForm form);
// Per-character full lower-casing (Rust char::to_lowercase: simple mapping plus U+0130 ->
// "i\u0307").
std::string Lowercase(std::string_view s);

// GPT-2's reversible map from the 256 byte values to printable code points.
const std::array<char32_t, 256>& ByteToUnicode();
// Inverse of ByteToUnicode; -1 for code points outside the alphabet. Valid for cp < 0x200.
int UnicodeToByte(char32_t cp);

}  // namespace tpserve::tok
