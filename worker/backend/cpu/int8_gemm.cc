#include "worker/backend/cpu/int8_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "worker/backend/check.h"
#include "worker/backend/cpu/static_dispatch.h"
#include "worker/backend/cpu/thread_pool.h"
#include "worker/backend/cpu/vec_math.h"
#include "worker/backend/host_memory.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__) && defined(__F16C__)
#define TPSERVE_VNNI 1
#include <immintrin.h>
#endif

namespace tpserve {
namespace {

constexpr int64_t kRows = 16;         // output rows interleaved in one group
constexpr int64_t kBlock = 32;        // elements per quantisation block
constexpr int64_t kHeaderBytes = 64;  // fp16 d[16], fp16 m[16]

// Weights of one element as stored: the source block's element e as u (see the header).
struct SourceBlock {
  DType t;
  const uint8_t* p;  // the GGML block
  uint16_t d() const {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
  }
  uint16_t m() const {
    uint16_t v = 0;
    if (t == DType::kQ4_1) std::memcpy(&v, p + 2, 2);
    return v;
  }
  uint8_t u(int e) const {
    if (t == DType::kQ8_0) return static_cast<uint8_t>(p[2 + e] ^ 0x80);
    const uint8_t* qs = p + (t == DType::kQ4_1 ? 4 : 2);
    return e < 16 ? (qs[e] & 0x0F) : (qs[e - 16] >> 4);
  }
};

int64_t SourceBlockBytes(DType t) { return t == DType::kQ4_0 ? 18 : t == DType::kQ4_1 ? 20 : 34; }
int Offset(DType t) { return t == DType::kQ4_0 ? 8 : t == DType::kQ8_0 ? 128 : 0; }
bool FourBit(DType t) { return t != DType::kQ8_0; }

// Byte position of element e of lane r in a packed block's weight area.
inline int64_t PackedIndex(bool four_bit, int64_t r, int e, bool* high) {
  if (four_bit) {  // chunk k = e / 8 holds elements 8k..8k+3 low, 8k+4..8k+7 high
    const int k = e / 8, w = e % 8;
    *high = w >= 4;
    return k * 64 + r * 4 + (w % 4);
  }
  *high = false;
  return (e / 4) * 64 + r * 4 + e % 4;
}

}  // namespace

bool Int8GemmAvailable() {
#if TPSERVE_VNNI
  return true;
#else
  return false;
#endif
}

bool Int8GemmPacks(DType t) { return t == DType::kQ4_0 || t == DType::kQ4_1 || t == DType::kQ8_0; }

std::shared_ptr<const PackedInt8Weight> PackInt8Weight(DType dtype, int64_t rows, int64_t cols,
                                                       const uint8_t* data, size_t row_stride_bytes,
                                                       ThreadPool* pool) {
  TPSERVE_CHECK(Int8GemmPacks(dtype) && cols % kBlock == 0 && rows > 0,
                "PackInt8Weight: %s [%lld, %lld]", DTypeName(dtype), static_cast<long long>(rows),
                static_cast<long long>(cols));
  auto w = std::make_shared<PackedInt8Weight>();
  w->dtype = dtype;
  w->rows = rows;
  w->cols = cols;
  w->groups = (rows + kRows - 1) / kRows;
  const bool four_bit = FourBit(dtype);
  w->block_bytes = kHeaderBytes + (four_bit ? kRows * kBlock / 2 : kRows * kBlock);
  const int64_t nb = cols / kBlock;
  const size_t total = static_cast<size_t>(w->groups * nb * w->block_bytes);
  if (total >= kHugePageBytes) {  // streamed every step: huge pages (host_memory.h)
    std::shared_ptr<void> buffer = HugePageBuffer(total);
    w->data = std::shared_ptr<uint8_t[]>(buffer, static_cast<uint8_t*>(buffer.get()));
  } else {
    w->data = std::shared_ptr<uint8_t[]>(static_cast<uint8_t*>(std::aligned_alloc(64, total)),
                                         [](uint8_t* p) { std::free(p); });
  }
  TPSERVE_CHECK(w->data != nullptr, "PackInt8Weight: out of memory (%zu bytes)", total);
  // Where element e of lane 0 goes (lane r adds 4 r), and whether as a high nibble.
  int64_t at[kBlock];
  bool high[kBlock];
  for (int e = 0; e < kBlock; ++e) at[e] = PackedIndex(four_bit, 0, e, &high[e]);
  const int64_t src_bytes = SourceBlockBytes(dtype);
  const auto pack_groups = [&](int64_t g0, int64_t g1) {
    std::memset(w->data.get() + g0 * nb * w->block_bytes, 0,
                static_cast<size_t>((g1 - g0) * nb * w->block_bytes));
    for (int64_t g = g0; g < g1; ++g) {
      for (int64_t r = 0; r < kRows && g * kRows + r < rows; ++r) {
        const uint8_t* row = data + (g * kRows + r) * row_stride_bytes;
        for (int64_t b = 0; b < nb; ++b) {
          uint8_t* out = w->data.get() + (g * nb + b) * w->block_bytes;
          const SourceBlock src{dtype, row + b * src_bytes};
          const uint16_t d = src.d(), m = src.m();
          std::memcpy(out + 2 * r, &d, 2);
          std::memcpy(out + 32 + 2 * r, &m, 2);
          uint8_t* u = out + kHeaderBytes + 4 * r;
          for (int e = 0; e < kBlock; ++e) {
            const uint8_t v = src.u(e);
            u[at[e]] |= high[e] ? static_cast<uint8_t>(v << 4) : v;
          }
        }
      }
    }
  };
  if (pool != nullptr) {
    pool->ParallelFor(w->groups, 8, pack_groups);
  } else {
    pack_groups(0, w->groups);
  }
  return w;
}

void Int8Activations::Resize(int64_t new_rows, int64_t new_cols, int new_terms) {
  TPSERVE_CHECK(new_cols % kBlock == 0 && (new_terms == 1 || new_terms == 2),
                "Int8Activations: %lld columns, %d terms", static_cast<long long>(new_cols),
                new_terms);
  rows = new_rows;
  cols = new_cols;
  terms = new_terms;
  const int64_t need = rows * cols;
  if (need > capacity) {
    capacity = std::max(need, 2 * capacity);
    q.reset(new int8_t[capacity]);
    q2.reset(new int8_t[capacity]);
    d.reset(new float[capacity / kBlock]);
    s.reset(new float[capacity / kBlock]);
    sum.reset(new int32_t[capacity / kBlock]);
    minus_8sum.reset(new int32_t[capacity / kBlock]);
    minus_128sum.reset(new int32_t[capacity / kBlock]);
  }
}

void QuantizeActivations(const float* x, int64_t ldx, int64_t row_begin, int64_t row_end,
                         Int8Activations* out) {
  const int64_t nb = out->cols / kBlock;
  const bool two = out->terms == 2;
  for (int64_t j = row_begin; j < row_end; ++j) {
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + j * ldx + b * kBlock;
      int8_t* q = out->q.get() + j * out->cols + b * kBlock;
      int8_t* q2 = out->q2.get() + j * out->cols + b * kBlock;
      const int64_t at = j * nb + b;
#if TPSERVE_VNNI
      const __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      const __m512 f0 = _mm512_roundscale_ps(_mm512_mul_ps(x0, _mm512_set1_ps(id)),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512 f1 = _mm512_roundscale_ps(_mm512_mul_ps(x1, _mm512_set1_ps(id)),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512i q0 = _mm512_cvtps_epi32(f0), q1 = _mm512_cvtps_epi32(f1);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtsepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_cvtsepi32_epi8(q1));
      int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
      float step = d;
      if (two) {  // what q leaves, |r| <= d / 2, in steps of d / 254
        const __m512 id2 = _mm512_set1_ps(id * static_cast<float>(kSecondTerm));
        const __m512 r0 = _mm512_fnmadd_ps(f0, _mm512_set1_ps(d), x0);
        const __m512 r1 = _mm512_fnmadd_ps(f1, _mm512_set1_ps(d), x1);
        const __m512i p0 = _mm512_max_epi32(
            _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(r0, id2)), _mm512_set1_epi32(127)),
            _mm512_set1_epi32(-127));
        const __m512i p1 = _mm512_max_epi32(
            _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(r1, id2)), _mm512_set1_epi32(127)),
            _mm512_set1_epi32(-127));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q2), _mm512_cvtsepi32_epi8(p0));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q2 + 16), _mm512_cvtsepi32_epi8(p1));
        sum = kSecondTerm * sum + _mm512_reduce_add_epi32(_mm512_add_epi32(p0, p1));
        step = d / static_cast<float>(kSecondTerm);
      }
