// The two pieces of CUDA syntax the kernels use that are not C++: the launch `<<<...>>>` and
// dynamic shared memory. Written as macros so that the same .cu files also compile as C++ against
// the CUDA emulator of the tests (tests/testing/cuda_emulator), which runs them without a GPU.
//
//   TPSERVE_LAUNCH(Kernel<4>, grid, block, smem_bytes, stream)(args...);
//   TPSERVE_DYNAMIC_SHARED(float, smem);  // float* smem: the launch's dynamic shared memory
#pragma once

#if defined(TPSERVE_CUDA_EMULATOR)
#define TPSERVE_LAUNCH(kernel, ...) ::tpserve_emu::MakeLauncher(#kernel, kernel, __VA_ARGS__)
#define TPSERVE_DYNAMIC_SHARED(type, name) \
  type* name = static_cast<type*>(::tpserve_emu::g_dynamic_shared)
#else
#define TPSERVE_LAUNCH(kernel, ...) kernel<<<__VA_ARGS__>>>
#define TPSERVE_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif
