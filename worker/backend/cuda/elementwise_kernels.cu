// Elementwise, normalisation, RoPE, embedding and KV-write kernels of the CUDA backend. All
// fp32 math; the formulas mirror the CPU oracle (worker/backend/cpu/cpu_backend.cc). Activation
// buffers are fp32 or bf16 (a flag per buffer, activation.cuh): bf16 is read exactly and written
// once, rounded, at the end of each element's computation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "worker/backend/cuda/activation.cuh"
#include "worker/backend/cuda/cuda_kernels.h"
#include "worker/backend/cuda/cuda_launch.h"

namespace tpserve::cuda {
namespace {

constexpr int kThreads = 256;

int Blocks(int64_t n, int per_block = kThreads) {
  int64_t b = (n + per_block - 1) / per_block;
  if (b > 65535LL * 32) b = 65535LL * 32;  // grid-stride loops cover the rest
  return static_cast<int>(b < 1 ? 1 : b);
}

__global__ void F32ToBf16Kernel(const float* src, __nv_bfloat16* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = __float2bfloat16_rn(src[i]);
  }
}

__global__ void AddKernel(const void* x, bool x_bf16, void* y, bool y_bf16, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    ActStore(y, i, ActLoad(y, i, y_bf16) + ActLoad(x, i, x_bf16), y_bf16);
  }
}

__global__ void AddBiasKernel(const float* bias, void* y, bool bf16, int64_t n, int64_t cols) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    ActStore(y, i, ActLoad(y, i, bf16) + bias[i % cols], bf16);
  }
}

__global__ void SiluMulKernel(const void* gate, const void* up, void* out, bool bf16, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float g = ActLoad(gate, i, bf16);
    ActStore(out, i, g / (1.0f + expf(-g)) * ActLoad(up, i, bf16), bf16);
  }
}

// One block per row; sum of squares in double like the CPU (which accumulates in double).
__global__ void RmsNormKernel(const void* x, bool x_bf16, const float* weight, float eps, void* y,
                              bool y_bf16, int64_t cols) {
  const int64_t base = blockIdx.x * cols;
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const double v = ActLoad(x, base + i, x_bf16);
    ss += v * v;
  }
  __shared__ double partial[32];
  for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = ss;
  __syncthreads();
  if (warp == 0) {
    ss = lane < static_cast<int>(blockDim.x / 32) ? partial[lane] : 0.0;
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if (lane == 0) partial[0] = ss;
  }
  __syncthreads();
  const float inv = 1.0f / sqrtf(static_cast<float>(partial[0] / cols) + eps);
  // y may alias x (same dtype): each element is read by the thread that writes it, after the sum.
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    ActStore(y, base + i, weight[i] * (ActLoad(x, base + i, x_bf16) * inv), y_bf16);
  }
}

__global__ void RandomFillKernel(void* dst, bool bf16, int64_t n, float scale, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    ActStore(dst, i, (2.0f * u - 1.0f) * scale, bf16);
  }
}

__global__ void RopeTableKernel(const int32_t* positions, const float* inv_freq, float* cos_sin,
                                int64_t T, int64_t half) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < T * half;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / half, j = i % half;
    // fp32 product like the CPU, then accurate (non-intrinsic) cos/sin.
    const float angle = static_cast<float>(positions[t]) * inv_freq[j];
    cos_sin[t * 2 * half + j] = cosf(angle);
    cos_sin[t * 2 * half + half + j] = sinf(angle);
  }
}

// Rotates q [T, heads, hd] and, when k is given, k [T, k_heads, hd]: one launch for both.
__global__ void RopeKernel(const float* cos_sin, bool interleaved, void* q, int64_t T,
                           int64_t heads, void* k, int64_t k_heads, int64_t hd, bool bf16) {
  const int64_t half = hd / 2, nq = T * heads * half, n = nq + T * k_heads * half;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const bool is_q = i < nq;
    const int64_t e = is_q ? i : i - nq, nh = is_q ? heads : k_heads;
    const int64_t j = e % half, th = e / half, t = th / nh;
    const float c = cos_sin[t * hd + j], s = cos_sin[t * hd + half + j];
    void* v = is_q ? q : k;
    const int64_t a = th * hd + (interleaved ? 2 * j : j);
    const int64_t b = th * hd + (interleaved ? 2 * j + 1 : j + half);
    const float x0 = ActLoad(v, a, bf16), x1 = ActLoad(v, b, bf16);
    ActStore(v, a, x0 * c - x1 * s, bf16);
    ActStore(v, b, x1 * c + x0 * s, bf16);
  }
}

__global__ void EmbeddingKernel(const int32_t* tokens, const void* table, bool bf16,
                                int64_t table_rows, int64_t cols, int64_t row_stride,
                                int64_t vocab_begin, void* out, bool out_bf16) {
  const int64_t t = blockIdx.x;
  const int64_t local = static_cast<int64_t>(tokens[t]) - vocab_begin;
  const bool mine = local >= 0 && local < table_rows;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = mine ? ActLoad(table, local * row_stride + i, bf16) : 0.0f;
    ActStore(out, t * cols + i, v, out_bf16);
  }
}