#else
      float amax = 0.0f;
      for (int64_t i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      int32_t sum = 0, sum2 = 0;
      for (int64_t i = 0; i < kBlock; ++i) {
        const float f = std::nearbyint(xb[i] * id);
        q[i] = static_cast<int8_t>(std::clamp(static_cast<int>(f), -127, 127));
        sum += q[i];
        if (two) {
          const float r = std::fma(-f, d, xb[i]);
          const int v = static_cast<int>(std::nearbyint(r * (id * kSecondTerm)));
          q2[i] = static_cast<int8_t>(std::clamp(v, -127, 127));
          sum2 += q2[i];
        }
      }
      float step = d;
      if (two) {
        sum = kSecondTerm * sum + sum2;
        step = d / static_cast<float>(kSecondTerm);
      }
#endif
      out->d[at] = step;
      out->sum[at] = sum;
      out->minus_8sum[at] = -8 * sum;
      out->minus_128sum[at] = -128 * sum;
      out->s[at] = step * static_cast<float>(sum);
    }
  }
}

void Int8GemmReference(const PackedInt8Weight& w, const Int8Activations& x, float* y, int64_t ldy) {
  TPSERVE_CHECK(x.cols == w.cols, "Int8GemmReference: x has %lld columns, weight %lld",
                static_cast<long long>(x.cols), static_cast<long long>(w.cols));
  const bool four_bit = FourBit(w.dtype), has_min = w.dtype == DType::kQ4_1;
  const int32_t offset = Offset(w.dtype);
  const int64_t nb = w.cols / kBlock;
  for (int64_t j = 0; j < x.rows; ++j) {
    for (int64_t r = 0; r < w.rows; ++r) {
      const int64_t g = r / kRows, lane = r % kRows;
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = w.block(g, b);
        uint16_t dh, mh;
        std::memcpy(&dh, blk + 2 * lane, 2);
        std::memcpy(&mh, blk + 32 + 2 * lane, 2);
        const int8_t* xq = x.q.get() + j * x.cols + b * kBlock;
        const int8_t* xq2 = x.q2.get() + j * x.cols + b * kBlock;
        int32_t isum = 0, isum2 = 0;
        for (int e = 0; e < kBlock; ++e) {
          bool high;
          const uint8_t byte = blk[kHeaderBytes + PackedIndex(four_bit, lane, e, &high)];
          const int u = four_bit ? (high ? byte >> 4 : byte & 0x0F) : byte;
          isum += u * xq[e];
          if (x.terms == 2) isum2 += u * xq2[e];
        }
        if (x.terms == 2) isum = kSecondTerm * isum + isum2;
        isum -= offset * x.sum[j * nb + b];
        const float scale = HalfToFloat(dh) * x.d[j * nb + b];
        acc = std::fma(static_cast<float>(isum), scale, acc);
        if (has_min) acc = std::fma(HalfToFloat(mh), x.s[j * nb + b], acc);
      }
      y[j * ldy + r] = acc;
    }
  }
}

#if TPSERVE_VNNI
namespace {

// acc + dot4(u, the 4 int8 at p broadcast to every lane): vpdpbusd with an embedded broadcast
// of its memory operand, one instruction (compilers emit a separate vpbroadcastd, and the
// kernel is bound by instructions issued, not by the multiplier).
inline __m512i DotBcast(__m512i acc, __m512i u, const int8_t* p) {
  asm("vpdpbusd %[x]%{1to16%}, %[u], %[acc]"
      : [acc] "+v"(acc)
      : [u] "v"(u), [x] "m"(*reinterpret_cast<const int32_t*>(p)));
  return acc;
}

// How far ahead of the block being multiplied the first pass over a group prefetches the
// weights. Groups follow each other in memory and each weight is read once per forward pass, so
// the kernel streams them from DRAM; the hardware prefetcher alone left it waiting on loads
// (SmolLM2-shaped matmuls, 2 threads: batch 8 int8x2 10.4 -> 5.4 ms, batch 32 25.4 -> 18.9 ms,
// batch 1 2.9 -> 2.3 ms per forward pass's matmuls).
constexpr int64_t kPrefetchBytes = 4096;

// Lines of another group to prefetch while a pass reads its blocks: `lines` cache lines from
// `base`, spread evenly over the pass's blocks.
struct SpreadPrefetch {
  const uint8_t* base = nullptr;  // null: none
  int64_t lines = 0;
  int64_t per_block = 0;  // ceil(lines / blocks)
};

// NJ activation rows x the 16 rows of group g. Per block, the 16 x 32 weights are unpacked
// once into u[8] (lane r of u[m]: elements 4m..4m+3 of row r) and stay in registers while
// every activation row is multiplied with them. With kPrefetch, the weights kPrefetchBytes
// ahead are prefetched (the first pass over a group, when another group of this call follows);
// `spread` names more lines to prefetch, a few per block (a group's later passes).
template <bool kFourBit, bool kMin, int kOffset, int kTerms, int NJ, bool kPrefetch>
void GroupKernel(const PackedInt8Weight& w, const Int8Activations& x, int64_t g, int64_t j0,
                 float* y, int64_t ldy, __mmask16 store_mask, bool accumulate,
                 SpreadPrefetch spread) {
  const int64_t nb = w.cols / kBlock;
  const int64_t xc = x.cols;
  const int8_t* xq = x.q.get() + j0 * xc;
  const int8_t* xq2 = kTerms == 2 ? x.q2.get() + j0 * xc : nullptr;
  const float* xd = x.d.get() + j0 * nb;
  const float* xs = x.s.get() + j0 * nb;
  static_assert(kOffset == 0 || kOffset == 8 || kOffset == 128);
  const int32_t* xoff = (kOffset == 8 ? x.minus_8sum.get() : x.minus_128sum.get()) + j0 * nb;
  __m512 acc[NJ];
#pragma GCC unroll 16
  for (int j = 0; j < NJ; ++j) acc[j] = _mm512_setzero_ps();
  const __m512i nib = _mm512_set1_epi8(0x0F);
  const uint8_t* blk = w.block(g, 0);
  for (int64_t b = 0; b < nb; ++b, blk += w.block_bytes) {
    if constexpr (kPrefetch) PrefetchBytes(blk + kPrefetchBytes, w.block_bytes);
    if (spread.base != nullptr) {
      const int64_t end = std::min(spread.lines, (b + 1) * spread.per_block);
      for (int64_t l = b * spread.per_block; l < end; ++l) {
        __builtin_prefetch(spread.base + 64 * l, 0, 2);  // into L2 (prefetcht1)
      }
    }
    const uint8_t* packed = blk + kHeaderBytes;
    __m512i u[8];
    if constexpr (kFourBit) {
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const __m512i v = _mm512_load_si512(packed + 64 * k);
        u[2 * k] = _mm512_and_si512(v, nib);
        u[2 * k + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
      }
    } else {
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) u[k] = _mm512_load_si512(packed + 64 * k);
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(blk)));
    __m512 mw;
    if constexpr (kMin) {
      mw = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(blk + 32)));
    }
    // Rows in sets of kR, their dpbusd chains (one per row and term, 8 long) interleaved
    // instruction by instruction: each is independent of the 7 before it, which covers the
    // instruction's latency (4 cycles, 2 issued per cycle on Zen 5). Rows one after the other,
    // each in two chains, left the kernel waiting on latency: int8x2 [1536 x 576] x 32 rows,
    // gemm_bench best of 6 interleaved runs, 1 thread 171.5 -> 162.8 us, 2 threads 92.7 ->
    // 90.2 us; int8 94.9 -> 92.5 us (the sums are integers: results are unchanged, bit for bit).
    constexpr int kR = kTerms == 2 ? 4 : 8;
#pragma GCC unroll 4
    for (int r0 = 0; r0 < NJ; r0 += kR) {
      __m512i hi[kR], lo[kR];
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        // The offset's correction, -offset * sum, starts the chain that ends in the block sum
        // (a broadcast from memory rather than a scalar multiply, a move to a vector register
        // and a subtraction per row and block: the first two took a vector pipe). With two
        // terms that is lo, added after hi's 254 times.
        __m512i start = _mm512_setzero_si512();
        if constexpr (kOffset != 0) {
          if (r0 + r < NJ) start = _mm512_set1_epi32(xoff[(r0 + r) * nb + b]);
        }
        hi[r] = kTerms == 2 ? _mm512_setzero_si512() : start;
        if constexpr (kTerms == 2) lo[r] = start;
      }
#pragma GCC unroll 8
      for (int m = 0; m < 8; ++m) {
#pragma GCC unroll 8
        for (int r = 0; r < kR; ++r) {
          if (r0 + r < NJ) {
            hi[r] = DotBcast(hi[r], u[m], xq + (r0 + r) * xc + b * kBlock + 4 * m);
            if constexpr (kTerms == 2) {
              lo[r] = DotBcast(lo[r], u[m], xq2 + (r0 + r) * xc + b * kBlock + 4 * m);
            }
          }
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        const int j = r0 + r;
        if (j >= NJ) break;
        __m512i isum = hi[r];
        if constexpr (kTerms == 2) {  // 254 * sum(u * q) + sum(u * q2)
          // 254 a = (a << 8) - (a << 1): two shifts instead of a 10-cycle vpmulld.
          isum = _mm512_add_epi32(
              _mm512_sub_epi32(_mm512_slli_epi32(isum, 8), _mm512_slli_epi32(isum, 1)), lo[r]);
        }
        const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(xd[j * nb + b]));
        acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[j]);
        if constexpr (kMin) acc[j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xs[j * nb + b]), acc[j]);
      }
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < NJ; ++j) {
    float* out = y + (j0 + j) * ldy + g * kRows;
    if (accumulate) acc[j] = _mm512_add_ps(_mm512_maskz_loadu_ps(store_mask, out), acc[j]);
    _mm512_mask_storeu_ps(out, store_mask, acc[j]);
  }
}

