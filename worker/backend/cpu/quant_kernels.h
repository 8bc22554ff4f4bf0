// Row kernels over weights in their storage type: F32, F16, BF16 and the GGML blocks Q4_0
// (fp16 d, 16 bytes of nibbles: w = (q - 8) * d), Q4_1 (fp16 d, fp16 m, nibbles: w = q * d + m)
// and Q8_0 (fp16 d, 32 int8: w = q * d). In a 32-element nibble block, byte j holds element j in
// its low nibble and element j + 16 in its high nibble. Activations stay fp32 (no Q8 rounding of
// x as llama.cpp does), so a dot product equals the fp32 dot on the dequantised row up to
// summation order.
#pragma once

#include <cstdint>

#include "common/format/dtype.h"

namespace tpserve {

// Types the kernels below read directly; anything else is converted to F32 at load.
bool CpuKernelReads(DType t);

// dst[0, n) = the n weights starting at `src` (n a multiple of the block size for quantised
// types; src at a block boundary).
void DequantizeRow(DType t, const uint8_t* src, int64_t n, float* dst);

// The most activation rows one DotRows call handles.
inline constexpr int kMaxDotRows = 8;

// out[j * out_stride] = dot(w[0, n), x + j * x_stride) for j in [0, nx), nx <= kMaxDotRows: the
// weight row is read (and dequantised) once for all nx activation rows.
void DotRows(DType t, const uint8_t* w, int64_t n, const float* x, int64_t x_stride, int nx,
             float* out, int64_t out_stride);

}  // namespace tpserve
