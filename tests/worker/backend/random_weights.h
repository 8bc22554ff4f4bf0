// Random weight matrices in every storage type the CPU kernels read, for op tests.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/format/dtype.h"
#include "worker/backend/weight.h"

namespace tpserve::testing {

// A [rows, cols] matrix of `dtype` whose rows sit `pad_bytes` apart beyond their length (as in a
// column window of a larger tensor). Bytes are random but valid: fp16 scales in a sane range.
struct RandomMatrix {
  std::vector<uint8_t> bytes;
  Weight weight;
  std::vector<float> dense;  // [rows, cols], dequantised with the format library's ToFloat
};

inline RandomMatrix MakeRandomMatrix(DType dtype, int64_t rows, int64_t cols, std::mt19937& rng,
                                     size_t pad_bytes = 0) {
  const DTypeInfo& info = GetDTypeInfo(dtype);
  const size_t row_bytes = ElementsToBytes(dtype, cols);
  const size_t stride = row_bytes + pad_bytes;
  RandomMatrix m;
  m.bytes.resize(stride * rows);
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = m.bytes.data() + r * stride;
    if (!info.quantized) {
      for (int64_t i = 0; i < cols; ++i) {
        const float v = normal(rng);
        if (dtype == DType::kF32) {
          std::memcpy(row + 4 * i, &v, 4);
        } else {
          const uint16_t h = dtype == DType::kF16 ? FloatToHalf(v) : FloatToBFloat16(v);
          std::memcpy(row + 2 * i, &h, 2);
        }
      }
    } else {
      for (size_t i = 0; i < row_bytes; ++i) row[i] = static_cast<uint8_t>(byte(rng));
      // Scales (d, and m for Q4_1) at the head of each block: random fp16 in a sane range.
      for (int64_t b = 0; b < cols / info.block_elems; ++b) {
        uint8_t* block = row + b * info.block_bytes;
        const uint16_t d = FloatToHalf(scale(rng) * (byte(rng) & 1 ? 1.0f : -1.0f));
        std::memcpy(block, &d, 2);
        if (dtype == DType::kQ4_1) {
          const uint16_t mm = FloatToHalf(-8.0f * scale(rng));
          std::memcpy(block + 2, &mm, 2);
        }
      }
    }
    for (size_t i = row_bytes; i < stride; ++i) row[i] = 0xEE;  // garbage outside the window
  }
  m.dense.resize(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    (void)ToFloat(dtype, m.bytes.data() + r * stride, m.dense.data() + r * cols, cols);
  }
  m.weight = Weight{.dtype = dtype,
                    .rows = rows,
                    .cols = cols,
                    .data = m.bytes.data(),
                    .row_stride_bytes = stride,
                    .owned = nullptr,
                    .int8 = nullptr};
  return m;
}

inline std::vector<float> RandomFloats(int64_t n, std::mt19937& rng, float stddev = 1.0f) {
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

}  // namespace tpserve::testing
