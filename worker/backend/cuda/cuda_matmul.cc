// y[n, out] = x[n, in] · wᵀ through cuBLAS.
//
// Row-major y = x · wᵀ is, in cuBLAS's column-major terms, yᵀ [out, n] = w [in, out]ᵀ · xᵀ
// [in, n]: op(A) = T on the weight (lda = its row stride), op(B) = N on x. fp32 weights: an
// fp32 GEMM (no TF32, see Create). bf16 weights: x is rounded to bf16 into a scratch buffer and
// multiplied with fp32 accumulation and fp32 output.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "worker/backend/check.h"
#include "worker/backend/cuda/cuda_backend.h"
#include "worker/backend/cuda/cuda_kernels.h"

namespace tpserve {

void CudaBackend::MatMul(const Tensor& x, const Weight& w, Tensor* y) {
  Bind();
  const int64_t n = x.rows(), in = w.cols, out = w.rows;
  TPSERVE_CHECK(x.cols() == in && y->rows() == n && y->cols() == out,
                "MatMul: x %s, weight [%lld, %lld], y %s", x.ShapeString().c_str(),
                static_cast<long long>(out), static_cast<long long>(in), y->ShapeString().c_str());
  TPSERVE_CHECK(w.dtype == DType::kF32 || w.dtype == DType::kBF16,
                "MatMul: a %s weight is not a CUDA weight", DTypeName(w.dtype));
  CheckDevice(x, "MatMul");
  if (n == 0) return;
  const float alpha = 1.0f, beta = 0.0f;
  cublasStatus_t st;
  if (w.dtype == DType::kF32) {
    const int64_t ldw = static_cast<int64_t>(w.row_stride_bytes / sizeof(float));
    st = cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(n),
                      static_cast<int>(in), &alpha, w.data, CUDA_R_32F, static_cast<int>(ldw),
                      x.data(), CUDA_R_32F, static_cast<int>(in), &beta, y->data(), CUDA_R_32F,
                      static_cast<int>(out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  } else {
    std::shared_ptr<void> xb = Scratch(static_cast<size_t>(n * in) * sizeof(uint16_t));
    cuda::LaunchF32ToBf16(x.data(), static_cast<uint16_t*>(xb.get()), n * in, stream_);
    CheckLaunch("MatMul (bf16 input)");
    const int64_t ldw = static_cast<int64_t>(w.row_stride_bytes / sizeof(uint16_t));
    st = cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(n),
                      static_cast<int>(in), &alpha, w.data, CUDA_R_16BF, static_cast<int>(ldw),
                      xb.get(), CUDA_R_16BF, static_cast<int>(in), &beta, y->data(), CUDA_R_32F,
                      static_cast<int>(out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  }
  TPSERVE_CHECK(st == CUBLAS_STATUS_SUCCESS,
                "MatMul: cublasGemmEx [%lld x %lld] x [%lld x %lld]ᵀ: %s",
                static_cast<long long>(n), static_cast<long long>(in), static_cast<long long>(out),
                static_cast<long long>(in), cublasGetStatusString(st));
}

}  // namespace tpserve
