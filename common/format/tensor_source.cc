#include "common/format/tensor_source.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tpserve {

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeToString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<TensorView> ViewSlice(const TensorInfo& t, const TensorSlice& s) {
  // Fold to rows x cols: cols = innermost dim, rows = product of the others (1 for 1-D).
  const int64_t cols = t.shape.empty() ? 1 : t.shape.back();
  const int64_t rows = cols == 0 ? 0 : t.numel() / cols;
  const auto err = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("file ", t.file, ": tensor ", t.name, " ",
                                                   ShapeToString(t.shape), " (", rows, " x ", cols,
                                                   "): ", what));
  };
  const int64_t r0 = s.row_begin, r1 = s.row_end == -1 ? rows : s.row_end;
  const int64_t c0 = s.col_begin, c1 = s.col_end == -1 ? cols : s.col_end;
  if (r0 < 0 || r1 < r0 || r1 > rows) {
    return err(absl::StrCat("row range [", r0, ", ", r1, ") is out of bounds"));
  }
  if (c0 < 0 || c1 < c0 || c1 > cols) {
    return err(absl::StrCat("column range [", c0, ", ", c1, ") is out of bounds"));
  }
  const DTypeInfo& info = GetDTypeInfo(t.dtype);
  if (c0 % info.block_elems != 0 || (c1 % info.block_elems != 0 && c1 != cols)) {
    return err(absl::StrCat("column range [", c0, ", ", c1, ") does not fall on ", info.name,
                            " block edges (", info.block_elems, " elements)"));
  }
  if (cols % info.block_elems != 0) {
    return err(absl::StrCat("row length is not a multiple of the ", info.name, " block size ",
                            info.block_elems));
  }
  const size_t stride = ElementsToBytes(t.dtype, cols);
  if (stride * static_cast<size_t>(rows) > t.nbytes) {
    return err(absl::StrCat("data is ", t.nbytes, " bytes, shape needs ",
                            stride * static_cast<size_t>(rows)));
  }
  TensorView v;
  v.dtype = t.dtype;
  v.rows = r1 - r0;
  v.cols = c1 - c0;
  v.row_stride_bytes = stride;
  v.data = t.data + static_cast<size_t>(r0) * stride + ElementsToBytes(t.dtype, c0);
  return v;
}

absl::StatusOr<std::vector<float>> ViewToFloat(const TensorView& v) {
  std::vector<float> out(static_cast<size_t>(v.rows * v.cols));
  for (int64_t r = 0; r < v.rows; ++r) {
    absl::Status st = ToFloat(v.dtype, v.row(r), out.data() + r * v.cols, v.cols);
    if (!st.ok()) return st;
  }
  return out;
}

absl::Status CheckShape(const TensorInfo& t, std::span<const int64_t> expected) {
  if (std::equal(t.shape.begin(), t.shape.end(), expected.begin(), expected.end())) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("file ", t.file, ": tensor ", t.name,
                                                 ": expected shape ", ShapeToString(expected),
                                                 ", file has ", ShapeToString(t.shape)));
}

absl::StatusOr<const TensorInfo*> TensorSource::Get(std::string_view name) const {
  if (const TensorInfo* t = Find(name)) return t;
  return absl::NotFoundError(
      absl::StrCat(description(), ": tensor ", std::string(name), " not found"));
}

}  // namespace tpserve
