// A weight matrix as the backend keeps it: [rows, cols] = [out_features, in_features] in the
// file's element type (dense or block-quantised), rows `row_stride_bytes` apart. On the CPU the
// data usually points straight into the mmapped file (a rank's slice included); types the
// kernels do not read directly are converted to fp32 at load and owned here. The CPU backend
// may also keep an int8-kernel re-layout of quantised weights (`int8`, see cpu/int8_gemm.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/format/dtype.h"

namespace tpserve {

struct PackedInt8Weight;

struct Weight {
  DType dtype = DType::kF32;
  int64_t rows = 0;  // output features
  int64_t cols = 0;  // input features
  const uint8_t* data = nullptr;
  size_t row_stride_bytes = 0;
  std::shared_ptr<void> owned;                   // set when the backend made its own copy
  std::shared_ptr<const PackedInt8Weight> int8;  // CPU: the same rows packed for Int8Gemm

  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_stride_bytes; }
  bool empty() const { return data == nullptr; }
  // Bytes a full pass over the weight reads (for bandwidth figures).
  size_t bytes() const { return static_cast<size_t>(rows) * ElementsToBytes(dtype, cols); }
};

}  // namespace tpserve
