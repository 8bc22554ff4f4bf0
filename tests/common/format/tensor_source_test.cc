// ViewSlice / CheckShape / TensorSource::Get on the quantised tensors of quants.gguf, checked
// against the gguf-py dequantised values stored next to them.
#include "common/format/tensor_source.h"

#include "common/format/gguf.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/format/format_test_util.h"

namespace tpserve {
namespace {

using ::testing::AllOf;
using testing::Golden;
using ::testing::HasSubstr;

class ViewSliceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto f = GgufFile::Open(Golden("quants.gguf"));
    ASSERT_TRUE(f.ok()) << f.status();
    file_ = std::move(*f);
  }
  // Expected values of rows [r0, r1) x cols [c0, c1) from "<name>.expected".
  std::vector<float> Expected(const std::string& name, int64_t r0, int64_t r1, int64_t c0,
                              int64_t c1) {
    const TensorInfo* e = file_->Find(name + ".expected");
    const int64_t cols = e->shape.back();
    const float* p = reinterpret_cast<const float*>(e->data);
    std::vector<float> out;
    for (int64_t r = r0; r < r1; ++r) out.insert(out.end(), p + r * cols + c0, p + r * cols + c1);
    return out;
  }
  std::vector<float> Slice(const std::string& name, const TensorSlice& s) {
    auto v = ViewSlice(*file_->Find(name), s);
    EXPECT_TRUE(v.ok()) << v.status();
    if (!v.ok()) return {};
    auto out = ViewToFloat(*v);
    EXPECT_TRUE(out.ok()) << out.status();
    return *out;
  }
  std::unique_ptr<GgufFile> file_;
};

TEST_F(ViewSliceTest, WholeTensor) {
  const TensorInfo* t = file_->Find("Q4_1");  // [3, 96]
  auto v = ViewSlice(*t);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->rows, 3);
  EXPECT_EQ(v->cols, 96);
  EXPECT_EQ(v->data, t->data);
  EXPECT_EQ(v->row_stride_bytes, ElementsToBytes(DType::kQ4_1, 96));
  EXPECT_EQ(Slice("Q4_1", {}), Expected("Q4_1", 0, 3, 0, 96));
}

TEST_F(ViewSliceTest, RowRange) {
  EXPECT_EQ(Slice("Q8_0", {.row_begin = 1, .row_end = 2}), Expected("Q8_0", 1, 2, 0, 96));
  EXPECT_EQ(Slice("Q6_K", {.row_begin = 2}), Expected("Q6_K", 2, 3, 0, 512));
}

TEST_F(ViewSliceTest, ColumnsOnBlockEdges) {
  // A column-parallel rank's window: rows 1..2, the second 32-block of each row.
  EXPECT_EQ(Slice("Q4_0", {.row_begin = 1, .row_end = 3, .col_begin = 32, .col_end = 64}),
            Expected("Q4_0", 1, 3, 32, 64));
  EXPECT_EQ(Slice("Q4_K", {.col_begin = 256}), Expected("Q4_K", 0, 3, 256, 512));
  EXPECT_EQ(Slice("F16", {.col_begin = 3, .col_end = 5}), Expected("F16", 0, 3, 3, 5));
  auto v = ViewSlice(*file_->Find("Q5_1"), {.col_begin = 64});
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->cols, 32);
  EXPECT_EQ(v->row_bytes(), ElementsToBytes(DType::kQ5_1, 32));
  EXPECT_EQ(v->row_stride_bytes, ElementsToBytes(DType::kQ5_1, 96));
}

TEST_F(ViewSliceTest, ColumnMidBlockIsAnError) {
  auto v = ViewSlice(*file_->Find("Q4_1"), {.col_begin = 16});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(v.status().message()),
              AllOf(HasSubstr("quants.gguf"), HasSubstr("tensor Q4_1"), HasSubstr("block")));
  EXPECT_FALSE(ViewSlice(*file_->Find("Q4_K"), {.col_end = 300}).ok());
}

TEST_F(ViewSliceTest, OutOfRange) {
  const TensorInfo* t = file_->Find("Q8_0");
  EXPECT_FALSE(ViewSlice(*t, {.row_begin = 0, .row_end = 4}).ok());
  EXPECT_FALSE(ViewSlice(*t, {.row_begin = 2, .row_end = 1}).ok());
  EXPECT_FALSE(ViewSlice(*t, {.col_begin = 0, .col_end = 128}).ok());
  EXPECT_FALSE(ViewSlice(*t, {.row_begin = -1}).ok());
  auto empty = ViewSlice(*t, {.row_begin = 3});
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->rows, 0);
}

TEST(ViewSliceShapeTest, OneDimensionalAndFolded) {
  auto f = GgufFile::Open(Golden("meta.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  auto vec = ViewSlice(*(*f)->Find("vec"));  // [5] -> 1 x 5
  ASSERT_TRUE(vec.ok());
  EXPECT_EQ(vec->rows, 1);
  EXPECT_EQ(vec->cols, 5);
  auto cube = ViewSlice(*(*f)->Find("cube"), {.row_begin = 4});  // [2, 3, 4] -> 6 x 4
  ASSERT_TRUE(cube.ok());
  EXPECT_EQ(cube->rows, 2);
  EXPECT_EQ(cube->cols, 4);
  const float* base = reinterpret_cast<const float*>((*f)->Find("cube")->data);
  EXPECT_EQ(reinterpret_cast<const float*>(cube->data), base + 16);
}

TEST_F(ViewSliceTest, CheckShape) {
  const TensorInfo* t = file_->Find("Q4_1");
  EXPECT_TRUE(CheckShape(*t, {3, 96}).ok());
  const absl::Status st = CheckShape(*t, {96, 3});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()),
              AllOf(HasSubstr("quants.gguf"), HasSubstr("tensor Q4_1"),
                    HasSubstr("expected shape [96, 3], file has [3, 96]")));
  EXPECT_FALSE(CheckShape(*t, {3, 96, 1}).ok());
}

}  // namespace
}  // namespace tpserve
