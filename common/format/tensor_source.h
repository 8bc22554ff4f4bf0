// A named collection of mmapped tensors (one GGUF file, or a safetensors model folder) and the
// 2-D slicing that tensor-parallel ranks use to read only their part of a weight.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/format/dtype.h"

namespace tpserve {

// One tensor inside a mapped file. shape is row-major, OUTERMOST FIRST, for every format: a linear
// weight is [out_features, in_features] in GGUF too (GGUF stores ne[0] = innermost; it is reversed
// on load). `data` points into the mapping and lives as long as the TensorSource.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // path of the file holding the data, for messages
  int64_t numel() const;
};

// "[576, 1536]"
std::string ShapeToString(std::span<const int64_t> shape);

// A 2-D window of a tensor, viewed as rows x cols (1-D tensors are 1 x n; >2-D: outer dims folded
// into rows). Rows are contiguous runs of `cols` elements, `row_stride_bytes` apart.
struct TensorView {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* data = nullptr;
  size_t row_stride_bytes = 0;
  // Bytes of one row of the window (cols elements).
  size_t row_bytes() const { return ElementsToBytes(dtype, cols); }
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_stride_bytes; }
};

// Which part of a tensor a rank reads: rows [row_begin,row_end) x cols [col_begin,col_end);
// end == -1 means "to the end". Column bounds must fall on quant block edges.
struct TensorSlice {
  int64_t row_begin = 0, row_end = -1, col_begin = 0, col_end = -1;
};

// INVALID_ARGUMENT (naming the tensor) when the slice is out of range, empty-inverted, or a column
// bound is not a multiple of the type's block size.
absl::StatusOr<TensorView> ViewSlice(const TensorInfo& t, const TensorSlice& s = {});

// Dequantises / converts a whole view into a dense row-major fp32 buffer of rows * cols.
absl::StatusOr<std::vector<float>> ViewToFloat(const TensorView& v);

// "file F: tensor T: expected shape [a, b], file has [c, d]" style check used by model loaders
// (INVALID_ARGUMENT).
absl::Status CheckShape(const TensorInfo& t, std::span<const int64_t> expected);
inline absl::Status CheckShape(const TensorInfo& t, std::initializer_list<int64_t> expected) {
  return CheckShape(t, std::span<const int64_t>(expected.begin(), expected.size()));
}

class TensorSource {  // implemented by GgufFile and SafetensorsModel; data stays mmapped
 public:
  virtual ~TensorSource() = default;
  virtual std::string description() const = 0;                      // file or folder path
  virtual const TensorInfo* Find(std::string_view name) const = 0;  // nullptr if absent
  // NOT_FOUND naming the file/folder and the tensor.
  absl::StatusOr<const TensorInfo*> Get(std::string_view name) const;
  virtual std::vector<std::string> Names() const = 0;  // sorted
};

}  // namespace tpserve
