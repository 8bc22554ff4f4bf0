// Device-side access to an activation buffer that holds fp32 or bf16 (Backend::activation_dtype):
// the kernels compute in fp32 and take the buffer's dtype as a flag, uniform across a launch.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace tpserve::cuda {

__device__ __forceinline__ float ActLoad(const void* p, int64_t i, bool bf16) {
  return bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i])
              : static_cast<const float*>(p)[i];
}

// bf16: rounded to nearest even.
__device__ __forceinline__ void ActStore(void* p, int64_t i, float v, bool bf16) {
  if (bf16) {
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  } else {
    static_cast<float*>(p)[i] = v;
  }
}

}  // namespace tpserve::cuda
