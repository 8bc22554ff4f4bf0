// Reads the parity goldens written by scripts/reference/make_tokenizer_goldens.py.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

namespace tpserve::testing {

struct GoldenEntry {
  std::string text;
  std::vector<int32_t> ids;                // encode(text), add_special_tokens=True
  std::optional<std::vector<int32_t>> ns;  // encode(text, add_special_tokens=False) when recorded
  std::optional<std::string> dec;          // decode(ids) when recorded (else equals text)
  std::string skip;                        // decode(ids, skip_special_tokens=True)
  bool has_full = false;                   // ns/dec were recorded for this entry
};

// tests/data/golden/tokenizer/corpus.jsonl joined with <name>.jsonl.gz. Empty on a read error.
std::vector<GoldenEntry> LoadGolden(const std::string& name);

// The lines of a text file, gzip-compressed or not.
std::vector<std::string> ReadLines(const std::string& path);

inline std::string ModelsDir() {
  const char* env = std::getenv("TPSERVE_MODELS");
  if (env != nullptr && *env != '\0') return env;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/tpserve/models";
}

constexpr const char* kGoldenDir = "tests/data/golden/tokenizer";

}  // namespace tpserve::testing
