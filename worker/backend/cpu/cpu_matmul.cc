// y[n, out] = x[n, in] · wᵀ on the CPU.
//
// Packed quantised weights (CpuPrecision::kInt8 / kInt8x2): x is rounded to int8 blocks (one or
// two terms) once, then each thread runs the VNNI kernel over a range of 16-row groups
// (cpu/int8_gemm.h), for any n.
//
// Otherwise, fp32:
// Few rows (decode): each thread owns a range of weight rows and streams them once through the
// fused dequantise+dot kernel, up to kMaxDotRows activation rows at a time; the cost is reading
// the weight, so this runs near memory bandwidth. Many rows (prefill): each thread dequantises
// tiles of kTileRows weight rows to fp32 and calls single-threaded sgemm on them, so the
// arithmetic runs at BLAS speed and the fp32 copy of a tile stays in cache.
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "worker/backend/check.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/backend/cpu/int8_gemm.h"
#include "worker/backend/cpu/quant_kernels.h"

namespace tpserve {
namespace {

constexpr int64_t kTileRows = 128;

}  // namespace

void CpuBackend::MatMul(const Tensor& x, const Weight& w, Tensor* y) {
  const int64_t n = x.rows(), in = w.cols, out = w.rows;
  TPSERVE_CHECK(x.cols() == in && y->rows() == n && y->cols() == out,
                "MatMul: x %s, weight [%lld, %lld], y %s", x.ShapeString().c_str(),
                static_cast<long long>(out), static_cast<long long>(in), y->ShapeString().c_str());
  if (n == 0) return;
  const float* xd = x.data();
  float* yd = y->data();

  if (w.int8 != nullptr) {
    // The caller's buffer (a lambda naming a thread_local would see each pool thread's own).
    thread_local Int8Activations buffer;
    Int8Activations* xq = &buffer;
    xq->Resize(n, in, precision_ == CpuPrecision::kInt8x2 ? 2 : 1);
    if (n >= 8) {
      pool_.ParallelFor(n, 2, [&](int64_t b, int64_t e) { QuantizeActivations(xd, in, b, e, xq); });
    } else {
      QuantizeActivations(xd, in, 0, n, xq);
    }
    pool_.ParallelFor(w.int8->groups, 2,
                      [&](int64_t b, int64_t e) { Int8Gemm(*w.int8, *xq, b, e, yd, out); });
    return;
  }

  if (n <= kFusedMaxRows) {
    pool_.ParallelFor(out, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r0 = 0; r0 < n; r0 += kMaxDotRows) {
        const int nx = static_cast<int>(std::min<int64_t>(kMaxDotRows, n - r0));
        for (int64_t r = begin; r < end; ++r) {
          DotRows(w.dtype, w.row(r), in, xd + r0 * in, in, nx, yd + r0 * out + r, out);
        }
      }
    });
    return;
  }

  if (w.dtype == DType::kF32) {
    // Dense fp32 rows: sgemm straight on the weight (rows may be a window: lda = stride).
    const int64_t ldw = static_cast<int64_t>(w.row_stride_bytes / sizeof(float));
    pool_.ParallelFor(out, 16, [&](int64_t begin, int64_t end) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, end - begin, in, 1.0f, xd, in,
                  reinterpret_cast<const float*>(w.row(begin)), ldw, 0.0f, yd + begin, out);
    });
    return;
  }

  pool_.ParallelFor(out, kTileRows, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> tile;
    tile.resize(kTileRows * in);
    for (int64_t t0 = begin; t0 < end; t0 += kTileRows) {
      const int64_t rows = std::min(kTileRows, end - t0);
      for (int64_t r = 0; r < rows; ++r) DequantizeRow(w.dtype, w.row(t0 + r), in, &tile[r * in]);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, rows, in, 1.0f, xd, in, tile.data(),
                  in, 0.0f, yd + t0, out);
    }
  });
}

}  // namespace tpserve
