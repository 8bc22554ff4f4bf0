// CPU matmul (fused dequant+dot for few rows, tiles + sgemm for many) and row dequantisation
// against straightforward references: the format library's ToFloat (which matches gguf-py) and
// double-precision dot products, for every weight type, odd sizes and windowed rows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>

#include "tests/worker/backend/random_weights.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/backend/cpu/int8_gemm.h"
#include "worker/backend/cpu/quant_kernels.h"

namespace tpserve {
namespace {

using testing::MakeRandomMatrix;
using testing::RandomFloats;

const DType kTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16,
                        DType::kQ4_0, DType::kQ4_1, DType::kQ8_0};

TEST(DequantizeRow, MatchesFormatLibraryToFloat) {
  std::mt19937 rng(1);
  for (DType t : kTypes) {
    SCOPED_TRACE(DTypeName(t));
    const int64_t cols = GetDTypeInfo(t).quantized ? 96 : 53;
    auto m = MakeRandomMatrix(t, 3, cols, rng);
    for (int64_t r = 0; r < 3; ++r) {
      std::vector<float> got(cols);
      DequantizeRow(t, m.weight.row(r), cols, got.data());
      for (int64_t i = 0; i < cols; ++i) {
        // Q4_1 may fuse d*q + m into one rounding: allow an ulp-scale difference.
        EXPECT_NEAR(got[i], m.dense[r * cols + i], 1e-6f * (1.0f + std::fabs(got[i]))) << i;
      }
    }
  }
}

// (dtype, n rows of x, in, out)
class MatMulTest : public ::testing::TestWithParam<std::tuple<DType, int, int, int>> {};

TEST_P(MatMulTest, MatchesDoubleReference) {
  const auto [dtype, n, in_dense, out] = GetParam();
  const bool quantized = GetDTypeInfo(dtype).quantized;
  const int64_t in = quantized ? (in_dense + 31) / 32 * 32 : in_dense;
  std::mt19937 rng(n * 1000 + in + out);
  // Rows 40 bytes apart beyond their length, as in a column window.
  auto m = MakeRandomMatrix(dtype, out, in, rng, quantized ? GetDTypeInfo(dtype).block_bytes : 40);
  CpuBackend backend(2);
  Tensor x = backend.FromHost(RandomFloats(n * in, rng), {n, in});
  Tensor y = backend.Alloc({n, out});
  backend.MatMul(x, m.weight, &y);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < out; ++o) {
      double ref = 0.0, mag = 0.0;
      for (int64_t k = 0; k < in; ++k) {
        ref += static_cast<double>(x.row(i)[k]) * m.dense[o * in + k];
        mag += std::fabs(static_cast<double>(x.row(i)[k]) * m.dense[o * in + k]);
      }
      ASSERT_NEAR(y.row(i)[o], ref, 1e-5 * mag + 1e-6) << "row " << i << " out " << o;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllTypes, MatMulTest,
    ::testing::Combine(::testing::ValuesIn(kTypes),
                       // 1..8: one fused pass; 13: two fused passes; 17, 40: tiles + sgemm
                       ::testing::Values(1, 3, 8, 13, 17, 40),
                       ::testing::Values(64, 77),       // in (rounded up to 32 for quant types)
                       ::testing::Values(1, 33, 300)),  // out: > one 128-row tile
    [](const auto& info) {
      return std::string(DTypeName(std::get<0>(info.param))) + "_n" +
             std::to_string(std::get<1>(info.param)) + "_in" +
             std::to_string(std::get<2>(info.param)) + "_out" +
             std::to_string(std::get<3>(info.param));
    });

// q/k/v and gate/up read one x: MatMulShared rounds it once and runs the products as one job,
// with the bits of MatMul one by one (packed weights; rows that leave a partial 16-row group),
// and falls back to MatMul for weights that are not packed.
TEST(MatMulShared, SameBitsAsOneMatMulEach) {
  std::vector<CpuPrecision> precisions = {CpuPrecision::kFp32};
  if (Int8GemmAvailable())
    precisions = {CpuPrecision::kInt8, CpuPrecision::kInt8x2, CpuPrecision::kFp32};
  for (CpuPrecision precision : precisions) {
    SCOPED_TRACE(CpuPrecisionName(precision));
    CpuBackend backend(2, precision);
    std::mt19937 rng(17);
    const int64_t in = 96;
    std::vector<testing::RandomMatrix> ms;
    for (auto [dtype, rows] :
         {std::pair{DType::kQ4_1, 96}, std::pair{DType::kQ4_0, 40}, std::pair{DType::kQ8_0, 33}}) {
      ms.push_back(MakeRandomMatrix(dtype, rows, in, rng));
      if (backend.int8_matmuls()) {
        ms.back().weight.int8 = PackInt8Weight(dtype, rows, in, ms.back().bytes.data(),
                                               ms.back().weight.row_stride_bytes);
      }
    }
    for (int64_t n : {1, 5, 32}) {
      SCOPED_TRACE("n " + std::to_string(n));
      Tensor x = backend.FromHost(RandomFloats(n * in, rng), {n, in});
      std::vector<Tensor> shared, alone;
      std::vector<const Weight*> ws;
      std::vector<Tensor*> ys;
      for (const auto& m : ms) {
        shared.push_back(backend.Alloc({n, m.weight.rows}));
        alone.push_back(backend.Alloc({n, m.weight.rows}));
        ws.push_back(&m.weight);
      }
      for (Tensor& t : shared) ys.push_back(&t);
      backend.MatMulShared(x, ws, ys);
      for (size_t i = 0; i < ms.size(); ++i) {
        backend.MatMul(x, ms[i].weight, &alone[i]);
        EXPECT_EQ(std::memcmp(shared[i].data(), alone[i].data(), alone[i].numel() * sizeof(float)),
                  0)
            << "weight " << i;
        // And not trivially: the product is not all zeros.
        double mag = 0.0;
        for (int64_t k = 0; k < alone[i].numel(); ++k) mag += std::fabs(alone[i].data()[k]);
        EXPECT_GT(mag, 0.0);
      }
    }
  }
}

TEST(LoadWeight, KeepsKernelTypesAndConvertsOthersToF32) {
  std::mt19937 rng(7);
  CpuBackend backend(1);
  auto q = MakeRandomMatrix(DType::kQ4_1, 4, 64, rng);
  TensorView view{.dtype = DType::kQ4_1,
                  .rows = 4,
                  .cols = 64,
                  .data = q.bytes.data(),
                  .row_stride_bytes = q.weight.row_stride_bytes};
  auto w = backend.LoadWeight(view);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->dtype, DType::kQ4_1);
  EXPECT_EQ(w->data, q.bytes.data());  // zero copy

  // Q5_0 is not read by the kernels: converted with ToFloat at load.
  std::vector<uint8_t> q5(2 * 22 * 2);  // 2 rows x 2 blocks of 22 bytes
  for (size_t i = 0; i < q5.size(); ++i) q5[i] = static_cast<uint8_t>(i * 37);
  for (int b = 0; b < 4; ++b) {
    const uint16_t d = FloatToHalf(0.01f * (b + 1));
    std::memcpy(&q5[b * 22], &d, 2);
  }
  TensorView v5{
      .dtype = DType::kQ5_0, .rows = 2, .cols = 64, .data = q5.data(), .row_stride_bytes = 44};
  auto w5 = backend.LoadWeight(v5);
  ASSERT_TRUE(w5.ok()) << w5.status();
  EXPECT_EQ(w5->dtype, DType::kF32);
  std::vector<float> expected(128);
  ASSERT_TRUE(ToFloat(DType::kQ5_0, q5.data(), expected.data(), 128).ok());
  const float* got = reinterpret_cast<const float*>(w5->data);
  for (int i = 0; i < 128; ++i) EXPECT_EQ(got[i], expected[i]) << i;
}

}  // namespace
}  // namespace tpserve
