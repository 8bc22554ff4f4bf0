// Memory read bandwidth as a kernel can get it: a sum over a buffer far larger than the caches
// with wide loads, split over a thread pool. The limit the benchmarks put their figures against.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
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

}  // namespace tpserve
