#include "worker/backend/cpu/quant_kernels.h"

#include <cstring>
#include <vector>

#include "worker/backend/check.h"
#include "worker/backend/cpu/static_dispatch.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__F16C__)
#define TPSERVE_AVX512 1
#include <immintrin.h>
#endif

namespace tpserve {
namespace {

constexpr int64_t kQBlock = 32;
constexpr int64_t kQ4_0Bytes = 18;
constexpr int64_t kQ4_1Bytes = 20;
constexpr int64_t kQ8_0Bytes = 34;

inline uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Scalar dequantisation, the reference for every vector path (same arithmetic as gguf-py).
void DequantizeRowScalar(DType t, const uint8_t* src, int64_t n, float* dst) {
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = HalfToFloat(LoadU16(src + 2 * i));
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = BFloat16ToFloat(LoadU16(src + 2 * i));
      return;
    case DType::kQ4_0:
      for (int64_t b = 0; b < n / kQBlock; ++b, src += kQ4_0Bytes, dst += kQBlock) {
        const float d = HalfToFloat(LoadU16(src));
        for (int j = 0; j < 16; ++j) {
          dst[j] = d * static_cast<float>((src[2 + j] & 0x0F) - 8);
          dst[j + 16] = d * static_cast<float>((src[2 + j] >> 4) - 8);
        }
      }
      return;
    case DType::kQ4_1:
      for (int64_t b = 0; b < n / kQBlock; ++b, src += kQ4_1Bytes, dst += kQBlock) {
        const float d = HalfToFloat(LoadU16(src));
        const float m = HalfToFloat(LoadU16(src + 2));
        for (int j = 0; j < 16; ++j) {
          dst[j] = d * static_cast<float>(src[4 + j] & 0x0F) + m;
          dst[j + 16] = d * static_cast<float>(src[4 + j] >> 4) + m;
        }
      }
      return;
    case DType::kQ8_0:
      for (int64_t b = 0; b < n / kQBlock; ++b, src += kQ8_0Bytes, dst += kQBlock) {
        const float d = HalfToFloat(LoadU16(src));
        for (int j = 0; j < 32; ++j)
          dst[j] = d * static_cast<float>(static_cast<int8_t>(src[2 + j]));
      }
      return;
    default:
      TPSERVE_CHECK(false, "DequantizeRow: %s is converted at load", DTypeName(t));
  }
}

#if TPSERVE_AVX512

inline __m512 HalfScale(const uint8_t* p) { return _mm512_set1_ps(_cvtsh_ss(LoadU16(p))); }

// 16 dense weights at element i of `w` (masked for the tail).
template <DType T>
inline __m512 LoadDense(const uint8_t* w, int64_t i, __mmask16 mask) {
  if constexpr (T == DType::kF32) {
    return _mm512_maskz_loadu_ps(mask, reinterpret_cast<const float*>(w) + i);
  } else if constexpr (T == DType::kF16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w + 2 * i));
  } else {  // BF16: the high half of an fp32
    const __m512i u = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, w + 2 * i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
  }
}

// The 32 weights of quantised block `b` as two vectors (elements 0-15, 16-31).
template <DType T>
inline void LoadBlock(const uint8_t* w, int64_t b, __m512* lo, __m512* hi) {
  if constexpr (T == DType::kQ8_0) {
    const uint8_t* p = w + b * kQ8_0Bytes;
    const __m512 d = HalfScale(p);
    const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2));
    const __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 18));
    *lo = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)));
    *hi = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)));
  } else {
    constexpr int64_t kBytes = T == DType::kQ4_0 ? kQ4_0Bytes : kQ4_1Bytes;
    constexpr int kQs = T == DType::kQ4_0 ? 2 : 4;
    const uint8_t* p = w + b * kBytes;
    const __m512 d = HalfScale(p);
    const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + kQs));
    const __m128i nib = _mm_set1_epi8(0x0F);
    const __m512 ql = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(qs, nib)));
    const __m512 qh =
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(qs, 4), nib)));
    if constexpr (T == DType::kQ4_0) {
      const __m512 eight = _mm512_set1_ps(8.0f);
      *lo = _mm512_mul_ps(d, _mm512_sub_ps(ql, eight));
      *hi = _mm512_mul_ps(d, _mm512_sub_ps(qh, eight));
    } else {
      const __m512 m = HalfScale(p + 2);
      *lo = _mm512_add_ps(_mm512_mul_ps(d, ql), m);
      *hi = _mm512_add_ps(_mm512_mul_ps(d, qh), m);
    }
  }
}

constexpr bool IsDense(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16;
}

