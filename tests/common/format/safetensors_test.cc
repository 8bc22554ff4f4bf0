// SafetensorsModel against files written by the `safetensors` package (tiny.safetensors, sharded/,
// safetensors.json), the real all-MiniLM-L6-v2 (minilm.json), and corrupt files built here.
#include "common/format/safetensors.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/format/format_test_util.h"

namespace tpserve {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using testing::Golden;
using ::testing::HasSubstr;
using testing::ModelsDir;
using testing::ReadJson;
using testing::TempDir;
using testing::WriteBytes;
using testing::WriteText;

// torch / numpy dtype names (as the golden script prints them) -> safetensors names.
std::string SafetensorsName(const std::string& d) {
  static const std::map<std::string, std::string> kNames = {
      {"float32", "F32"}, {"float16", "F16"}, {"bfloat16", "BF16"}, {"float64", "F64"},
      {"int64", "I64"},   {"int32", "I32"},   {"int16", "I16"},     {"int8", "I8"},
      {"uint8", "U8"},    {"bool", "BOOL"}};
  return kNames.at(d);
}

std::vector<float> Values(const TensorInfo& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  EXPECT_TRUE(ToFloat(t.dtype, t.data, out.data(), t.numel()).ok());
  return out;
}

void ExpectTensors(const SafetensorsModel& m, const nlohmann::json& golden,
                   const std::string& prefix) {
  int n = 0;
  for (const auto& [key, want] : golden.items()) {
    if (key.rfind(prefix, 0) != 0 || (prefix.empty() && key.find('/') != std::string::npos)) {
      continue;
    }
    const std::string name = key.substr(prefix.size());
    SCOPED_TRACE(name);
    auto t = m.Get(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_STREQ(DTypeName((*t)->dtype), SafetensorsName(want["dtype"]).c_str());
    EXPECT_EQ((*t)->shape, want["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(Values(**t), want["values"].get<std::vector<float>>());
    ++n;
  }
  EXPECT_EQ(static_cast<size_t>(n), m.Names().size());
}

TEST(SafetensorsTest, SingleFile) {
  auto m = SafetensorsModel::Open(Golden("tiny.safetensors"));
  ASSERT_TRUE(m.ok()) << m.status();
  ExpectTensors(**m, ReadJson(Golden("safetensors.json")), "");
  EXPECT_EQ((*m)->metadata().at("note"), "tiny");
  EXPECT_EQ((*m)->num_files(), 1u);
}

TEST(SafetensorsTest, FolderWithModelSafetensors) {
  TempDir dir;
  fs::copy_file(Golden("tiny.safetensors"), dir.file("model.safetensors"));
  auto m = SafetensorsModel::Open(dir.path());
  ASSERT_TRUE(m.ok()) << m.status();
  ExpectTensors(**m, ReadJson(Golden("safetensors.json")), "");
  EXPECT_EQ((*m)->description(), dir.path());
}

TEST(SafetensorsTest, ShardedFolder) {
  auto m = SafetensorsModel::Open(Golden("sharded"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->num_files(), 2u);
  ExpectTensors(**m, ReadJson(Golden("safetensors.json")), "sharded/");
  EXPECT_THAT((*m)->Find("lm_head.weight")->file, HasSubstr("model-00002-of-00002"));
}

TEST(SafetensorsTest, MissingTensorAndShapeMismatchNameTheTensor) {
  auto m = SafetensorsModel::Open(Golden("sharded"));
  ASSERT_TRUE(m.ok()) << m.status();
  auto missing = (*m)->Get("model.layers.7.w");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()),
              AllOf(HasSubstr("sharded"), HasSubstr("model.layers.7.w")));
  const absl::Status st = CheckShape(*(*m)->Find("model.layers.1.w"), {3, 2});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()),
              AllOf(HasSubstr("model-00002-of-00002.safetensors"), HasSubstr("model.layers.1.w"),
                    HasSubstr("expected shape [3, 2], file has [2, 3]")));
}

// A safetensors file from a header object and a data block.
std::vector<uint8_t> MakeFile(const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> b(8 + header.size() + data_bytes, 0);
  const uint64_t n = header.size();
  std::memcpy(b.data(), &n, 8);
  std::memcpy(b.data() + 8, header.data(), header.size());
  return b;
}

class SafetensorsBadFileTest : public ::testing::Test {
 protected:
  std::string OpenBad(const std::vector<uint8_t>& bytes) {
    const std::string path = dir_.file("bad.safetensors");
    WriteBytes(path, bytes);
    auto m = SafetensorsModel::Open(path);
    EXPECT_FALSE(m.ok()) << "corrupt file opened";
    if (m.ok()) return "";
    EXPECT_THAT(std::string(m.status().message()), HasSubstr(path));
    return std::string(m.status().message());
  }
  TempDir dir_;
};

TEST_F(SafetensorsBadFileTest, HeaderNotJson) {
  EXPECT_THAT(OpenBad(MakeFile("{\"a\": {\"dtype\": ", 16)), HasSubstr("not a JSON object"));
  EXPECT_THAT(OpenBad(MakeFile("[1, 2]", 16)), HasSubstr("not a JSON object"));
}

TEST_F(SafetensorsBadFileTest, HeaderLengthPastEnd) {
  std::vector<uint8_t> b = MakeFile("{}", 0);
  b[0] = 0xff;
  EXPECT_THAT(OpenBad(b), HasSubstr("header length"));
  EXPECT_THAT(OpenBad({1, 2, 3}), HasSubstr("truncated"));
}

TEST_F(SafetensorsBadFileTest, OffsetsOverlap) {
  const std::string h = R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
                        R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})";
  EXPECT_THAT(OpenBad(MakeFile(h, 16)),
              AllOf(HasSubstr("overlap"), HasSubstr("a"), HasSubstr("b")));
}

