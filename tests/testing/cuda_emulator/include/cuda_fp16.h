// CUDA emulator (tests only): the fp16 subset of <cuda_fp16.h> the backend uses.
#pragma once

#include <cstring>

#include "cuda_runtime.h"

// Trivial (unlike CUDA's class with converting constructors) so it can live in device memory and
// __shared__ statics; only the bit pattern matters to the backend.
struct __half {
  unsigned short __x;
};

// IEEE binary16 round to nearest even, subnormals kept, inf on overflow and NaN kept NaN, as
// cvt.rn.f16.f32 does: the compiler's _Float16 conversion (x86-64, F16C or its soft-float).
inline __half __float2half_rn(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  __half out;
  std::memcpy(&out.__x, &h, sizeof(out.__x));
  return out;
}

inline __half __float2half(float f) { return __float2half_rn(f); }

inline float __half2float(__half h) {
  _Float16 v;
  std::memcpy(&v, &h.__x, sizeof(v));
  return static_cast<float>(v);
}
