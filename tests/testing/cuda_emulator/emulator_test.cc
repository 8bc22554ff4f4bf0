// The CUDA emulator's own contract: kernels see CUDA's thread model (block barriers, warp
// shuffles), device memory is out of the host's reach, work runs only at synchronisation points,
// and the mistakes a GPU punishes (divergent barriers, out-of-bounds writes, host dereferences of
// device pointers, oversize launches) are reported instead of passing silently.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <mma.h>

#include <numeric>
#include <vector>

#include "worker/backend/cuda/cuda_launch.h"

namespace {

__global__ void WarpSumKernel(const float* in, float* out) {
  float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;  // every lane holds its warp's sum
}

__global__ void ShuffleKernel(int* down, int* bcast) {
  const int lane = threadIdx.x % 32;
  down[threadIdx.x] = __shfl_down_sync(0xffffffffu, lane * 10, 3);
  bcast[threadIdx.x] = __shfl_sync(0xffffffffu, lane * 7, 5);
}

// Reverses each block's slice through shared memory: wrong without the barrier.
__global__ void ReverseKernel(const int* in, int* out) {
  __shared__ int tile[256];
  const int n = blockDim.x;
  tile[threadIdx.x] = in[blockIdx.x * n + threadIdx.x];
  __syncthreads();
  out[blockIdx.x * n + threadIdx.x] = tile[n - 1 - threadIdx.x];
}

// Reads its left neighbour's shared value with no barrier in between: a race.
__global__ void RacyShiftKernel(int* out) {
  __shared__ int tile[64];
  tile[threadIdx.x] = static_cast<int>(threadIdx.x) + 1;
  out[threadIdx.x] = threadIdx.x == 0 ? 0 : tile[threadIdx.x - 1];
}

__global__ void DynamicSharedKernel(float* out) {
  TPSERVE_DYNAMIC_SHARED(float, smem);
  smem[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = smem[(threadIdx.x + 1) % blockDim.x];
}

__global__ void DivergentBarrierKernel(int* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void MixedBarrierKernel(int* out) {
  int v = 1;
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  }
  out[threadIdx.x] = v;
}

__global__ void ExitedLaneShuffleKernel(int* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
}

__global__ void WriteKernel(int* out, int64_t index) { out[index] = 7; }

__global__ void Grid2dKernel(int* out) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
  out[y * gridDim.x * blockDim.x + x] = y * 1000 + x;
}

// One warp: d = a b + c for 16x16 tiles, a row-major and b column-major (ldm 24 halves: padded
// rows), c and d row-major; `offset` halves shift a's tile (16 bytes: misaligned for WMMA).
__global__ void WmmaKernel(const __half* a, const __half* b, const float* c, float* d, int offset) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::load_matrix_sync(fa, a + offset, 24);
  wmma::load_matrix_sync(fb, b, 24);
  wmma::load_matrix_sync(acc, c, 16, wmma::mem_row_major);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

// Lane i reads what lane i + 1 wrote just before: right only with the warp barrier.
__global__ void SyncwarpKernel(int* out) {
  __shared__ int tile[32];
  tile[threadIdx.x] = static_cast<int>(threadIdx.x) * 3;
  __syncwarp();
  out[threadIdx.x] = tile[(threadIdx.x + 1) % 32];
}

template <class T>
T* DeviceCopy(const std::vector<T>& host) {
  T* dev = nullptr;
  EXPECT_EQ(cudaMalloc(&dev, host.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(dev, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
            cudaSuccess);
  return dev;
}

template <class T>
std::vector<T> HostCopy(const T* dev, size_t n) {
  std::vector<T> host(n);
  EXPECT_EQ(cudaMemcpy(host.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return host;
}

TEST(CudaEmulator, WarpShufflesFollowCudaSemantics) {
  std::vector<float> in(2 * 64);
  std::iota(in.begin(), in.end(), 0.0f);
  float* d_in = DeviceCopy(in);
  float* d_out = nullptr;
  ASSERT_EQ(cudaMalloc(&d_out, in.size() * sizeof(float)), cudaSuccess);
  TPSERVE_LAUNCH(WarpSumKernel, (2, 64, 0, nullptr), d_in, d_out);
  std::vector<float> out = HostCopy(d_out, in.size());
  for (int i = 0; i < 128; ++i) {
    const int w0 = i / 32 * 32;
    EXPECT_EQ(out[i], 32.0f * w0 + 31.0f * 32.0f / 2.0f) << i;
  }
  int *d_down = nullptr, *d_bcast = nullptr;
  ASSERT_EQ(cudaMalloc(&d_down, 64 * sizeof(int)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_bcast, 64 * sizeof(int)), cudaSuccess);
  TPSERVE_LAUNCH(ShuffleKernel, (1, 64, 0, nullptr), d_down, d_bcast);
  std::vector<int> down = HostCopy(d_down, 64), bcast = HostCopy(d_bcast, 64);
  for (int i = 0; i < 64; ++i) {
    const int lane = i % 32;
    EXPECT_EQ(down[i], (lane + 3 < 32 ? lane + 3 : lane) * 10) << i;  // beyond the warp: own
    EXPECT_EQ(bcast[i], 35) << i;
  }
  for (void* p : {static_cast<void*>(d_in), static_cast<void*>(d_out), static_cast<void*>(d_down),
                  static_cast<void*>(d_bcast)}) {
    EXPECT_EQ(cudaFree(p), cudaSuccess);
  }
}

TEST(CudaEmulator, BlockBarriersAndSharedMemory) {
  std::vector<int> in(3 * 200);
  std::iota(in.begin(), in.end(), 0);
  int* d_in = DeviceCopy(in);
  int* d_out = nullptr;
  ASSERT_EQ(cudaMalloc(&d_out, in.size() * sizeof(int)), cudaSuccess);
  TPSERVE_LAUNCH(ReverseKernel, (3, 200, 0, nullptr), d_in, d_out);
  std::vector<int> out = HostCopy(d_out, in.size());
  for (int b = 0; b < 3; ++b) {
    for (int t = 0; t < 200; ++t) EXPECT_EQ(out[b * 200 + t], b * 200 + 199 - t);
  }
  float* d_f = nullptr;
  ASSERT_EQ(cudaMalloc(&d_f, 96 * sizeof(float)), cudaSuccess);
  TPSERVE_LAUNCH(DynamicSharedKernel, (1, 96, 96 * sizeof(float), nullptr), d_f);
  std::vector<float> f = HostCopy(d_f, 96);
  for (int t = 0; t < 96; ++t) EXPECT_EQ(f[t], static_cast<float>((t + 1) % 96));
  int* d_grid = nullptr;
  ASSERT_EQ(cudaMalloc(&d_grid, 4 * 8 * 3 * 2 * sizeof(int)), cudaSuccess);
  TPSERVE_LAUNCH(Grid2dKernel, (dim3(4, 3), dim3(8, 2), 0, nullptr), d_grid);
  std::vector<int> g = HostCopy(d_grid, 4 * 8 * 3 * 2);
  for (int y = 0; y < 6; ++y) {
    for (int x = 0; x < 32; ++x) EXPECT_EQ(g[y * 32 + x], y * 1000 + x);
  }
  cudaFree(d_in);
  cudaFree(d_out);
  cudaFree(d_f);
  cudaFree(d_grid);
}

// The race above happens to give the intended result when threads run first-to-last, not when
// they run last-to-first: running a test both ways exposes such a missing barrier.
TEST(CudaEmulator, ThreadOrderExposesAMissingBarrier) {
  int* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 64 * sizeof(int)), cudaSuccess);
  std::vector<int> intended(64);
  std::iota(intended.begin(), intended.end(), 0);
  tpserve_emu::SetReverseThreadOrder(false);
  TPSERVE_LAUNCH(RacyShiftKernel, (1, 64, 0, nullptr), d);
  EXPECT_EQ(HostCopy(d, 64), intended);
  tpserve_emu::SetReverseThreadOrder(true);
  TPSERVE_LAUNCH(RacyShiftKernel, (1, 64, 0, nullptr), d);
  ASSERT_EQ(cudaMemset(d, 0, 64 * sizeof(int)), cudaSuccess);
  TPSERVE_LAUNCH(RacyShiftKernel, (1, 64, 0, nullptr), d);
  EXPECT_NE(HostCopy(d, 64), intended);
  tpserve_emu::SetReverseThreadOrder(false);
  cudaFree(d);
}

TEST(CudaEmulator, WorkRunsOnlyAtSynchronisation) {
  int* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, sizeof(int)), cudaSuccess);
  int* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pinned), sizeof(int)), cudaSuccess);
  *pinned = -1;
  TPSERVE_LAUNCH(WriteKernel, (1, 1, 0, nullptr), d, 0);
  ASSERT_EQ(cudaMemcpyAsync(pinned, d, sizeof(int), cudaMemcpyDeviceToHost, nullptr), cudaSuccess);
  EXPECT_EQ(*pinned, -1) << "an async copy into pinned memory completed before any sync";
  ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  EXPECT_EQ(*pinned, 7);
  // A pageable source is staged at the call: changing it afterwards changes nothing.
  int value = 11;
  ASSERT_EQ(cudaMemcpyAsync(d, &value, sizeof(int), cudaMemcpyHostToDevice, nullptr), cudaSuccess);
  value = 12;
  EXPECT_EQ(HostCopy(d, 1)[0], 11);
  cudaFreeHost(pinned);
  cudaFree(d);
}

// The counters tell copies from page-locked memory (anywhere inside a cudaMallocHost block)
// from pageable ones, and count every call that makes the host wait.
TEST(CudaEmulator, CountersSeeHowTheHostDrivesTheDevice) {
  int* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 4 * sizeof(int)), cudaSuccess);
  int* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pinned), 4 * sizeof(int)), cudaSuccess);
  int pageable[4] = {1, 2, 3, 4};
  tpserve_emu::ResetCounters();
  ASSERT_EQ(cudaMemcpyAsync(d, pinned + 2, 2 * sizeof(int), cudaMemcpyHostToDevice, nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(d, pageable, sizeof(pageable), cudaMemcpyHostToDevice, nullptr),
            cudaSuccess);
  TPSERVE_LAUNCH(WriteKernel, (1, 1, 0, nullptr), d, 0);
  ASSERT_EQ(cudaMemcpyAsync(pinned + 1, d, sizeof(int), cudaMemcpyDeviceToHost, nullptr),
            cudaSuccess);
  tpserve_emu::Counters c = tpserve_emu::GetCounters();
  EXPECT_EQ(c.h2d_pinned, 1u);
  EXPECT_EQ(c.h2d_pageable, 1u);
  EXPECT_EQ(c.kernels, 1u);
  EXPECT_EQ(c.operations, 4u);
  EXPECT_EQ(c.d2h, 1u);
  EXPECT_EQ(c.host_waits, 0u) << "nothing so far waits for the device";
  ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  EXPECT_EQ(pinned[1], 7);
  ASSERT_EQ(cudaMemcpyAsync(pageable, d, sizeof(int), cudaMemcpyDeviceToHost, nullptr),
            cudaSuccess);  // into pageable memory: the call itself waits
  c = tpserve_emu::GetCounters();
  EXPECT_EQ(c.host_waits, 2u);
  EXPECT_EQ(c.d2h, 2u);
  cudaFreeHost(pinned);
  cudaFree(d);
}