TEST_F(SafetensorsBadFileTest, OffsetsPastEnd) {
  const std::string h = R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})";
  EXPECT_THAT(OpenBad(MakeFile(h, 16)), AllOf(HasSubstr("tensor w"), HasSubstr("exceed")));
  const std::string wrap =
      R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [18446744073709551615, 3]}})";
  EXPECT_THAT(OpenBad(MakeFile(wrap, 16)), HasSubstr("tensor w"));
}

TEST_F(SafetensorsBadFileTest, SizeDoesNotMatchShape) {
  const std::string h = R"({"w": {"dtype": "BF16", "shape": [3, 3], "data_offsets": [0, 16]}})";
  EXPECT_THAT(OpenBad(MakeFile(h, 16)), AllOf(HasSubstr("tensor w"), HasSubstr("needs 18")));
}

TEST_F(SafetensorsBadFileTest, UnknownDtypeAndBadEntries) {
  EXPECT_THAT(
      OpenBad(MakeFile(R"({"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}})", 4)),
      AllOf(HasSubstr("tensor w"), HasSubstr("unsupported dtype F8_E4M3")));
  EXPECT_THAT(
      OpenBad(MakeFile(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4)),
      AllOf(HasSubstr("tensor w"), HasSubstr("shape")));
  EXPECT_THAT(OpenBad(MakeFile(R"({"w": {"dtype": "F32", "shape": [1]}})", 4)),
              HasSubstr("data_offsets"));
}

TEST_F(SafetensorsBadFileTest, RandomHeaderCorruptionNeverCrashes) {
  // Overwrite header bytes of tiny.safetensors in place; Open may succeed or fail, never crash.
  const std::vector<uint8_t> good = testing::ReadBytes(Golden("tiny.safetensors"));
  uint64_t header_len;
  std::memcpy(&header_len, good.data(), 8);
  const std::string path = dir_.file("fuzz.safetensors");
  WriteBytes(path, good);
  std::fstream io(path, std::ios::in | std::ios::out | std::ios::binary);
  const auto put = [&](size_t pos, uint8_t v) {
    io.seekp(static_cast<std::streamoff>(pos));
    io.put(static_cast<char>(v));
    io.flush();
  };
  std::mt19937 rng(7);
  int failures = 0;
  // Mostly digits and JSON punctuation, so offsets and shapes change, not only the syntax.
  const std::string alphabet = "0123456789[]{},:\"-eE. FIUB";
  for (int iter = 0; iter < 2000; ++iter) {
    const size_t pos = rng() % (8 + header_len);
    put(pos, pos < 8 ? static_cast<uint8_t>(rng()) : alphabet[rng() % alphabet.size()]);
    auto m = SafetensorsModel::Open(path);
    if (!m.ok()) {
      ++failures;
    } else {
      for (const std::string& name : (*m)->Names()) {
        const TensorInfo* t = (*m)->Find(name);
        std::vector<float> out(static_cast<size_t>(t->numel()));
        ASSERT_TRUE(ToFloat(t->dtype, t->data, out.data(), t->numel()).ok());
      }
    }
    put(pos, good[pos]);
  }
  EXPECT_GT(failures, 500);
}

TEST(SafetensorsIndexTest, MissingShard) {
  TempDir dir;
  fs::copy(Golden("sharded"), dir.path());
  fs::remove(dir.file("model-00002-of-00002.safetensors"));
  auto m = SafetensorsModel::Open(dir.path());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(m.status().message()),
              AllOf(HasSubstr("model.safetensors.index.json"),
                    HasSubstr("model-00002-of-00002.safetensors"), HasSubstr("missing")));
}

TEST(SafetensorsIndexTest, IndexNamesWrongShard) {
  TempDir dir;
  fs::copy(Golden("sharded"), dir.path());
  nlohmann::json index = ReadJson(dir.file("model.safetensors.index.json"));
  index["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors";
  WriteText(dir.file("model.safetensors.index.json"), index.dump());
  auto m = SafetensorsModel::Open(dir.path());
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()),
              AllOf(HasSubstr("lm_head.weight"), HasSubstr("model-00001-of-00002")));
}

TEST(SafetensorsIndexTest, EmptyFolder) {
  TempDir dir;
  auto m = SafetensorsModel::Open(dir.path());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("model.safetensors"));
}

TEST(MiniLMTest, RealModelMatchesSafetensorsPackage) {
  const std::string path = ModelsDir() + "/all-MiniLM-L6-v2";
  if (!fs::exists(path + "/model.safetensors")) GTEST_SKIP() << "all-MiniLM-L6-v2 not found";
  auto m = SafetensorsModel::Open(path);
  ASSERT_TRUE(m.ok()) << m.status();
  const nlohmann::json golden = ReadJson(Golden("minilm.json"));
  EXPECT_EQ((*m)->Names().size(), golden["count"].get<size_t>());
  ASSERT_GE(golden["tensors"].size(), 3u);
  for (const auto& [name, want] : golden["tensors"].items()) {
    SCOPED_TRACE(name);
    auto t = (*m)->Get(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_STREQ(DTypeName((*t)->dtype), SafetensorsName(want["dtype"]).c_str());
    EXPECT_EQ((*t)->shape, want["shape"].get<std::vector<int64_t>>());
    const std::vector<float> v = Values(**t);
    const auto head = want["head"].get<std::vector<float>>();
    const auto last = want["last"].get<std::vector<float>>();
    EXPECT_EQ(std::vector<float>(v.begin(), v.begin() + head.size()), head);
    EXPECT_EQ(std::vector<float>(v.end() - last.size(), v.end()), last);
  }
}

}  // namespace
}  // namespace tpserve
