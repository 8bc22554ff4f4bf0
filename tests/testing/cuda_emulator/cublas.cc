// CUDA emulator (tests only): cuBLAS handles and cublasGemmEx on the CPU (see cublas_v2.h).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cublas_v2.h"
#include "cuda_bf16.h"
#include "tpserve_cuda_emulator.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;  // nullptr: the library's default pool
  size_t workspace_bytes = 0;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace {

// Register tile of the GEMM micro-kernel: kMr rows of op(A) by kNr columns of op(B).
constexpr int kMr = 8;
constexpr int kNr = 4;  // MicroKernel<1..4> below

template <class T>
float ToFloat(T v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return __bfloat162float(v);
  }
}

// Packs rows [r0, r1) of the logical matrix X(r, l) = src[r * rs + l * ls] (l < k) into panels of
// `width` rows, (*out)[((r - r0) / width * k + l) * width + (r - r0) % width], zero-padded, so the
// micro-kernel streams both operands contiguously and bf16 is converted once.
template <class T>
void Pack(const void* src, int64_t r0, int64_t r1, int64_t k, int64_t rs, int64_t ls, int width,
          std::vector<float>* out) {
  const int64_t panels = (r1 - r0 + width - 1) / width;
  out->assign(static_cast<size_t>(panels * k * width), 0.0f);
  const T* s = static_cast<const T*>(src);
  for (int64_t r = r0; r < r1; ++r) {
    float* o = out->data() + (r - r0) / width * k * width + (r - r0) % width;
    for (int64_t l = 0; l < k; ++l) o[l * width] = ToFloat(s[r * rs + l * ls]);
  }
}

// kMr consecutive rows of one column of op(A) * op(B). A GCC/Clang vector type, because the
// auto-vectoriser does not reliably keep a register tile in registers.
typedef float RowVec __attribute__((vector_size(kMr * sizeof(float))));

// acc(i, j) = sum over l ascending of a(i, l) * b(l, j) for the first NR columns, one fp32
// accumulator per element (cuBLAS's fp32 accumulation): vectorised across i, never reassociated
// over l.
template <int NR>
void MicroKernel(const float* a, const float* b, int64_t k, float out[kNr][kMr]) {
  RowVec acc[NR] = {};
  for (int64_t l = 0; l < k; ++l) {
    RowVec al;
    std::memcpy(&al, a + l * kMr, sizeof(al));
    for (int j = 0; j < NR; ++j) acc[j] += al * b[l * kNr + j];
  }
  for (int j = 0; j < NR; ++j) std::memcpy(out[j], &acc[j], sizeof(acc[j]));
}

// product false (k == 0 or alpha == 0): C = beta * C, like the reference BLAS.
template <class CT>
void StoreC(void* c, int64_t idx, bool product, float alpha_acc, float beta) {
  CT* p = static_cast<CT*>(c) + idx;
  // beta == 0: C is write-only, so NaN/Inf already in C must not leak in (documented).
  const float bc = beta == 0.0f ? 0.0f : beta * ToFloat(*p);
  const float v = !product ? bc : (beta == 0.0f ? alpha_acc : alpha_acc + bc);
  if constexpr (std::is_same_v<CT, float>) {
    *p = v;
  } else {
    *p = __float2bfloat16_rn(v);
  }
}

struct Gemm {
  bool ta, tb;
  int64_t m, n, k, lda, ldb, ldc;
  float alpha, beta;
  const void* A;
  const void* B;
  void* C;
  bool bf16_in, bf16_out;

