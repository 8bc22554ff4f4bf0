// Memory read bandwidth as a kernel can get it: a sum over a buffer far larger than the caches
// with wide loads, split over a thread pool. The limit the benchmarks put their figures against.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "worker/backend/cpu/thread_pool.h"

namespace tpserve {

// Sum of a float buffer with wide loads: bytes read / second, best of `reps`.
inline double ReadBandwidth(ThreadPool& pool, const float* data, int64_t n, int reps) {
  double best = 0.0;
  std::vector<float> sink(pool.size());
  for (int rep = 0; rep < reps; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    pool.ParallelFor(n, 4096, [&](int64_t begin, int64_t end) {
#if defined(__AVX512F__)
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t i = begin; i < end; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(data + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(data + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(data + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(data + i + 48));
      }
      sink[begin * pool.size() / n] =
          _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#else
      float s = 0.0f;
      for (int64_t i = begin; i < end; ++i) s += data[i];
      sink[begin * pool.size() / n] = s;
#endif
    });
    best = std::max(
        best, n * sizeof(float) /
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

// Bytes / second over a 1 GiB buffer, best of 5.
inline double MemoryReadBandwidth(ThreadPool& pool) {
  const int64_t n = int64_t{256} << 20;
  float* buf = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  std::fill(buf, buf + n, 1.0f);
  const double bw = ReadBandwidth(pool, buf, n, 5);
  std::free(buf);
  return bw;
}

// Bytes / second reading `tile_bytes` chunks at shuffled places of a 512 MB buffer, each chunk
// whole (wide loads, summed), with the chunk `distance` ahead prefetched a line per line read:
// the access pattern of decode attention over scattered KV tiles (cpu_attention.cc), without
// its arithmetic. Best of `reps`. The hardware prefetchers do little for such reads: without the
// software prefetch they ran at a third to a half of this rate on the 2 vCPU Zen 5 VM.
inline double ScatteredTileReadBandwidth(ThreadPool& pool, int64_t tile_bytes, int64_t distance,
                                         int reps = 3) {
  tile_bytes = std::max<int64_t>(64, tile_bytes / 64 * 64);
  const int64_t total = int64_t{512} << 20, tiles = total / tile_bytes;
  char* buf = static_cast<char*>(std::aligned_alloc(64, total));
  std::fill(buf, buf + total, 1);
  std::vector<int64_t> order(tiles);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(1));
  std::vector<float> sink(pool.size());
  double best = 0.0;
  for (int rep = 0; rep < reps; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    pool.ParallelFor(tiles, 1024, [&](int64_t begin, int64_t end) {
      float s = 0.0f;
#if defined(__AVX512F__)
      __m512 acc = _mm512_setzero_ps();
#endif
      for (int64_t t = begin; t < end; ++t) {
        const char* p = buf + order[t] * tile_bytes;
        const char* ahead = t + distance < end ? buf + order[t + distance] * tile_bytes : nullptr;
        for (int64_t o = 0; o < tile_bytes; o += 64) {
          if (ahead != nullptr) __builtin_prefetch(ahead + o, 0, 3);
#if defined(__AVX512F__)
          acc = _mm512_add_ps(acc, _mm512_load_ps(reinterpret_cast<const float*>(p + o)));
#else
          s += *reinterpret_cast<const float*>(p + o);
#endif
        }
      }
#if defined(__AVX512F__)
      s += _mm512_reduce_add_ps(acc);
#endif
      sink[begin * pool.size() / tiles] = s;
    });
    best = std::max(
        best, tiles * tile_bytes /
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::free(buf);
  return best;
}

}  // namespace tpserve