template <DType T>
void DequantizeRowAvx512(const uint8_t* w, int64_t n, float* dst) {
  if constexpr (IsDense(T)) {
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 mask = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
      _mm512_mask_storeu_ps(dst + i, mask, LoadDense<T>(w, i, mask));
    }
  } else {
    for (int64_t b = 0; b < n / kQBlock; ++b) {
      __m512 lo, hi;
      LoadBlock<T>(w, b, &lo, &hi);
      _mm512_storeu_ps(dst + b * kQBlock, lo);
      _mm512_storeu_ps(dst + b * kQBlock + 16, hi);
    }
  }
}

template <DType T, int NX>
void DotRowsAvx512(const uint8_t* w, int64_t n, const float* x, int64_t x_stride, float* out,
                   int64_t out_stride) {
  __m512 acc[NX];
  for (int j = 0; j < NX; ++j) acc[j] = _mm512_setzero_ps();
  if constexpr (IsDense(T)) {
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 mask = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
      const __m512 wv = LoadDense<T>(w, i, mask);
      for (int j = 0; j < NX; ++j) {
        acc[j] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mask, x + j * x_stride + i), acc[j]);
      }
    }
  } else {
    for (int64_t b = 0; b < n / kQBlock; ++b) {
      __m512 lo, hi;
      LoadBlock<T>(w, b, &lo, &hi);
      const float* xb = x + b * kQBlock;
      for (int j = 0; j < NX; ++j) {
        acc[j] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xb + j * x_stride), acc[j]);
        acc[j] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + j * x_stride + 16), acc[j]);
      }
    }
  }
  for (int j = 0; j < NX; ++j) out[j * out_stride] = _mm512_reduce_add_ps(acc[j]);
}

template <DType T>
void DotRowsDispatchN(const uint8_t* w, int64_t n, const float* x, int64_t x_stride, int nx,
                      float* out, int64_t out_stride) {
  const bool done = WithStaticCount<kMaxDotRows>(
      nx, [&](auto k) { DotRowsAvx512<T, k()>(w, n, x, x_stride, out, out_stride); });
  TPSERVE_CHECK(done, "DotRows: nx=%d", nx);
}

#endif  // TPSERVE_AVX512

}  // namespace

bool CpuKernelReads(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ8_0:
      return true;
    default:
      return false;
  }
}

void DequantizeRow(DType t, const uint8_t* src, int64_t n, float* dst) {
#if TPSERVE_AVX512
  switch (t) {
    case DType::kF32:
      return DequantizeRowAvx512<DType::kF32>(src, n, dst);
    case DType::kF16:
      return DequantizeRowAvx512<DType::kF16>(src, n, dst);
    case DType::kBF16:
      return DequantizeRowAvx512<DType::kBF16>(src, n, dst);
    case DType::kQ4_0:
      return DequantizeRowAvx512<DType::kQ4_0>(src, n, dst);
    case DType::kQ4_1:
      return DequantizeRowAvx512<DType::kQ4_1>(src, n, dst);
    case DType::kQ8_0:
      return DequantizeRowAvx512<DType::kQ8_0>(src, n, dst);
    default:
      break;
  }
#endif
  DequantizeRowScalar(t, src, n, dst);
}

void DotRows(DType t, const uint8_t* w, int64_t n, const float* x, int64_t x_stride, int nx,
             float* out, int64_t out_stride) {
  TPSERVE_CHECK(nx >= 1 && nx <= kMaxDotRows, "DotRows: nx=%d", nx);
#if TPSERVE_AVX512
  switch (t) {
    case DType::kF32:
      return DotRowsDispatchN<DType::kF32>(w, n, x, x_stride, nx, out, out_stride);
    case DType::kF16:
      return DotRowsDispatchN<DType::kF16>(w, n, x, x_stride, nx, out, out_stride);
    case DType::kBF16:
      return DotRowsDispatchN<DType::kBF16>(w, n, x, x_stride, nx, out, out_stride);
    case DType::kQ4_0:
      return DotRowsDispatchN<DType::kQ4_0>(w, n, x, x_stride, nx, out, out_stride);
    case DType::kQ4_1:
      return DotRowsDispatchN<DType::kQ4_1>(w, n, x, x_stride, nx, out, out_stride);
    case DType::kQ8_0:
      return DotRowsDispatchN<DType::kQ8_0>(w, n, x, x_stride, nx, out, out_stride);
    default:
      break;
  }
#endif
  // Portable path: dequantise the row once, then plain dots (the compiler vectorises them).
  thread_local std::vector<float> row;
  row.resize(n);
  DequantizeRowScalar(t, w, n, row.data());
  for (int j = 0; j < nx; ++j) {
    const float* xj = x + j * x_stride;
    float s = 0.0f;
    for (int64_t i = 0; i < n; ++i) s += row[i] * xj[i];
    out[j * out_stride] = s;
  }
}

}  // namespace tpserve
