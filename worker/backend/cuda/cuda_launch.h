// The two pieces of CUDA syntax the kernels use that are not C++: the launch `<<<...>>>` and
// dynamic shared memory. Written as macros so that the same .cu files also compile as C++ against
// the CUDA emulator of the tests (tests/testing/cuda_emulator), which runs them without a GPU.
//
//   TPSERVE_LAUNCH(Kernel<4>, (grid, block, smem_bytes, stream), args...);
//   TPSERVE_DYNAMIC_SHARED(float, smem);  // float* smem: the launch's dynamic shared memory
//
// Every launch first shows itself to the calling thread's LaunchObserver, if one is set: a step
// being recorded as a CUDA graph, or replayed from one (step_recorder.h), checks each launch's
// kernel, dimensions and argument bytes against the recording, and a replay makes none.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstring>
#include <type_traits>

namespace tpserve::cuda {

class LaunchObserver {
 public:
  // Called before a launch with the bytes of its arguments, back to back. Returns whether to
  // make the launch.
  virtual bool OnLaunch(const char* kernel, const dim3& grid, const dim3& block, size_t smem,
                        cudaStream_t stream, const void* args, size_t args_bytes) = 0;

 protected:
  ~LaunchObserver() = default;
};

// The calling thread's observer; null (the default) launches everything.
inline thread_local LaunchObserver* t_launch_observer = nullptr;

struct LaunchDims {
  LaunchDims(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr)
      : grid(g), block(b), smem(s), stream(st) {}
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
};

// Kernel arguments are compared as bytes, so a struct argument must have none that are padding
// (their values are indeterminate): scalars and padding-free types qualify; a struct with a
// float member opts in by specialising this after checking its size.
template <typename T>
struct IsPaddingFree
    : std::bool_constant<std::is_scalar_v<T> || std::has_unique_object_representations_v<T>> {};

template <typename... A>
bool LaunchAllowed(const char* kernel, const LaunchDims& d, const A&... args) {
  LaunchObserver* observer = t_launch_observer;
  if (observer == nullptr) return true;
  static_assert((IsPaddingFree<A>::value && ...),
                "a kernel argument with padding bytes cannot be compared");
  alignas(8) unsigned char bytes[(sizeof(A) + ... + 1)];
  size_t n = 0;
  ((std::memcpy(bytes + n, &args, sizeof(A)), n += sizeof(A)), ...);
  return observer->OnLaunch(kernel, d.grid, d.block, d.smem, d.stream, bytes, n);
}

}  // namespace tpserve::cuda

#define TPSERVE_LAUNCH_DIMS_(...) __VA_ARGS__
#if defined(TPSERVE_CUDA_EMULATOR)
#define TPSERVE_LAUNCH(kernel, dims, ...)                                                         \
  do {                                                                                            \
    if (::tpserve::cuda::LaunchAllowed(#kernel, ::tpserve::cuda::LaunchDims dims, __VA_ARGS__)) { \
      ::tpserve_emu::MakeLauncher(#kernel, kernel, TPSERVE_LAUNCH_DIMS_ dims)(__VA_ARGS__);       \
    }                                                                                             \
  } while (0)
#define TPSERVE_DYNAMIC_SHARED(type, name) \
  type* name = static_cast<type*>(::tpserve_emu::g_dynamic_shared)
#else
#define TPSERVE_LAUNCH(kernel, dims, ...)                                                         \
  do {                                                                                            \
    if (::tpserve::cuda::LaunchAllowed(#kernel, ::tpserve::cuda::LaunchDims dims, __VA_ARGS__)) { \
      kernel<<<TPSERVE_LAUNCH_DIMS_ dims>>>(__VA_ARGS__);                                         \
    }                                                                                             \
  } while (0)
// 128-byte aligned: WMMA loads and stores need 256-bit aligned tiles.
#define TPSERVE_DYNAMIC_SHARED(type, name) extern __shared__ __align__(128) type name[]
#endif