constexpr int kMaxRowsPerPass = 8;

template <bool kFourBit, bool kMin, int kOffset, int kTerms>
void GemmGroups(const PackedInt8Weight& w, const Int8Activations& x, int64_t g0, int64_t g1,
                float* y, int64_t ldy, bool accumulate) {
  const int64_t nb = w.cols / kBlock;
  const int64_t group_bytes = nb * w.block_bytes;
  // The start of this call's weights: the kernel prefetches the rest as it goes.
  PrefetchBytes(w.block(g0, 0), std::min(kPrefetchBytes, (g1 - g0) * group_bytes));
  // A group's first pass prefetches kPrefetchBytes ahead (the rest of the group and the start
  // of the next). With more passes, the later ones prefetch the rest of the next group, a share
  // each, so that the weights stream from memory during all of a group's passes: the LM head
  // ([49152 x 576] Q8_0, 32 MB, 10 KB a group, read 4 times at 32 rows) waited on memory in its
  // first passes and left it idle in the others.
  const int64_t passes = (x.rows + kMaxRowsPerPass - 1) / kMaxRowsPerPass;
  const int64_t group_lines = (group_bytes + 63) / 64;
  const int64_t ahead_lines = std::min(group_lines, kPrefetchBytes / 64);
  const int64_t spread_lines = group_lines - ahead_lines;
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t valid = std::min<int64_t>(kRows, w.rows - g * kRows);
    const __mmask16 mask = valid == kRows ? 0xFFFF : static_cast<__mmask16>((1u << valid) - 1);
    for (int64_t j0 = 0, pass = 0; j0 < x.rows; j0 += kMaxRowsPerPass, ++pass) {
      const int nj = static_cast<int>(std::min<int64_t>(kMaxRowsPerPass, x.rows - j0));
      SpreadPrefetch spread;
      if (pass > 0 && g + 1 < g1 && spread_lines > 0) {
        const int64_t first = ahead_lines + (pass - 1) * spread_lines / (passes - 1);
        const int64_t lines = ahead_lines + pass * spread_lines / (passes - 1) - first;
        spread = {.base = w.block(g + 1, 0) + 64 * first,
                  .lines = lines,
                  .per_block = (lines + nb - 1) / nb};
      }
      WithStaticCount<kMaxRowsPerPass>(nj, [&](auto k) {
        if (j0 == 0 && g + 1 < g1) {
          GroupKernel<kFourBit, kMin, kOffset, kTerms, k(), true>(w, x, g, j0, y, ldy, mask,
                                                                  accumulate, spread);
        } else {
          GroupKernel<kFourBit, kMin, kOffset, kTerms, k(), false>(w, x, g, j0, y, ldy, mask,
                                                                   accumulate, spread);
        }
      });
    }
  }
}

