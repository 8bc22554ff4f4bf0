// CUDA emulator (tests only): the bf16 subset of <cuda_bf16.h> the backend uses.
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda_runtime.h"

// Trivial (unlike CUDA's class with converting constructors) so it can live in device memory,
// unions and __shared__ statics; only the bit pattern matters to the backend.
struct __nv_bfloat16 {
  unsigned short __x;
};

// Round to nearest even. NaN becomes the canonical quiet NaN 0x7fff, as CUDA's host path and
// cvt.rn.bf16.f32 do (sign and payload are not kept).
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fff};
  u += 0x7fffu + ((u >> 16) & 1u);  // carries into the exponent give inf, as they should
  return __nv_bfloat16{static_cast<unsigned short>(u >> 16)};
}

inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = static_cast<uint32_t>(h.__x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
