// The int8 (VNNI) matmul for Q4_0 / Q4_1 / Q8_0 weights:
// - activation rounding: every element within half a step (dx / 2) of its input;
// - CpuBackend::MatMul on packed weights against a double-precision dot of the weights as the
//   format library dequantises them (ToFloat, which matches gguf-py) and the rounded activations,
//   and against the unrounded fp32 product within the rounding's worst-case bound;
// - the vector kernel bitwise equal to the scalar statement of its arithmetic;
// - batch invariance: a row's outputs are bitwise the same alone or among 40 others.
#include "worker/backend/cpu/int8_gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>

#include "tests/worker/backend/random_weights.h"
#include "worker/backend/cpu/cpu_backend.h"

namespace tpserve {
namespace {

using testing::MakeRandomMatrix;
using testing::RandomFloats;

const DType kTypes[] = {DType::kQ4_0, DType::kQ4_1, DType::kQ8_0};

Weight Load(CpuBackend& backend, const testing::RandomMatrix& m) {
  TensorView view{.dtype = m.weight.dtype,
                  .rows = m.weight.rows,
                  .cols = m.weight.cols,
                  .data = m.weight.data,
                  .row_stride_bytes = m.weight.row_stride_bytes};
  absl::StatusOr<Weight> w = backend.LoadWeight(view);
  EXPECT_TRUE(w.ok()) << w.status();
  return *w;
}

TEST(QuantizeActivations, WithinHalfAStepAndExactSums) {
  std::mt19937 rng(3);
  std::vector<float> x = RandomFloats(4 * 96, rng, 3.0f);
  for (int i = 32; i < 64; ++i) x[i] = 0.0f;  // an all-zero block: d = 0, q = 0
  x[100] = 1e4f;                              // an outlier only affects its own block
  Int8Activations q;
  q.Resize(4, 96);
  QuantizeActivations(x.data(), 96, 0, 4, &q);
  for (int64_t j = 0; j < 4; ++j) {
    for (int64_t b = 0; b < 3; ++b) {
      const int64_t at = j * 3 + b;
      const float d = q.d[at];
      int32_t sum = 0;
      float amax = 0.0f;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[j * 96 + b * 32 + i]));
      EXPECT_FLOAT_EQ(d, amax / 127.0f);
      for (int i = 0; i < 32; ++i) {
        const int8_t v = q.q[j * 96 + b * 32 + i];
        EXPECT_LE(std::abs(v), 127);
        EXPECT_LE(std::fabs(v * d - x[j * 96 + b * 32 + i]), 0.5f * d * (1.0f + 1e-5f) + 1e-30f);
        sum += v;
      }
      EXPECT_EQ(q.sum[at], sum);
      EXPECT_EQ(q.s[at], d * static_cast<float>(sum));
    }
  }
  EXPECT_EQ(q.d[1], 0.0f);

  // Two terms: within half a step of dx / 254, and the combined sums exact.
  Int8Activations q2;
  q2.Resize(4, 96, 2);
  QuantizeActivations(x.data(), 96, 0, 4, &q2);
  for (int64_t j = 0; j < 4; ++j) {
    for (int64_t b = 0; b < 3; ++b) {
      const int64_t at = j * 3 + b;
      const float step = q2.d[at];
      EXPECT_FLOAT_EQ(step, q.d[at] / kSecondTerm);
      int32_t sum = 0;
      for (int i = 0; i < 32; ++i) {
        const int64_t e = j * 96 + b * 32 + i;
        const int32_t v = kSecondTerm * q2.q[e] + q2.q2[e];
        EXPECT_EQ(q2.q[e], q.q[e]);  // the first term is the one-term rounding
        EXPECT_LE(std::fabs(static_cast<double>(v) * step - x[e]), 0.5 * step * 1.001 + 1e-30) << e;
        sum += v;
      }
      EXPECT_EQ(q2.sum[at], sum);
    }
  }
}

// (dtype, n rows of x, in, out, activation terms)
class Int8MatMulTest : public ::testing::TestWithParam<std::tuple<DType, int, int, int, int>> {};

TEST_P(Int8MatMulTest, MatchesReferences) {
  if (!Int8GemmAvailable()) GTEST_SKIP() << "this build has no AVX-512 VNNI kernel";
  const auto [dtype, n, in, out, terms] = GetParam();
  std::mt19937 rng(n * 1000 + in + out);
  // Rows a block apart beyond their length, as in a column window.
  auto m = MakeRandomMatrix(dtype, out, in, rng, GetDTypeInfo(dtype).block_bytes);
  CpuBackend backend(2, terms == 2 ? CpuPrecision::kInt8x2 : CpuPrecision::kInt8);
  const Weight w = Load(backend, m);
  ASSERT_NE(w.int8, nullptr);
  Tensor x = backend.FromHost(RandomFloats(n * in, rng), {n, in});
  Tensor y = backend.Alloc({n, out});
  backend.MatMul(x, w, &y);

  Int8Activations q;
  q.Resize(n, in, terms);
  QuantizeActivations(x.data(), in, 0, n, &q);
  std::vector<float> scalar(n * out);
  Int8GemmReference(*w.int8, q, scalar.data(), out);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < out; ++o) {
      // The kernel is the scalar arithmetic, bit for bit.
      ASSERT_EQ(y.row(i)[o], scalar[i * out + o]) << "row " << i << " out " << o;
      double ref_q = 0.0, ref = 0.0, mag = 0.0, bound = 0.0;
      for (int64_t k = 0; k < in; ++k) {
        const double wk = m.dense[o * in + k];
        const double step = q.d[i * (in / 32) + k / 32];  // of the combined integer
        const double integer =
            terms == 1 ? q.q[i * in + k] : kSecondTerm * q.q[i * in + k] + q.q2[i * in + k];
        ref_q += wk * (integer * step);
        ref += wk * x.row(i)[k];
        mag += std::fabs(wk * x.row(i)[k]);
        bound += std::fabs(wk) * 0.5 * step;  // each activation moved at most half a step
      }
      // Against ToFloat weights x rounded activations: fp32 accumulation error only.
      ASSERT_NEAR(y.row(i)[o], ref_q, 1e-5 * mag + 1e-6) << "row " << i << " out " << o;
      // Against the unrounded product: within the rounding's worst case.
      ASSERT_NEAR(y.row(i)[o], ref, bound * 1.001 + 1e-5 * mag + 1e-6)
          << "row " << i << " out " << o;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    QuantTypes, Int8MatMulTest,
    ::testing::Combine(::testing::ValuesIn(kTypes),
                       ::testing::Values(1, 3, 8, 13, 40),  // passes of up to 8 rows
                       ::testing::Values(32, 96),           // in
                       ::testing::Values(1, 33, 300),       // out: partial 16-row groups
                       ::testing::Values(1, 2)),            // activation terms
    [](const auto& info) {
      return std::string(DTypeName(std::get<0>(info.param))) + "_n" +
             std::to_string(std::get<1>(info.param)) + "_in" +
             std::to_string(std::get<2>(info.param)) + "_out" +
             std::to_string(std::get<3>(info.param)) + "_terms" +
             std::to_string(std::get<4>(info.param));
    });

