// Helpers shared by the common/format tests: golden files, the real-model folder, temp files.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace tpserve::testing {

inline const std::string kGoldenDir = "tests/data/golden/format";

inline std::string Golden(const std::string& name) { return kGoldenDir + "/" + name; }

inline nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  return nlohmann::json::parse(in);
}

inline std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

inline void WriteBytes(const std::string& path, const void* data, size_t n) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}
inline void WriteBytes(const std::string& path, const std::vector<uint8_t>& b) {
  WriteBytes(path, b.data(), b.size());
}
inline void WriteText(const std::string& path, const std::string& s) {
  WriteBytes(path, s.data(), s.size());
}

// $TPSERVE_MODELS, else ~/.cache/tpserve/models.
inline std::string ModelsDir() {
  if (const char* m = std::getenv("TPSERVE_MODELS"); m != nullptr && *m) return m;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : ".") + "/.cache/tpserve/models";
}

// A fresh directory under the system temp dir, removed with its contents on destruction.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "tpserve_fmt_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Position of the first occurrence of `needle` in `hay` (fails the test when absent).
inline size_t FindBytes(const std::vector<uint8_t>& hay, const std::string& needle) {
  auto it = std::search(hay.begin(), hay.end(), needle.begin(), needle.end());
  EXPECT_NE(it, hay.end()) << "\"" << needle << "\" not found";
  return static_cast<size_t>(it - hay.begin());
}

template <typename T>
void Poke(std::vector<uint8_t>& b, size_t pos, T v) {
  ASSERT_LE(pos + sizeof(T), b.size());
  std::memcpy(b.data() + pos, &v, sizeof(T));
}

// Distance in units in the last place between two floats of the same sign (0 = identical bits).
inline int64_t UlpDiff(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if (ia < 0) ia = INT32_MIN - ia;
  if (ib < 0) ib = INT32_MIN - ib;
  return std::llabs(static_cast<int64_t>(ia) - ib);
}

}  // namespace tpserve::testing