// Stream capture: the captured work does not run; the graph runs it at each launch, reading its
// pinned host source then; a wait for the capturing stream fails and spoils the capture.
__global__ void AddOneKernel(int* p) { p[threadIdx.x] += 1; }

TEST(CudaEmulator, CapturedGraphsReplayTheirWork) {
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  int* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 4 * sizeof(int)), cudaSuccess);
  int* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pinned), 4 * sizeof(int)), cudaSuccess);
  for (int i = 0; i < 4; ++i) pinned[i] = 10 * i;
  ASSERT_EQ(cudaMemset(d, 0, 4 * sizeof(int)), cudaSuccess);

  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  cudaStreamCaptureStatus status;
  ASSERT_EQ(cudaStreamIsCapturing(s, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusActive);
  ASSERT_EQ(cudaMemcpyAsync(d, pinned, 4 * sizeof(int), cudaMemcpyHostToDevice, s), cudaSuccess);
  TPSERVE_LAUNCH(AddOneKernel, (1, 4, 0, s), d);
  int pageable[4] = {};
  EXPECT_EQ(cudaMemcpyAsync(d, pageable, sizeof(pageable), cudaMemcpyHostToDevice, s),
            cudaErrorStreamCaptureUnsupported);
  cudaGraph_t spoiled = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(s, &spoiled), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(spoiled, nullptr);
  cudaGetLastError();

  tpserve_emu::ResetCounters();
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(d, pinned, 4 * sizeof(int), cudaMemcpyHostToDevice, s), cudaSuccess);
  TPSERVE_LAUNCH(AddOneKernel, (1, 4, 0, s), d);
  TPSERVE_LAUNCH(AddOneKernel, (1, 4, 0, s), d);
  EXPECT_EQ(cudaStreamSynchronize(s), cudaErrorStreamCaptureUnsupported);  // spoils it
  EXPECT_EQ(cudaStreamEndCapture(s, &spoiled), cudaErrorStreamCaptureInvalidated);
  cudaGetLastError();

  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(d, pinned, 4 * sizeof(int), cudaMemcpyHostToDevice, s), cudaSuccess);
  TPSERVE_LAUNCH(AddOneKernel, (1, 4, 0, s), d);
  TPSERVE_LAUNCH(AddOneKernel, (1, 4, 0, s), d);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  size_t nodes = 0;
  ASSERT_EQ(cudaGraphGetNodes(graph, nullptr, &nodes), cudaSuccess);
  EXPECT_EQ(nodes, 3u);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(HostCopy(d, 4), (std::vector<int>{0, 0, 0, 0})) << "captured work ran";

  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 4; ++i) pinned[i] = 100 * round + i;  // read when the graph runs
    ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    EXPECT_EQ(HostCopy(d, 4), (std::vector<int>{100 * round + 2, 100 * round + 3, 100 * round + 4,
                                                100 * round + 5}));
  }
  tpserve_emu::Counters c = tpserve_emu::GetCounters();
  EXPECT_EQ(c.graph_launches, 2u);
  EXPECT_EQ(c.graph_operations, 6u);
  EXPECT_EQ(c.kernels, 4u) << "the launches the host made while capturing, not the graph's";
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaFreeHost(pinned);
  cudaFree(d);
  cudaStreamDestroy(s);
}

TEST(CudaEmulator, CopiesAreCheckedAgainstTheirKind) {
  int* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 4 * sizeof(int)), cudaSuccess);
  int host[8] = {};
  EXPECT_EQ(cudaMemcpy(host, d, 4 * sizeof(int), cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  // Past the end of the allocation.
  EXPECT_EQ(cudaMemcpy(host, d, 8 * sizeof(int), cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  cudaGetLastError();
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, d + 2), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
  ASSERT_EQ(cudaPointerGetAttributes(&attr, host), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeUnregistered);
  cudaFree(d);
}

TEST(CudaEmulator, LaunchLimitsAreAnH100s) {
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 2048 * sizeof(float)), cudaSuccess);
  TPSERVE_LAUNCH(DynamicSharedKernel, (1, 2048, 0, nullptr), d);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  // Beyond 48 KiB of dynamic shared memory needs the kernel's opt-in.
  TPSERVE_LAUNCH(DynamicSharedKernel, (1, 32, 64 * 1024, nullptr), d);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  ASSERT_EQ(cudaFuncSetAttribute(DynamicSharedKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 64 * 1024),
            cudaSuccess);
  TPSERVE_LAUNCH(DynamicSharedKernel, (1, 32, 64 * 1024, nullptr), d);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaFuncSetAttribute(DynamicSharedKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 300 * 1024),
            cudaErrorInvalidValue);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaFree(d);
}

TEST(CudaEmulator, WmmaMultipliesAsTheHostDoes) {
  std::vector<__half> a(16 * 24 + 8), b(16 * 24);
  std::vector<float> af(16 * 16), bf(16 * 16), c(16 * 16);
  for (int r = 0; r < 16; ++r) {
    for (int k = 0; k < 16; ++k) {
      af[r * 16 + k] = static_cast<float>((r * 7 + k * 3) % 11) - 5.0f;  // small integers: exact
      bf[k * 16 + r] = static_cast<float>((r * 5 + k) % 9) * 0.5f - 2.0f;
      a[r * 24 + k] = __float2half_rn(af[r * 16 + k]);
      b[r * 24 + k] = __float2half_rn(bf[k * 16 + r]);  // column r of b, column-major
    }
  }
  for (int i = 0; i < 256; ++i) c[i] = static_cast<float>(i % 13);
  __half* d_a = DeviceCopy(a);
  __half* d_b = DeviceCopy(b);
  float* d_c = DeviceCopy(c);
  float* d_d = nullptr;
  ASSERT_EQ(cudaMalloc(&d_d, 256 * sizeof(float)), cudaSuccess);
  TPSERVE_LAUNCH(WmmaKernel, (1, 32, 0, nullptr), d_a, d_b, d_c, d_d, 0);
  const std::vector<float> d = HostCopy(d_d, 256);
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 16; ++n) {
      float want = c[r * 16 + n];
      for (int k = 0; k < 16; ++k) want += af[r * 16 + k] * bf[k * 16 + n];
      EXPECT_EQ(d[r * 16 + n], want) << r << "," << n;
    }
  }
  int* d_s = nullptr;
  ASSERT_EQ(cudaMalloc(&d_s, 32 * sizeof(int)), cudaSuccess);
  TPSERVE_LAUNCH(SyncwarpKernel, (1, 32, 0, nullptr), d_s);
  const std::vector<int> s = HostCopy(d_s, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(s[i], (i + 1) % 32 * 3) << i;
  for (void* p : {static_cast<void*>(d_a), static_cast<void*>(d_b), static_cast<void*>(d_c),
                  static_cast<void*>(d_d), static_cast<void*>(d_s)}) {
    EXPECT_EQ(cudaFree(p), cudaSuccess);
  }
}

