// The integer multiply issue rate of this machine, as the VNNI matmul kernel can get it: each
// thread of a pool runs independent chains of `vpdpbusd` (64 u8 x s8 products into 16 int32
// lanes) on registers only, so nothing but the multiply units limits it. The limit batched
// decode runs into once the weights are read once for many sequences: a step of B sequences
// needs B x (multiply-adds per token) products, and the int8x2 path issues two instructions
// per 64 of them (int8 one).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#endif

#include "worker/backend/cpu/thread_pool.h"

namespace tpserve {

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
// kChains independent chains of `iters` vpdpbusd each, all in registers (every loop unrolled:
// an accumulator array the compiler cannot keep in registers goes through the stack, and then
// the loads and stores, not the multiplier, set the rate).
// With kFmas > 0, as many independent fp32 FMA chains are interleaved with each 16 vpdpbusd:
// whether the FMAs (the kernel's per-block scaling) take issue slots from the multiplies.
template <int kFmas = 0>
inline void VnniChains(int64_t iters, int seed, int32_t* out) {
  // Independent accumulators: enough to hide the latency (8 reach about half the rate on Zen 5,
  // 16 the plateau; 24 measured slightly lower).
  constexpr int kChains = 16;
  static_assert(kFmas >= 0 && kFmas <= 4);
  __m512i acc[kChains];
  __m512 f[4];
#pragma GCC unroll 16
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_epi32(i + seed);
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) f[i] = _mm512_set1_ps(static_cast<float>(i + seed));
  const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-5);
  const __m512 m = _mm512_set1_ps(0.5f);
  for (int64_t k = 0; k < iters; ++k) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) {
      // The instruction itself (an intrinsic may be folded or moved out of the loop).
      asm("vpdpbusd %[b], %[a], %[acc]" : [acc] "+v"(acc[i]) : [a] "v"(a), [b] "v"(b));
      if (i % 4 == 3 && i / 4 < kFmas) {
        asm("vfmadd231ps %[m], %[m], %[f]" : [f] "+v"(f[i / 4]) : [m] "v"(m));
      }
    }
  }
  __m512i s = acc[0];
#pragma GCC unroll 16
  for (int i = 1; i < kChains; ++i) s = _mm512_add_epi32(s, acc[i]);
#pragma GCC unroll 4
  for (int i = 0; i < kFmas; ++i) s = _mm512_add_epi32(s, _mm512_cvtps_epi32(f[i]));
  _mm512_storeu_si512(out, s);
}
#endif

// vpdpbusd instructions retired per second by all threads of `pool` together, best of `reps`
// (0 where the build has no AVX-512 VNNI); with kFmas, while kFmas fp32 FMAs per 16 of them
// are issued too.
template <int kFmas = 0>
inline double VnniInstructionRate(ThreadPool& pool, int reps = 5) {
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
  constexpr int kChains = 16;       // as in VnniChains
  const int64_t iters = 1'000'000;  // per chunk; 8 chunks per thread, handed out as they finish
  const int64_t chunks = 8 * pool.size();
  std::vector<int32_t> sink(chunks * 16);
  double best = 0.0;
  for (int rep = 0; rep < reps; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    pool.ParallelFor(chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t)
        VnniChains<kFmas>(iters, static_cast<int>(t), &sink[t * 16]);
    });
    const double sec =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, static_cast<double>(chunks) * iters * kChains / sec);
  }
  return best;
#else
  (void)pool;
  (void)reps;
  return 0.0;
#endif
}

}  // namespace tpserve