template <int kTerms>
void GemmTerms(const PackedInt8Weight& w, const Int8Activations& x, int64_t g0, int64_t g1,
               float* y, int64_t ldy, bool accumulate) {
  switch (w.dtype) {
    case DType::kQ4_1:
      return GemmGroups<true, true, 0, kTerms>(w, x, g0, g1, y, ldy, accumulate);
    case DType::kQ4_0:
      return GemmGroups<true, false, 8, kTerms>(w, x, g0, g1, y, ldy, accumulate);
    case DType::kQ8_0:
      return GemmGroups<false, false, 128, kTerms>(w, x, g0, g1, y, ldy, accumulate);
    default:
      TPSERVE_CHECK(false, "Int8Gemm: %s is not packed", DTypeName(w.dtype));
  }
}

}  // namespace
#endif  // TPSERVE_VNNI

void Int8Gemm(const PackedInt8Weight& w, const Int8Activations& x, int64_t group_begin,
              int64_t group_end, float* y, int64_t ldy, bool accumulate) {
  TPSERVE_CHECK(x.cols == w.cols, "Int8Gemm: x has %lld columns, weight %lld",
                static_cast<long long>(x.cols), static_cast<long long>(w.cols));
#if TPSERVE_VNNI
  if (x.terms == 2) return GemmTerms<2>(w, x, group_begin, group_end, y, ldy, accumulate);
  return GemmTerms<1>(w, x, group_begin, group_end, y, ldy, accumulate);
#else
  TPSERVE_CHECK(false, "Int8Gemm: no VNNI kernel for %s in this build", DTypeName(w.dtype));
#endif
}

}  // namespace tpserve