using CudaEmulatorDeathTest = ::testing::Test;

TEST(CudaEmulatorDeathTest, HostDereferenceOfDeviceMemoryFaults) {
  int* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, sizeof(int)), cudaSuccess);
  EXPECT_DEATH({ *static_cast<volatile int*>(d) = 1; }, "");
  cudaFree(d);
}

// A WMMA tile 16 bytes off the 256-bit alignment the API requires is reported.
TEST(CudaEmulatorDeathTest, MisalignedWmmaTileIsReported) {
  __half* d_h = nullptr;
  float* d_f = nullptr;
  ASSERT_EQ(cudaMalloc(&d_h, 16 * 24 * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_f, 512 * sizeof(float)), cudaSuccess);
  ASSERT_EQ(reinterpret_cast<uintptr_t>(d_h) % 32, 0u);
  EXPECT_DEATH(
      {
        TPSERVE_LAUNCH(WmmaKernel, (1, 32, 0, nullptr), d_h, d_h, d_f, d_f + 256, 8);
        cudaDeviceSynchronize();
      },
      "not 256-bit aligned");
  cudaFree(d_h);
  cudaFree(d_f);
}

// Allocations of 1 MiB or more end at a guard page and are never reused (smaller ones share
// slabs: an overrun lands in the slab, and only copies and cuBLAS operands are bounds-checked).
TEST(CudaEmulatorDeathTest, KernelWritePastItsAllocationFaults) {
  constexpr int64_t kInts = 300 * 1024;  // 1.2 MB
  int* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, kInts * sizeof(int)), cudaSuccess);
  TPSERVE_LAUNCH(WriteKernel, (1, 1, 0, nullptr), d, kInts - 1);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_DEATH(
      {
        TPSERVE_LAUNCH(WriteKernel, (1, 1, 0, nullptr), d, kInts);
        cudaDeviceSynchronize();
      },
      "");
  cudaFree(d);
  EXPECT_DEATH(
      {
        TPSERVE_LAUNCH(WriteKernel, (1, 1, 0, nullptr), d, 0);  // after cudaFree
        cudaDeviceSynchronize();
      },
      "");
}

TEST(CudaEmulatorDeathTest, DivergentBarriersAreReported) {
  int* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 64 * sizeof(int)), cudaSuccess);
  EXPECT_DEATH(
      {
        TPSERVE_LAUNCH(DivergentBarrierKernel, (1, 64, 0, nullptr), d);
        cudaDeviceSynchronize();
      },
      "DivergentBarrierKernel: block \\(0,0,0\\): __syncthreads\\(\\) reached by 16 threads "
      "after 48 exited");
  EXPECT_DEATH(
      {
        TPSERVE_LAUNCH(MixedBarrierKernel, (1, 32, 0, nullptr), d);
        cudaDeviceSynchronize();
      },
      "MixedBarrierKernel: block \\(0,0,0\\) can never leave its barriers");
  EXPECT_DEATH(
      {
        TPSERVE_LAUNCH(ExitedLaneShuffleKernel, (1, 32, 0, nullptr), d);
        cudaDeviceSynchronize();
      },
      "ExitedLaneShuffleKernel: a full-warp shuffle in warp 0 while 1 of its lanes have exited");
  cudaFree(d);
}

}  // namespace
