// y[n, out] = x[n, in] · wᵀ through cuBLAS.
//
// Row-major y = x · wᵀ is, in cuBLAS's column-major terms, yᵀ [out, n] = w [in, out]ᵀ · xᵀ
// [in, n]: op(A) = T on the weight (lda = its row stride), op(B) = N on x. fp32 weights: an
// fp32 GEMM (no TF32, see Create) of fp32 x into fp32 y. bf16 weights: bf16 x (an fp32 x is
// rounded to bf16 into a scratch buffer first, once for all the weights of a MatMulShared), fp32
// accumulation, y fp32 or bf16 (rounded once, from the fp32 sum); MatMulAdd adds into y in the
// GEMM's epilogue (beta = 1).
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <bit>

#include "worker/backend/check.h"
#include "worker/backend/cuda/cuda_backend.h"
#include "worker/backend/cuda/cuda_kernels.h"

namespace tpserve {

void CudaBackend::CheckMatMul(const Tensor& x, const Weight& w, const Tensor& y,
                              const char* op) const {
  const int64_t n = x.rows(), in = w.cols, out = w.rows;
  TPSERVE_CHECK(x.cols() == in && y.rows() == n && y.cols() == out,
                "%s: x %s, weight [%lld, %lld], y %s", op, x.ShapeString().c_str(),
                static_cast<long long>(out), static_cast<long long>(in), y.ShapeString().c_str());
  TPSERVE_CHECK(w.dtype == DType::kF32 || w.dtype == DType::kBF16,
                "%s: a %s weight is not a CUDA weight", op, DTypeName(w.dtype));
  // An fp32 GEMM reads and writes fp32 only.
  TPSERVE_CHECK(w.dtype == DType::kBF16 || (x.dtype() == DType::kF32 && y.dtype() == DType::kF32),
                "%s: %s x, %s y with an fp32 weight", op, DTypeName(x.dtype()),
                DTypeName(y.dtype()));
  CheckDevice(x, op);
  CheckDevice(y, op);
}

const void* CudaBackend::MatMulInput(const Tensor& x, const Weight& w,
                                     std::shared_ptr<void>* keep) {
  if (w.dtype == x.dtype()) return x.raw();
  *keep = Scratch(static_cast<size_t>(x.numel()) * sizeof(uint16_t));
  cuda::LaunchF32ToBf16(x.data(), static_cast<uint16_t*>(keep->get()), x.numel(), stream_);
  CheckLaunch("MatMul (bf16 input)");
  return keep->get();
}

void CudaBackend::Gemm(const Tensor& x, const void* xin, const Weight& w, float beta, Tensor* y) {
  const int64_t n = x.rows(), in = w.cols, out = w.rows;
  const float alpha = 1.0f;
  const cudaDataType_t wt = w.dtype == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
  const cudaDataType_t yt = y->dtype() == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
  const struct {
    const void *w, *x;
    void* y;
    int64_t n, in, out, ldw_bytes, w_dtype, y_dtype;
    uint32_t beta_bits, pad;
  } args{w.data,
         xin,
         y->raw(),
         n,
         in,
         out,
         static_cast<int64_t>(w.row_stride_bytes),
         static_cast<int64_t>(w.dtype),
         static_cast<int64_t>(y->dtype()),
         std::bit_cast<uint32_t>(beta),
         0};
  if (!Observe("cublasGemmEx", args)) return;
  const int64_t ldw = static_cast<int64_t>(w.row_stride_bytes) / (w.dtype == DType::kF32 ? 4 : 2);
  // A and B of the weight's type (xin is x in it), C as y is; fp32 compute (no TF32).
  const cublasStatus_t st =
      cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(n),
                   static_cast<int>(in), &alpha, w.data, wt, static_cast<int>(ldw), xin, wt,
                   static_cast<int>(in), &beta, y->raw(), yt, static_cast<int>(out),
                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  TPSERVE_CHECK(st == CUBLAS_STATUS_SUCCESS,
                "MatMul: cublasGemmEx [%lld x %lld] x [%lld x %lld]ᵀ: %s",
                static_cast<long long>(n), static_cast<long long>(in), static_cast<long long>(out),
                static_cast<long long>(in), cublasGetStatusString(st));
}

void CudaBackend::MatMul(const Tensor& x, const Weight& w, Tensor* y) {
  Bind();
  CheckMatMul(x, w, *y, "MatMul");
  if (x.rows() == 0) return;
  std::shared_ptr<void> keep;
  Gemm(x, MatMulInput(x, w, &keep), w, 0.0f, y);
}

// The residual rides on the GEMM: beta = 1 adds y in the epilogue (fp32), no temporary, no Add.
void CudaBackend::MatMulAdd(const Tensor& x, const Weight& w, Tensor* y) {
  Bind();
  CheckMatMul(x, w, *y, "MatMulAdd");
  if (x.rows() == 0) return;
  std::shared_ptr<void> keep;
  Gemm(x, MatMulInput(x, w, &keep), w, 1.0f, y);
}

// q/k/v and gate/up: an fp32 x is rounded to bf16 once for all the products.
void CudaBackend::MatMulShared(const Tensor& x, std::span<const Weight* const> ws,
                               std::span<Tensor* const> ys) {
  Bind();
  TPSERVE_CHECK(ws.size() == ys.size(), "MatMulShared: %zu weights, %zu outputs", ws.size(),
                ys.size());
  for (size_t i = 0; i < ws.size(); ++i) CheckMatMul(x, *ws[i], *ys[i], "MatMulShared");
  if (x.rows() == 0) return;
  std::shared_ptr<void> keep;
  const void* rounded = nullptr;  // x in bf16, once made
  for (size_t i = 0; i < ws.size(); ++i) {
    const void* xin = x.raw();
    if (ws[i]->dtype != x.dtype()) {
      if (rounded == nullptr) rounded = MatMulInput(x, *ws[i], &keep);
      xin = rounded;
    }
    Gemm(x, xin, *ws[i], 0.0f, ys[i]);
  }
}

}  // namespace tpserve