TEST(Int8MatMul, RowsAreBitwiseTheSameInAnyBatch) {
  if (!Int8GemmAvailable()) GTEST_SKIP() << "this build has no AVX-512 VNNI kernel";
  std::mt19937 rng(11);
  const int64_t n = 41, in = 192, out = 100;
  for (auto [t, precision] :
       {std::pair{DType::kQ4_0, CpuPrecision::kInt8}, std::pair{DType::kQ4_1, CpuPrecision::kInt8},
        std::pair{DType::kQ8_0, CpuPrecision::kInt8},
        std::pair{DType::kQ4_1, CpuPrecision::kInt8x2},
        std::pair{DType::kQ8_0, CpuPrecision::kInt8x2}}) {
    SCOPED_TRACE(DTypeName(t));
    auto m = MakeRandomMatrix(t, out, in, rng);
    CpuBackend backend(2, precision);
    const Weight w = Load(backend, m);
    const std::vector<float> xs = RandomFloats(n * in, rng);
    Tensor x = backend.FromHost(xs, {n, in});
    Tensor all = backend.Alloc({n, out});
    backend.MatMul(x, w, &all);
    for (int64_t i : {0L, 7L, 8L, 33L, 40L}) {
      Tensor one = backend.FromHost(std::span<const float>(xs.data() + i * in, in), {1, in});
      Tensor y = backend.Alloc({1, out});
      backend.MatMul(one, w, &y);
      EXPECT_EQ(std::memcmp(y.row(0), all.row(i), out * sizeof(float)), 0) << "row " << i;
    }
  }
}

TEST(Int8MatMul, MatMulAddIsMatMulThenAdd) {
  // The residual add in the kernel's epilogue gives what a separate product and Add give, bit
  // for bit, on every path (packed weights: the epilogue; fp32: Backend's default).
  std::mt19937 rng(17);
  const int64_t n = 13, in = 96, out = 70;
  std::vector<CpuPrecision> precisions = {CpuPrecision::kFp32};
  if (Int8GemmAvailable())
    precisions = {CpuPrecision::kFp32, CpuPrecision::kInt8, CpuPrecision::kInt8x2};
  for (CpuPrecision precision : precisions) {
    for (DType t : kTypes) {
      SCOPED_TRACE(std::string(CpuPrecisionName(precision)) + " " + DTypeName(t));
      auto m = MakeRandomMatrix(t, out, in, rng);
      CpuBackend backend(2, precision);
      const Weight w = Load(backend, m);
      EXPECT_EQ(w.int8 != nullptr, precision != CpuPrecision::kFp32);
      Tensor x = backend.FromHost(RandomFloats(n * in, rng), {n, in});
      const std::vector<float> residual = RandomFloats(n * out, rng);
      Tensor product = backend.Alloc({n, out});
      backend.MatMul(x, w, &product);
      Tensor expected = backend.FromHost(residual, {n, out});
      backend.Add(product, &expected);
      Tensor fused = backend.FromHost(residual, {n, out});
      backend.MatMulAdd(x, w, &fused);
      EXPECT_EQ(std::memcmp(fused.data(), expected.data(), n * out * sizeof(float)), 0);
      EXPECT_NE(std::memcmp(fused.data(), residual.data(), n * out * sizeof(float)), 0);
    }
  }
}

TEST(Int8MatMul, Fp32PrecisionDoesNotPack) {
  std::mt19937 rng(5);
  auto m = MakeRandomMatrix(DType::kQ4_1, 16, 64, rng);
  CpuBackend backend(1, CpuPrecision::kFp32);
  EXPECT_EQ(backend.precision(), CpuPrecision::kFp32);
  EXPECT_EQ(Load(backend, m).int8, nullptr);
  CpuBackend dense(1, Int8GemmAvailable() ? CpuPrecision::kInt8 : CpuPrecision::kFp32);
  auto f = MakeRandomMatrix(DType::kF16, 16, 64, rng);
  EXPECT_EQ(Load(dense, f).int8, nullptr);  // dense weights stay on the fp32 paths
}

}  // namespace
}  // namespace tpserve