  template <class InT, class CT>
  void Run() const {
    const bool product = k > 0 && alpha != 0.0f;  // else C = beta * C, A and B unread
    const int64_t m_panels = (m + kMr - 1) / kMr, n_panels = (n + kNr - 1) / kNr;
    std::vector<float> ap, bp;
    if (product) Pack<InT>(B, 0, n, k, tb ? 1 : ldb, tb ? ldb : 1, kNr, &bp);  // op(B)(l, j): row j
    // A is packed a group of panels (about 1 MiB) at a time, which stays in cache while every B
    // panel passes over it.
    const int64_t group =
        std::max<int64_t>(1, (int64_t{1} << 20) / (std::max<int64_t>(k, 1) * kMr * 4));
    float acc[kNr][kMr] = {};
    for (int64_t p0 = 0; p0 < m_panels; p0 += group) {
      const int64_t p1 = std::min(m_panels, p0 + group);
      if (product) {  // op(A)(i, l)
        Pack<InT>(A, p0 * kMr, std::min(m, p1 * kMr), k, ta ? lda : 1, ta ? 1 : lda, kMr, &ap);
      }
      for (int64_t q = 0; q < n_panels; ++q) {
        for (int64_t p = p0; p < p1; ++p) {
          const int cols = static_cast<int>(std::min<int64_t>(kNr, n - q * kNr));
          if (product) {
            const float* a = &ap[(p - p0) * k * kMr];
            const float* b = &bp[q * k * kNr];
            // A narrow last panel (n = 1 in decode) skips the zero padding's columns.
            constexpr void (*kKernels[])(const float*, const float*, int64_t, float[kNr][kMr]) = {
                nullptr, MicroKernel<1>, MicroKernel<2>, MicroKernel<3>, MicroKernel<4>};
            kKernels[cols](a, b, k, acc);
          }
          for (int j = 0; j < cols; ++j) {
            for (int i = 0; i < kMr && p * kMr + i < m; ++i) {
              StoreC<CT>(C, (p * kMr + i) + (q * kNr + j) * ldc, product, alpha * acc[j][i], beta);
            }
          }
        }
      }
    }
  }
};

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  cudaDeviceSynchronize();
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  handle->workspace = nullptr;
  handle->workspace_bytes = 0;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t* stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (stream == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void* workspace, size_t bytes) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (bytes > 0 && (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 256 != 0 ||
                    !tpserve_emu::IsDevice(workspace, bytes))) {
    std::fprintf(stderr,
                 "cublasSetWorkspace: %p (%zu bytes) is not 256-byte aligned device memory\n",
                 workspace, bytes);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  handle->workspace = workspace;
  handle->workspace_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

namespace {

struct StatusText {
  cublasStatus_t status;
  const char* name;
  const char* text;  // what libcublas 13's cublasGetStatusString returns
};
constexpr StatusText kStatusTexts[] = {
    {CUBLAS_STATUS_SUCCESS, "CUBLAS_STATUS_SUCCESS", "success"},
    {CUBLAS_STATUS_NOT_INITIALIZED, "CUBLAS_STATUS_NOT_INITIALIZED",
     "the library was not initialized"},
    {CUBLAS_STATUS_ALLOC_FAILED, "CUBLAS_STATUS_ALLOC_FAILED", "the resource allocation failed"},
    {CUBLAS_STATUS_INVALID_VALUE, "CUBLAS_STATUS_INVALID_VALUE",
     "an unsupported value or parameter was passed to the function"},
    {CUBLAS_STATUS_ARCH_MISMATCH, "CUBLAS_STATUS_ARCH_MISMATCH",
     "the function requires an architectural feature absent from the device"},
    {CUBLAS_STATUS_MAPPING_ERROR, "CUBLAS_STATUS_MAPPING_ERROR",
     "an access to GPU memory space failed"},
    {CUBLAS_STATUS_EXECUTION_FAILED, "CUBLAS_STATUS_EXECUTION_FAILED",
     "the function failed to launch on the GPU"},
    {CUBLAS_STATUS_INTERNAL_ERROR, "CUBLAS_STATUS_INTERNAL_ERROR", "an internal operation failed"},
    {CUBLAS_STATUS_NOT_SUPPORTED, "CUBLAS_STATUS_NOT_SUPPORTED",
     "the requested functionality is not supported"},
};

const StatusText* FindStatus(cublasStatus_t status) {
  for (const StatusText& t : kStatusTexts) {
    if (t.status == status) return &t;
  }
  return nullptr;
}

}  // namespace

const char* cublasGetStatusName(cublasStatus_t status) {
  const StatusText* t = FindStatus(status);
  return t != nullptr ? t->name : "unrecognized status";
}

const char* cublasGetStatusString(cublasStatus_t status) {
  const StatusText* t = FindStatus(status);
  return t != nullptr ? t->text : "unrecognized status";
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t algo) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  auto valid_op = [](cublasOperation_t op) {
    return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C;
  };
  // Real types: conjugate-transpose is the transpose.
  const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
  if (!valid_op(transa) || !valid_op(transb) || m < 0 || n < 0 || k < 0 ||
      lda < std::max(1, ta ? k : m) || ldb < std::max(1, tb ? n : k) || ldc < std::max(1, m) ||
      alpha == nullptr || beta == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const bool fp32_compute =
      computeType == CUBLAS_COMPUTE_32F || computeType == CUBLAS_COMPUTE_32F_PEDANTIC;
  const bool f32 = Atype == CUDA_R_32F && Btype == CUDA_R_32F && Ctype == CUDA_R_32F &&
                   (fp32_compute || computeType == CUBLAS_COMPUTE_32F_FAST_TF32);
  const bool bf16 = Atype == CUDA_R_16BF && Btype == CUDA_R_16BF &&
                    (Ctype == CUDA_R_32F || Ctype == CUDA_R_16BF) && fp32_compute;
  const bool algo_ok = (algo >= -1 && algo <= 23) || (algo >= 99 && algo <= 115);
  if ((!f32 && !bf16) || !algo_ok) return CUBLAS_STATUS_NOT_SUPPORTED;
  // Host pointer mode: alpha and beta are read now. A device pointer here would crash the host.
  for (const void* s : {alpha, beta}) {
    if (tpserve_emu::IsDevice(s)) {
      std::fprintf(stderr, "cublasGemmEx: alpha/beta %p is device memory (pointer mode is host)\n",
                   s);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  }
  const Gemm g{.ta = ta,
               .tb = tb,
               .m = m,
               .n = n,
               .k = k,
               .lda = lda,
               .ldb = ldb,
               .ldc = ldc,
               .alpha = *static_cast<const float*>(alpha),
               .beta = *static_cast<const float*>(beta),
               .A = A,
               .B = B,
               .C = C,
               .bf16_in = bf16,
               .bf16_out = Ctype == CUDA_R_16BF};
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  // Operands must be device memory over the extent actually addressed (a GPU would fault).
  auto extent = [](int64_t rows, int64_t cols, int64_t ld, int64_t elem) {
    return static_cast<size_t>(((cols - 1) * ld + rows) * elem);
  };
  const int64_t in_size = bf16 ? 2 : 4, c_size = g.bf16_out ? 2 : 4;
  struct Operand {
    const char* name;
    const void* p;
    size_t bytes;
  };
  std::vector<Operand> operands = {{"C", C, extent(m, n, ldc, c_size)}};
  if (k > 0 && g.alpha != 0.0f) {
    operands.push_back({"A", A, ta ? extent(k, m, lda, in_size) : extent(m, k, lda, in_size)});
    operands.push_back({"B", B, tb ? extent(n, k, ldb, in_size) : extent(k, n, ldb, in_size)});
  }
  for (const Operand& o : operands) {
    if (!tpserve_emu::IsDevice(o.p, o.bytes)) {
      std::fprintf(stderr, "cublasGemmEx: %s (%p, %zu bytes) is not device memory\n", o.name, o.p,
                   o.bytes);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  }
  tpserve_emu::Enqueue(handle->stream, [g] {
    if (!g.bf16_in) {
      g.Run<float, float>();
    } else if (!g.bf16_out) {
      g.Run<__nv_bfloat16, float>();
    } else {
      g.Run<__nv_bfloat16, __nv_bfloat16>();
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}
