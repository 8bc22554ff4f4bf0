// Integer matmul for GGML-quantised weights (Q4_0, Q4_1, Q8_0) with AVX-512 VNNI, the way
// llama.cpp computes them on CPUs: activations are rounded to int8 per 32-element block
// (scale dx = max|x| / 127), every weight block is multiplied with one in integers
// (vpdpbusd: 64 u8 x s8 products per instruction, 4x the products of an fp32 FMA), and the
// block sums are scaled and summed in fp32. Optionally (two terms) the rounding's remainder is
// rounded again to int8 and multiplied too: twice the integer work, ~15-bit activations.
//
// Weights are re-laid out once at load ("packed"): 16 output rows are interleaved so that one
// 32-bit lane of a 512-bit register holds 4 consecutive weights of one row. A kernel step then
// multiplies 16 rows by 4 activations broadcast from memory, and the rows' weights are read
// once for up to kMaxRowsPerPass activation rows. Per 32-element block and 16 rows the header
// holds fp16 d[16] and fp16 m[16]; the weights follow as unsigned bytes u:
//   Q4_1: u = q (nibble),       w = d * u + m
//   Q4_0: u = q (nibble),       w = d * (u - 8)      (m unused)
//   Q8_0: u = q + 128 (byte),   w = d * (u - 128)    (m unused)
// so block dot = d * dx * (sum(u * xq) - offset * sum(xq)) + m * dx * sum(xq), offset 0/8/128
// (with two terms, xq is the combined integer 254 q + q2 and dx its step).
//
// Every output element is computed by the same sequence of operations whatever the number of
// activation rows, their grouping or the thread split: results are bitwise independent of the
// batch a row arrives in. Int8GemmReference is the scalar statement of that arithmetic.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "common/format/dtype.h"

namespace tpserve {

class ThreadPool;

// Whether this build has the VNNI kernel (compiled with AVX-512 F/BW/VL and VNNI).
bool Int8GemmAvailable();

// Types that can be packed.
bool Int8GemmPacks(DType t);

struct PackedInt8Weight {
  DType dtype = DType::kQ4_1;  // the source type (fixes u's meaning)
  int64_t rows = 0, cols = 0;
  int64_t groups = 0;               // ceil(rows / 16)
  int64_t block_bytes = 0;          // one 32-column block of one group: header + weights
  std::shared_ptr<uint8_t[]> data;  // groups * (cols / 32) * block_bytes, 64-byte aligned
  const uint8_t* block(int64_t g, int64_t b) const {
    return data.get() + (g * (cols / 32) + b) * block_bytes;
  }
};

// Packs rows [0, rows) of a weight whose row r starts at data + r * row_stride_bytes (cols
// elements in `dtype`). Rows past `rows` in the last group are zero. cols must be a multiple of
// 32. With a pool, groups are packed in parallel.
std::shared_ptr<const PackedInt8Weight> PackInt8Weight(DType dtype, int64_t rows, int64_t cols,
                                                       const uint8_t* data, size_t row_stride_bytes,
                                                       ThreadPool* pool = nullptr);

// Activations rounded per 32-element block to one int8 term (q, step dx = max|x| / 127), or to
// two (q2 rounds what q leaves, with step dx / 254): x ~ dx * q + (dx / 254) * q2, ~15 bits.
// With two terms the kernel sums 254 * sum(u * q) + sum(u * q2) in integers, so `d` below is
// the step of that combined integer (dx / 254) and `sum` the combined sum(254 q + q2).
inline constexpr int32_t kSecondTerm = 254;

struct Int8Activations {
  int terms = 1;  // 1 or 2
  int64_t rows = 0, cols = 0;
  std::unique_ptr<int8_t[]> q;     // rows * cols
  std::unique_ptr<int8_t[]> q2;    // rows * cols, when terms == 2
  std::unique_ptr<float[]> d;      // rows * cols/32: step of the (combined) integer
  std::unique_ptr<float[]> s;      // rows * cols/32: d * sum
  std::unique_ptr<int32_t[]> sum;  // rows * cols/32: sum(q), or sum(254 q + q2)
  // -8 * sum and -128 * sum: the offsets' corrections for Q4_0 and Q8_0 weights.
  std::unique_ptr<int32_t[]> minus_8sum, minus_128sum;
  int64_t capacity = 0;  // elements q can hold
  void Resize(int64_t rows, int64_t cols, int terms = 1);
};

// Rounds rows [row_begin, row_end) of x (leading dimension ldx) into `out` (already Resize'd).
void QuantizeActivations(const float* x, int64_t ldx, int64_t row_begin, int64_t row_end,
                         Int8Activations* out);

// y[j * ldy + r] for every activation row j and the weight rows of groups [group_begin,
// group_end); with `accumulate`, added to what y holds (one fp32 add per element, the same
// result as computing into a temporary and adding it). Requires Int8GemmAvailable().
void Int8Gemm(const PackedInt8Weight& w, const Int8Activations& x, int64_t group_begin,
              int64_t group_end, float* y, int64_t ldy, bool accumulate = false);

// The same results computed one element at a time in scalar code (tests).
void Int8GemmReference(const PackedInt8Weight& w, const Int8Activations& x, float* y, int64_t ldy);

}  // namespace tpserve
