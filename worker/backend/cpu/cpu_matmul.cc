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

void CheckMatMulShapes(const Tensor& x, const Weight& w, const Tensor& y) {
  TPSERVE_CHECK(x.cols() == w.cols && y.rows() == x.rows() && y.cols() == w.rows,
                "MatMul: x %s, weight [%lld, %lld], y %s", x.ShapeString().c_str(),
                static_cast<long long>(w.rows), static_cast<long long>(w.cols),
                y.ShapeString().c_str());
}

}  // namespace

void CpuBackend::PackedMatMul(const Tensor& x, std::span<const Weight* const> ws,
                              std::span<Tensor* const> ys, bool accumulate) {
  // x rounded once, in the caller's buffer (a lambda naming a thread_local would see each pool
  // thread's own).
  thread_local Int8Activations buffer;
  Int8Activations* xq = &buffer;
  const int64_t n = x.rows(), in = x.cols();
  xq->Resize(n, in, precision_ == CpuPrecision::kInt8x2 ? 2 : 1);
  if (n >= 8) {
    pool_.ParallelFor(n, 2,
                      [&](int64_t b, int64_t e) { QuantizeActivations(x.data(), in, b, e, xq); });
  } else {
    QuantizeActivations(x.data(), in, 0, n, xq);
  }
  // One job over the weights' 16-row groups laid end to end: group index g of the job is
  // group g - first[i] of weight i.
  std::vector<int64_t> first(ws.size() + 1, 0);
  for (size_t i = 0; i < ws.size(); ++i) first[i + 1] = first[i] + ws[i]->int8->groups;
  pool_.ParallelFor(first.back(), 2, [&](int64_t b, int64_t e) {
    for (size_t i = 0; i < ws.size(); ++i) {
      const int64_t g0 = std::max(b, first[i]), g1 = std::min(e, first[i + 1]);
      if (g0 < g1) {
        Int8Gemm(*ws[i]->int8, *xq, g0 - first[i], g1 - first[i], ys[i]->data(), ws[i]->rows,
                 accumulate);
      }
    }
  });
}

void CpuBackend::MatMulShared(const Tensor& x, std::span<const Weight* const> ws,
                              std::span<Tensor* const> ys) {
  TPSERVE_CHECK(ws.size() == ys.size(), "MatMulShared: %zu weights, %zu outputs", ws.size(),
                ys.size());
  bool packed = true;
  for (size_t i = 0; i < ws.size(); ++i) {
    CheckMatMulShapes(x, *ws[i], *ys[i]);
    packed &= ws[i]->int8 != nullptr;
  }
  if (!packed) {
    Backend::MatMulShared(x, ws, ys);
  } else if (x.rows() > 0) {
    PackedMatMul(x, ws, ys);
  }
}

void CpuBackend::MatMulAdd(const Tensor& x, const Weight& w, Tensor* y) {
  CheckMatMulShapes(x, w, *y);
  if (w.int8 == nullptr) return Backend::MatMulAdd(x, w, y);
  if (x.rows() == 0) return;
  const Weight* ws[] = {&w};
  Tensor* ys[] = {y};
  PackedMatMul(x, ws, ys, /*accumulate=*/true);
}

void CpuBackend::MatMul(const Tensor& x, const Weight& w, Tensor* y) {
  const int64_t n = x.rows(), in = w.cols, out = w.rows;
  CheckMatMulShapes(x, w, *y);
  if (n == 0) return;
  const float* xd = x.data();
  float* yd = y->data();

  if (w.int8 != nullptr) {
    const Weight* ws[] = {&w};
    Tensor* ys[] = {y};
    PackedMatMul(x, ws, ys);
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
