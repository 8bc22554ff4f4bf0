// CUDA emulator (tests only): the execution model behind the fake CUDA headers.
//
// Device memory lives in one host arena that is PROT_NONE to host code: only emulated device
// operations (kernels, copies, memsets, cuBLAS calls) can touch it, so host code that dereferences
// a device pointer faults at once, as it would on a GPU. Operations are queued per call and run
// only at a synchronising call (cudaStreamSynchronize, cudaDeviceSynchronize, blocking copies,
// event waits, cudaFree): a missing synchronisation shows as stale host data, not as luck.
// A kernel runs block by block on one OS thread; each CUDA thread of a block is a fiber with its
// own stack, switched at __syncthreads() and at warp shuffles (barriers of the whole block or
// warp). A barrier that can never complete (divergent __syncthreads, a shuffle with an exited or
// diverged lane) aborts with the kernel's name instead of hanging.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_runtime_api.h"

namespace tpserve_emu {

// ---- host side: the queue of device operations ----
// Enqueues `op` (run later, with device memory accessible) on `stream`.
void Enqueue(cudaStream_t stream, std::function<void()> op);
// Enqueues an operation that may have to wait for other host threads (a collective's peers):
// it is run again at each flush until it returns true; later work on `stream` waits behind it.
void EnqueueWaiting(cudaStream_t stream, std::function<bool()> op);
// Runs every queued operation (all streams, in submission order).
void Flush();
// True when [p, p + bytes) lies inside one live device allocation (bytes 0: p inside one).
bool IsDevice(const void* p, size_t bytes = 0);
// Records `error` as the sticky/last error (cudaGetLastError returns and clears it).
void SetLastError(cudaError_t error);
// What the host asked of the emulated devices since the last ResetCounters (all devices): a
// measure of how a piece of host code drives a GPU, e.g. how often a decode step makes the host
// wait for the device, which on a real GPU stalls the queue of kernels behind the host.
struct Counters {
  uint64_t kernels = 0;           // kernel launches the host made (captured ones too)
  uint64_t operations = 0;        // everything queued: kernels, copies, memsets, library calls
  uint64_t h2d_pageable = 0;      // host-to-device copies from pageable memory (CUDA documents that
                                  // it may synchronise with the stream to stage them)
  uint64_t h2d_pinned = 0;        // host-to-device copies from cudaMallocHost memory
  uint64_t d2h = 0;               // device-to-host copies
  uint64_t host_waits = 0;        // calls that wait for the device: stream, device and event
                                  // synchronisation, blocking copies, copies into pageable memory,
                                  // cudaFree / cudaFreeHost, and polling an event whose work is
                                  // still queued (once per recording)
  uint64_t graph_launches = 0;    // cudaGraphLaunch calls (each also one operation)
  uint64_t graph_operations = 0;  // operations those launches queued
};
Counters GetCounters();
void ResetCounters();
// Runs each block's threads last-to-first instead of first-to-last (default: the environment's
// TPSERVE_CUDA_EMU_ORDER=reverse). A kernel that is right does not notice.
void SetReverseThreadOrder(bool reverse);
// Aborts the process with an emulator diagnostic (a bug the GPU would turn into a crash or hang).
[[noreturn]] void Fatal(const char* fmt, ...);

// ---- kernels ----
struct ThreadState {
  uint3 idx;
  unsigned linear;  // x + y * bx + z * bx * by
};
// The running fiber's thread, and the running block. Valid only inside a kernel.
inline ThreadState* g_thread = nullptr;
inline uint3 g_block_idx{0, 0, 0};
inline dim3 g_block_dim{1, 1, 1};
inline dim3 g_grid_dim{1, 1, 1};
inline void* g_dynamic_shared = nullptr;

void SyncThreads();
// Full-warp shuffle of an 8-byte payload: returns lane `src`'s payload (src in [0, 32)).
uint64_t ShuffleBits(unsigned mask, uint64_t bits, int src);

// Validates the launch configuration (limits of an sm_90 device; dynamic shared memory beyond
// 48 KiB needs cudaFuncSetAttribute first) and enqueues `body` to run for every thread of the grid.
void LaunchKernel(const char* name, const void* func, dim3 grid, dim3 block, size_t dynamic_smem,
                  cudaStream_t stream, std::function<void()> body);

template <class... P>
struct Launcher {
  const char* name;
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  template <class... A>
  void operator()(A&&... args) const {
    // Arguments are converted to the parameter types and copied at launch, as CUDA does.
    std::tuple<std::decay_t<P>...> copied(std::forward<A>(args)...);
    auto* k = kernel;
    LaunchKernel(name, reinterpret_cast<const void*>(k), grid, block, smem, stream,
                 [k, copied]() { std::apply(k, copied); });
  }
};
template <class... P>
Launcher<P...> MakeLauncher(const char* name, void (*kernel)(P...), dim3 grid, dim3 block,
                            size_t smem = 0, cudaStream_t stream = nullptr) {
  return Launcher<P...>{name, kernel, grid, block, smem, stream};
}

template <class T>
T Shuffle(unsigned mask, T v, int src) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = ShuffleBits(mask, bits, src);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
inline int LaneId() { return static_cast<int>(g_thread->linear % 32); }

}  // namespace tpserve_emu
