// CUDA emulator (tests only): what a .cu translation unit sees, so that the backend's kernels
// compile as C++ and run on the emulator (tpserve_cuda_emulator.h). Kernels are launched through
// TPSERVE_LAUNCH and use dynamic shared memory through TPSERVE_DYNAMIC_SHARED
// (worker/backend/cuda/cuda_launch.h), the two places where CUDA syntax is not C++.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda_runtime_api.h"
#include "tpserve_cuda_emulator.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
// Blocks run one at a time, so a function-local static is one block's shared memory. They all
// live in one section that is filled with 0xff (NaN) bytes before each block, as shared memory
// starts as garbage on a GPU: a read of what the block did not write shows.
#define __shared__ static __attribute__((section("tpserve_shared")))

#define threadIdx (::tpserve_emu::g_thread->idx)
#define blockIdx (::tpserve_emu::g_block_idx)
#define blockDim (::tpserve_emu::g_block_dim)
#define gridDim (::tpserve_emu::g_grid_dim)
#define warpSize 32

inline void __syncthreads() { ::tpserve_emu::SyncThreads(); }
// A barrier of the warp (full warps only, as the shuffles): shared memory one lane wrote before it
// is visible to the others after it, and a lane that does not come is reported as divergence.
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  (void)::tpserve_emu::ShuffleBits(mask, 0, static_cast<int>(::tpserve_emu::g_thread->linear % 32));
}

template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  (void)width;
  return ::tpserve_emu::Shuffle(mask, v, src & 31);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  (void)width;
  return ::tpserve_emu::Shuffle(mask, v, (::tpserve_emu::LaneId() ^ lane_mask) & 31);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  (void)width;
  const int src = ::tpserve_emu::LaneId() + static_cast<int>(delta);
  const T got = ::tpserve_emu::Shuffle(mask, v, src < 32 ? src : ::tpserve_emu::LaneId());
  return got;
}

// Device math that the host's libm lacks.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
// Round-to-nearest arithmetic that nvcc never contracts into an FMA.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
