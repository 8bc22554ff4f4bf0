// y[n, out] = x[n, in] · wᵀ through cuBLAS.
//
// Row-major y = x · wᵀ is, in cuBLAS's column-major terms, yᵀ [out, n] = w [in, out]ᵀ · xᵀ
// [in, n]: op(A) = T on the weight (lda = its row stride), op(B) = N on x. fp32 weights: an
// fp32 GEMM (no TF32, see Create). bf16 weights: x is rounded to bf16 into a scratch buffer (once
// for all the weights of a MatMulShared) and multiplied with fp32 accumulation and fp32 output;
// MatMulAdd adds into y in the GEMM's epilogue (beta = 1).
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
  CheckDevice(x, op);
}

std::shared_ptr<void> CudaBackend::Bf16Input(const Tensor& x) {
  // Made by the op just before this one (whose Bind() came right before ours) of this tensor.
  if (bf16_copy_.bits != nullptr && bf16_copy_.call + 1 == binds_ && bf16_copy_.of == x.data() &&
      bf16_copy_.numel == x.numel()) {
    return bf16_copy_.bits;
  }
  std::shared_ptr<void> xb = Scratch(static_cast<size_t>(x.numel()) * sizeof(uint16_t));
  cuda::LaunchF32ToBf16(x.data(), static_cast<uint16_t*>(xb.get()), x.numel(), stream_);
  CheckLaunch("MatMul (bf16 input)");
  return xb;
}

void CudaBackend::Gemm(const Tensor& x, const void* x_bf16, const Weight& w, float beta,
                       Tensor* y) {
  const int64_t n = x.rows(), in = w.cols, out = w.rows;
  const float alpha = 1.0f;
  const struct {
    const void *w, *x, *x_bf16;
    float* y;
    int64_t n, in, out, ldw_bytes, w_dtype;
    uint32_t beta_bits, pad;
  } args{w.data,
         x.data(),
         x_bf16,
         y->data(),
         n,
         in,
         out,
         static_cast<int64_t>(w.row_stride_bytes),
         static_cast<int64_t>(w.dtype),
         std::bit_cast<uint32_t>(beta),
         0};
  if (!Observe("cublasGemmEx", args)) return;
  cublasStatus_t st;
  if (w.dtype == DType::kF32) {
    const int64_t ldw = static_cast<int64_t>(w.row_stride_bytes / sizeof(float));
    st = cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(n),
                      static_cast<int>(in), &alpha, w.data, CUDA_R_32F, static_cast<int>(ldw),
                      x.data(), CUDA_R_32F, static_cast<int>(in), &beta, y->data(), CUDA_R_32F,
                      static_cast<int>(out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  } else {
    const int64_t ldw = static_cast<int64_t>(w.row_stride_bytes / sizeof(uint16_t));
    st = cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(n),
                      static_cast<int>(in), &alpha, w.data, CUDA_R_16BF, static_cast<int>(ldw),
                      x_bf16, CUDA_R_16BF, static_cast<int>(in), &beta, y->data(), CUDA_R_32F,
                      static_cast<int>(out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  }
  TPSERVE_CHECK(st == CUBLAS_STATUS_SUCCESS,
                "MatMul: cublasGemmEx [%lld x %lld] x [%lld x %lld]ᵀ: %s",
                static_cast<long long>(n), static_cast<long long>(in), static_cast<long long>(out),
                static_cast<long long>(in), cublasGetStatusString(st));
}

void CudaBackend::MatMul(const Tensor& x, const Weight& w, Tensor* y) {
  Bind();
  CheckMatMul(x, w, *y, "MatMul");
  if (x.rows() == 0) return;
  const std::shared_ptr<void> xb = w.dtype == DType::kBF16 ? Bf16Input(x) : nullptr;
  Gemm(x, xb.get(), w, 0.0f, y);
}

// The residual rides on the GEMM: beta = 1 adds y in the epilogue (fp32), no temporary, no Add.
void CudaBackend::MatMulAdd(const Tensor& x, const Weight& w, Tensor* y) {
  Bind();
  CheckMatMul(x, w, *y, "MatMulAdd");
  if (x.rows() == 0) return;
  const std::shared_ptr<void> xb = w.dtype == DType::kBF16 ? Bf16Input(x) : nullptr;
  Gemm(x, xb.get(), w, 1.0f, y);
}

// q/k/v and gate/up: x is rounded to bf16 once for all the products.
void CudaBackend::MatMulShared(const Tensor& x, std::span<const Weight* const> ws,
                               std::span<Tensor* const> ys) {
  Bind();
  TPSERVE_CHECK(ws.size() == ys.size(), "MatMulShared: %zu weights, %zu outputs", ws.size(),
                ys.size());
  bool any_bf16 = false;
  for (size_t i = 0; i < ws.size(); ++i) {
    CheckMatMul(x, *ws[i], *ys[i], "MatMulShared");
    any_bf16 |= ws[i]->dtype == DType::kBF16;
  }
  if (x.rows() == 0) return;
  const std::shared_ptr<void> xb = any_bf16 ? Bf16Input(x) : nullptr;
  for (size_t i = 0; i < ws.size(); ++i) Gemm(x, xb.get(), *ws[i], 0.0f, ys[i]);
}

}  // namespace tpserve