__device__ __forceinline__ void StoreKv(float x, float* dst) { *dst = x; }
// Saturated, as the CPU backend's fp16 pools are (a NaN fails both tests and stays NaN).
__device__ __forceinline__ void StoreKv(float x, __half* dst) {
  constexpr float kHalfMax = 65504.0f;
  *dst = __float2half_rn(x > kHalfMax ? kHalfMax : (x < -kHalfMax ? -kHalfMax : x));
}

template <typename KV>
__global__ void WriteKvKernel(const void* k, const void* v, bool bf16, const int64_t* slots,
                              int64_t T, int64_t row, KV* ck, KV* cv) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < T * row;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / row, j = i % row;
    if (slots[t] < 0) continue;  // kNoKvSlot: a padding row
    const int64_t dst = slots[t] * row + j;
    StoreKv(ActLoad(k, i, bf16), ck + dst);
    StoreKv(ActLoad(v, i, bf16), cv + dst);
  }
}

}  // namespace

void LaunchF32ToBf16(const float* src, uint16_t* dst, int64_t n, cudaStream_t stream) {
  TPSERVE_LAUNCH(F32ToBf16Kernel, (Blocks(n), kThreads, 0, stream), src,
                 reinterpret_cast<__nv_bfloat16*>(dst), n);
}

void LaunchAdd(const void* x, bool x_bf16, void* y, bool y_bf16, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  TPSERVE_LAUNCH(AddKernel, (Blocks(n), kThreads, 0, stream), x, x_bf16, y, y_bf16, n);
}

void LaunchAddBias(const float* bias, void* y, bool y_bf16, int64_t rows, int64_t cols,
                   cudaStream_t stream) {
  if (rows * cols == 0) return;
  TPSERVE_LAUNCH(AddBiasKernel, (Blocks(rows * cols), kThreads, 0, stream), bias, y, y_bf16,
                 rows * cols, cols);
}

void LaunchSiluMul(const void* gate, const void* up, void* out, bool bf16, int64_t n,
                   cudaStream_t stream) {
  if (n == 0) return;
  TPSERVE_LAUNCH(SiluMulKernel, (Blocks(n), kThreads, 0, stream), gate, up, out, bf16, n);
}

void LaunchRmsNorm(const void* x, bool x_bf16, const float* weight, float eps, void* y, bool y_bf16,
                   int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows == 0) return;
  TPSERVE_LAUNCH(RmsNormKernel, (static_cast<unsigned>(rows), kThreads, 0, stream), x, x_bf16,
                 weight, eps, y, y_bf16, cols);
}

void LaunchRandomFill(void* dst, bool bf16, int64_t n, float scale, uint64_t seed,
                      cudaStream_t stream) {
  TPSERVE_LAUNCH(RandomFillKernel, (Blocks(n), kThreads, 0, stream), dst, bf16, n, scale, seed);
}

void LaunchRopeTable(const int32_t* positions, const float* inv_freq, float* cos_sin, int64_t T,
                     int64_t half, cudaStream_t stream) {
  if (T * half == 0) return;
  TPSERVE_LAUNCH(RopeTableKernel, (Blocks(T * half), kThreads, 0, stream), positions, inv_freq,
                 cos_sin, T, half);
}

void LaunchRope(const float* cos_sin, bool interleaved, void* q, int64_t T, int64_t heads, void* k,
                int64_t k_heads, int64_t hd, bool bf16, cudaStream_t stream) {
  if (k == nullptr) k_heads = 0;
  const int64_t n = T * (heads + k_heads) * (hd / 2);
  if (n == 0) return;
  TPSERVE_LAUNCH(RopeKernel, (Blocks(n), kThreads, 0, stream), cos_sin, interleaved, q, T, heads, k,
                 k_heads, hd, bf16);
}

void LaunchEmbedding(const int32_t* tokens, int64_t T, const void* table, bool table_bf16,
                     int64_t table_rows, int64_t cols, int64_t row_stride, int64_t vocab_begin,
                     void* out, bool out_bf16, cudaStream_t stream) {
  if (T == 0) return;
  TPSERVE_LAUNCH(EmbeddingKernel, (static_cast<unsigned>(T), kThreads, 0, stream), tokens, table,
                 table_bf16, table_rows, cols, row_stride, vocab_begin, out, out_bf16);
}

void LaunchWriteKv(const void* k, const void* v, bool kv_bf16, const int64_t* slots, int64_t T,
                   int64_t row, void* cache_k, void* cache_v, bool half, cudaStream_t stream) {
  if (T * row == 0) return;
  if (half) {
    TPSERVE_LAUNCH(WriteKvKernel<__half>, (Blocks(T * row), kThreads, 0, stream), k, v, kv_bf16,
                   slots, T, row, static_cast<__half*>(cache_k), static_cast<__half*>(cache_v));
  } else {
    TPSERVE_LAUNCH(WriteKvKernel<float>, (Blocks(T * row), kThreads, 0, stream), k, v, kv_bf16,
                   slots, T, row, static_cast<float*>(cache_k), static_cast<float*>(cache_v));
  }
}

}  // namespace tpserve::cuda
