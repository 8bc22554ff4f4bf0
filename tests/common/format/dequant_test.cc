// ToFloat for every type against gguf-py's dequantize (quants.gguf: "<T>" and "<T>.expected").
#include <cmath>

#include "common/format/gguf.h"
#include "gtest/gtest.h"
#include "tests/common/format/format_test_util.h"

namespace tpserve {
namespace {

using testing::Golden;
using testing::UlpDiff;

class DequantTest : public ::testing::TestWithParam<const char*> {
 protected:
  static void SetUpTestSuite() {
    auto f = GgufFile::Open(Golden("quants.gguf"));
    ASSERT_TRUE(f.ok()) << f.status();
    file_ = f->release();
  }
  static void TearDownTestSuite() {
    delete file_;
    file_ = nullptr;
  }
  static const GgufFile* file_;
};
const GgufFile* DequantTest::file_ = nullptr;

void ExpectMatches(const std::vector<float>& got, const TensorInfo& expected) {
  ASSERT_EQ(expected.dtype, DType::kF32);
  ASSERT_EQ(static_cast<int64_t>(got.size()), expected.numel());
  const float* want = reinterpret_cast<const float*>(expected.data);
  int64_t max_ulp = 0, exact = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(want[i])) << i;
    max_ulp = std::max(max_ulp, UlpDiff(got[i], want[i]));
    exact += got[i] == want[i];
  }
  // The contract allows 1 ulp; in practice every value is bit-identical.
  EXPECT_LE(max_ulp, 1) << expected.name;
  EXPECT_EQ(exact, static_cast<int64_t>(got.size())) << expected.name << ": not bit-exact";
}

TEST_P(DequantTest, WholeTensorMatchesGgufPy) {
  const std::string name = GetParam();
  const TensorInfo* t = file_->Find(name);
  const TensorInfo* expected = file_->Find(name + ".expected");
  ASSERT_NE(t, nullptr);
  ASSERT_NE(expected, nullptr);
  EXPECT_STREQ(DTypeName(t->dtype), name.c_str());
  EXPECT_EQ(t->shape, expected->shape);
  std::vector<float> got(static_cast<size_t>(t->numel()));
  ASSERT_TRUE(ToFloat(t->dtype, t->data, got.data(), t->numel()).ok());
  ExpectMatches(got, *expected);
}

TEST_P(DequantTest, RowViewsMatchGgufPy) {
  const std::string name = GetParam();
  const TensorInfo* t = file_->Find(name);
  const TensorInfo* expected = file_->Find(name + ".expected");
  ASSERT_NE(t, nullptr);
  // The last two rows through ViewSlice: the row stride must skip whole rows of blocks.
  auto v = ViewSlice(*t, {.row_begin = 1});
  ASSERT_TRUE(v.ok()) << v.status();
  auto got = ViewToFloat(*v);
  ASSERT_TRUE(got.ok()) << got.status();
  const int64_t cols = t->shape.back();
  ASSERT_EQ(static_cast<int64_t>(got->size()), 2 * cols);
  const float* want = reinterpret_cast<const float*>(expected->data) + cols;
  for (int64_t i = 0; i < 2 * cols; ++i) ASSERT_EQ((*got)[i], want[i]) << name << " " << i;
}

INSTANTIATE_TEST_SUITE_P(AllTypes, DequantTest,
                         ::testing::Values("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
                                           "Q4_K", "Q5_K", "Q6_K", "Q8_K", "BF16", "F16", "F64",
                                           "I8", "I16", "I32", "I64"),
                         [](const auto& info) { return std::string(info.param); });

// Q8_1 has no GGUF spelling gguf-py agrees on; its blocks are stored as raw I8 bytes.
TEST(DequantQ8_1Test, MatchesGgmlFormula) {
  auto f = GgufFile::Open(Golden("quants.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  const TensorInfo* raw = (*f)->Find("Q8_1.raw");
  const TensorInfo* expected = (*f)->Find("Q8_1.expected");
  ASSERT_NE(raw, nullptr);
  ASSERT_NE(expected, nullptr);
  ASSERT_EQ(raw->nbytes, ElementsToBytes(DType::kQ8_1, expected->numel()));
  std::vector<float> got(static_cast<size_t>(expected->numel()));
  ASSERT_TRUE(ToFloat(DType::kQ8_1, raw->data, got.data(), expected->numel()).ok());
  ExpectMatches(got, *expected);
}

TEST(DequantF32Test, F32IsCopied) {
  auto f = GgufFile::Open(Golden("quants.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  const TensorInfo* t = (*f)->Find("F32");
  ASSERT_NE(t, nullptr);
  std::vector<float> got(static_cast<size_t>(t->numel()));
  ASSERT_TRUE(ToFloat(DType::kF32, t->data, got.data(), t->numel()).ok());
  EXPECT_EQ(std::memcmp(got.data(), t->data, t->nbytes), 0);
}

}  // namespace
}  // namespace tpserve
