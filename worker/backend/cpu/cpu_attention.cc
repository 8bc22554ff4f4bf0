// KV cache writes and causal attention over the paged cache, on the CPU.
//
// Pools (cpu_backend.h): K [block, kv_head, d, row] (a block's positions innermost), V [block,
// kv_head, row, d], elements fp32, fp16 or int8 (each tile followed by its rows' scales: a K
// score and a V row are multiplied by their position's scale). A query's scores against 16 cached
// positions are then one vector FMA per dimension (no horizontal sums), and its output accumulates
// whole V rows. One task per (up to 4 consecutive tokens of a sequence, KV head) reads that head's
// K and V once for every query head of those tokens that shares it (GQA; up to 6 query rows per
// pass), walking the block table block by block and prefetching a few blocks ahead. A row's
// arithmetic does not depend on the rows it shares a pass with: how a prompt is chunked or batched
// changes no bit.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/format/dtype.h"
#include "worker/backend/check.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/backend/cpu/static_dispatch.h"
#include "worker/backend/cpu/vec_math.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define TPSERVE_ATTN_AVX512 1
#include <immintrin.h>
#endif

namespace tpserve {
namespace {

constexpr float kHalfMax = 65504.0f;

// Attention tasks (AttentionAs): consecutive tokens of a sequence per task, and query rows (heads
// x tokens) that share one pass over K and V. WeightedValues keeps 4 accumulators per row (64
// dimensions; 6 rows are 24 of the 32 vector registers), Scores one per row and 16-position
// chunk, 2 chunks for 5-6 rows and 4 for fewer.
constexpr int64_t kTileTokens = 4;
constexpr int kMaxRows = 6;

inline float ToFloat(float x) { return x; }
inline float ToFloat(uint16_t h) { return HalfToFloat(h); }
inline float ToFloat(int8_t q) { return static_cast<float>(q); }  // times its scale, by the caller

// Elements of one (block, KV head) tile: block_size x head_dim, and with int8 the tile's
// block_size fp32 scales after them (4 bytes each).
template <typename T>
constexpr int64_t TileElems(int64_t hd, int64_t bs) {
  return std::is_same_v<T, int8_t> ? hd * bs + 4 * bs : hd * bs;
}
// int8 tiles: the scale of each row (position), after the tile's elements.
template <typename T>
const float* TileScales(const T* tile, int64_t hd, int64_t bs) {
  return reinterpret_cast<const float*>(tile + hd * bs);
}
inline void Store(float x, float* out) { *out = x; }
inline void Store(float x, uint16_t* out) {
  *out = FloatToHalf(std::clamp(x, -kHalfMax, kHalfMax));
}

#if TPSERVE_ATTN_AVX512
inline __mmask16 FirstLanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
}
// 16 elements (lanes outside m are 0 and not read) as fp32.
inline __m512 Load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 Load16(const uint16_t* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}
inline __m512 Load16(const int8_t* p, __mmask16 m) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}
inline void Store16(__m512 x, float* p, __mmask16 m) { _mm512_mask_storeu_ps(p, m, x); }
inline void Store16(__m512 x, uint16_t* p, __mmask16 m) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-kHalfMax)), _mm512_set1_ps(kHalfMax));
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#endif

// Where one KV head's part of each block lives, for one layer.
template <typename T>
struct HeadPools {
  const T* k;
  const T* v;
  int64_t block_stride;  // elements from one block to the next (kv_heads * TileElems)
  int64_t hd, bs;
  const T* k_tile(int32_t block) const { return k + block * block_stride; }  // [hd, bs]
  const T* v_tile(int32_t block) const { return v + block * block_stride; }  // [bs, hd]
};

// How many blocks ahead of the one being read ForBlocks prefetches. A tile (one KV head's part of
// one block, 2 KB for hd 64 x 16 rows in fp16) takes ~40 ns to multiply, well under the latency of
// the DRAM reads it needs. attention_bench, batch 32, best of 6 interleaved runs, rolling
// prefetch: 2 / 3 / 4 blocks ahead 5.33 / 5.26 / 5.76 ms at context 160, 31.8 / 27.8 / 28.4 ms
// at 1024 (whole tiles 4 ahead, as before: 6.05 / 33.1 ms).
constexpr int64_t kPrefetchBlocks = 3;

// How many of the next task's first blocks (K and V) a task prefetches into L2 before its own
// work, so that the next one does not start on a cold miss.
constexpr int64_t kL2PrefetchBlocks = 8;

// Calls fn(tile block id, first row, rows, index of that row's position - first, ahead) for the
// runs of positions [first, ctx) block by block, where `ahead` is the tile of the block
// `distance` ahead (null past the end): fn prefetches it a little at a time as it reads its own
// tile. The first `distance` tiles are prefetched at once. (Prefetching a whole tile
// ahead per block asked for 32 lines in a burst, more than a core tracks in flight; bursts of
// more lines, from larger blocks or V prefetched with K, ran up to 2x slower.)
template <typename Tile, typename Fn>
void ForBlocks(std::span<const int32_t> table, int64_t bs, int64_t first, int64_t ctx,
               int64_t tile_bytes, int64_t distance, Tile&& tile_of, Fn&& fn) {
  const int64_t first_block = first / bs, end_block = (ctx + bs - 1) / bs;
  for (int64_t b = first_block; b < std::min(end_block, first_block + distance); ++b) {
    PrefetchBytes(tile_of(table[b]), tile_bytes);
  }
  for (int64_t p = first; p < ctx;) {
    const int64_t row = p % bs, run = std::min(bs - row, ctx - p);
    const int64_t ahead = p / bs + distance;
    fn(table[p / bs], row, run, p - first,
       ahead < end_block ? reinterpret_cast<const char*>(tile_of(table[ahead])) : nullptr);
    p += run;
  }
}

#if TPSERVE_ATTN_AVX512
// A run of up to 16 consecutive cached positions within one K tile: its column in the tile
// (element (d, i) at col[d * bs + i]), the lanes in use, where its scores go, and the tile
// ahead to prefetch while reading it (null: none).
template <typename T>
struct KChunk {
  const T* col;
  __mmask16 m;
  int64_t at;
  const char* ahead;
  const float* scale;  // int8: the chunk's positions' scales (null otherwise)
};

// The scores of NC chunks for NR rows in one pass over the dimensions: each broadcast of
// q[h][d] feeds NC FMAs. (One chunk at a time, with a broadcast per FMA, the prefill's Scores
// took 1.7x the time of WeightedValues for the same FLOPs: the broadcasts, not the FMAs, set
// the pace.) Each score is q[h][0] * k[0] + ... summed in order of d in one accumulator,
// whatever the other rows and chunks are.
template <int NR, int NC, typename T>
void ScoreChunks(const float* const* q, const KChunk<T>* ch, int64_t hd, int64_t bs, float scale,
                 int64_t len, float* scores) {
  __m512 acc[NR][NC];
#pragma GCC unroll 8
  for (int h = 0; h < NR; ++h) {
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) acc[h][c] = _mm512_setzero_ps();
  }
  // The tiles ahead, 4 of their hd rows of bs positions per 4 steps of d (all by the end).
  const int64_t ahead_step = 4 * bs * static_cast<int64_t>(sizeof(T));
  if constexpr (std::is_same_v<T, int8_t>) {  // the scales, after the hd x bs values
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      if (ch[c].ahead != nullptr) PrefetchBytes(ch[c].ahead + hd * bs, 4 * bs);
    }
  }
  for (int64_t d = 0; d < hd; ++d) {
    if ((d & 3) == 0) {
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) {
        if (ch[c].ahead != nullptr) PrefetchBytes(ch[c].ahead + d * bs * sizeof(T), ahead_step);
      }
    }
    __m512 kv[NC];
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) kv[c] = Load16(ch[c].col + d * bs, ch[c].m);
#pragma GCC unroll 8
    for (int h = 0; h < NR; ++h) {
      const __m512 qb = _mm512_set1_ps(q[h][d]);
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) acc[h][c] = _mm512_fmadd_ps(qb, kv[c], acc[h][c]);
    }
  }
  __m512 sc[NC];  // int8: each position's scale too
#pragma GCC unroll 4
  for (int c = 0; c < NC; ++c) {
    sc[c] = _mm512_set1_ps(scale);
    if constexpr (std::is_same_v<T, int8_t>) {
      sc[c] = _mm512_mul_ps(sc[c], _mm512_maskz_loadu_ps(ch[c].m, ch[c].scale));
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < NR; ++h) {
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      _mm512_mask_storeu_ps(scores + h * len + ch[c].at, ch[c].m, _mm512_mul_ps(acc[h][c], sc[c]));
    }
  }
}
#endif

// scores[r * len + i] = scale * q[r] . K[position first + i] for NR query rows (query heads of
// one or more tokens) that read the same KV head. Each row's arithmetic is the same whatever the
// other rows are.
template <int NR, typename T>
void Scores(const float* const* q, const HeadPools<T>& pools, std::span<const int32_t> table,
            int64_t first, int64_t ctx, float scale, float* scores) {
  const int64_t hd = pools.hd, bs = pools.bs, len = ctx - first;
  const int64_t tile_bytes = TileElems<T>(hd, bs) * static_cast<int64_t>(sizeof(T));
#if TPSERVE_ATTN_AVX512
  // Chunks of 16 positions, kNC at a time (registers: NR x kNC accumulators).
  constexpr int kNC = NR >= 5 ? 2 : 4;
  KChunk<T> pending[kNC];
  int np = 0;
  auto flush = [&] {
    WithStaticCount<kNC>(np, [&](auto n) {
      ScoreChunks<NR, decltype(n)::value>(q, pending, hd, bs, scale, len, scores);
    });
    np = 0;
  };
#endif
  // kPrefetchBlocks ahead of the last block of a pass (up to kNC blocks are read together).
#if TPSERVE_ATTN_AVX512
  const int64_t distance = kPrefetchBlocks + kNC - 1;
#else
  const int64_t distance = kPrefetchBlocks;
#endif
  ForBlocks(
      table, bs, first, ctx, tile_bytes, distance, [&](int32_t b) { return pools.k_tile(b); },
      [&](int32_t block, int64_t row, int64_t run, int64_t at, const char* ahead) {
        const T* kt = pools.k_tile(block) + row;  // element (d, i) at kt[d * bs + i]
#if TPSERVE_ATTN_AVX512
        for (int64_t c = 0; c < run; c += 16) {
          pending[np++] = KChunk<T>{.col = kt + c,
                                    .m = FirstLanes(run - c),
                                    .at = at + c,
                                    .ahead = c == 0 ? ahead : nullptr,
                                    .scale = std::is_same_v<T, int8_t>
                                                 ? TileScales(pools.k_tile(block), hd, bs) + row + c
                                                 : nullptr};
          if (np == kNC) flush();
        }
#else
        if (ahead != nullptr) PrefetchBytes(ahead, tile_bytes);
        for (int64_t i = 0; i < run; ++i) {
          float sc = scale;
          if constexpr (std::is_same_v<T, int8_t>) {
            sc *= TileScales(pools.k_tile(block), hd, bs)[row + i];
          }
          for (int h = 0; h < NR; ++h) {
            float s = 0.0f;
            for (int64_t d = 0; d < hd; ++d) s += q[h][d] * ToFloat(kt[d * bs + i]);
            scores[h * len + at + i] = s * sc;
          }
        }
#endif
      });
#if TPSERVE_ATTN_AVX512
  if (np > 0) flush();
#endif
}

// out[r][d] = inv_sum[r] * sum_i p[r * len + i] * V[position first + i][d] for NR rows. With an
// int8 cache, p is multiplied in place by each position's V step first (the same fp32 products
// the loop took one by one before), so the loop is the same for every dtype. Flattened: the
// block walk and its callback are inlined here and the accumulators stay in registers (out of
// line, as GCC had left the int8 instance, they sat in memory, a load and a store around every
// FMA: twice fp16's time, bench/engine/README.md).
template <int NR, typename T>
[[gnu::flatten]] void WeightedValues(float* p, const float* inv_sum, const HeadPools<T>& pools,
                                     std::span<const int32_t> table, int64_t first, int64_t ctx,
                                     float* const* out) {
  const int64_t hd = pools.hd, bs = pools.bs, len = ctx - first;
  const int64_t tile_bytes = TileElems<T>(hd, bs) * static_cast<int64_t>(sizeof(T));
#if TPSERVE_ATTN_AVX512
  for (int64_t d0 = 0; d0 < hd; d0 += 64) {  // 4 vectors of dimensions per pass
    __mmask16 m[4];
    for (int j = 0; j < 4; ++j) m[j] = d0 + 16 * j < hd ? FirstLanes(hd - d0 - 16 * j) : 0;
    __m512 acc[NR][4];
#pragma GCC unroll 8
    for (int h = 0; h < NR; ++h) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[h][j] = _mm512_setzero_ps();
    }
    ForBlocks(
        table, bs, first, ctx, tile_bytes, kPrefetchBlocks,
        [&](int32_t b) { return pools.v_tile(b); },
        [&](int32_t block, int64_t row, int64_t run, int64_t at, const char* ahead) {
          const T* vrow = pools.v_tile(block) + row * hd + d0;
          if constexpr (std::is_same_v<T, int8_t>) {
            if (d0 == 0) {  // each weight times its row's step, once
              const float* vscale = TileScales(pools.v_tile(block), hd, bs) + row;
              for (int64_t c = 0; c < run; c += 16) {
                const __mmask16 mc = FirstLanes(run - c);
                const __m512 sc = _mm512_maskz_loadu_ps(mc, vscale + c);
                for (int h = 0; h < NR; ++h) {
                  float* ph = p + h * len + at + c;
                  _mm512_mask_storeu_ps(ph, mc, _mm512_mul_ps(_mm512_maskz_loadu_ps(mc, ph), sc));
                }
              }
            }
          }
          // The tile ahead, one of its bs rows per position read (all of it at once after a
          // partial run, and only in the first pass over the dimensions).
          const int64_t row_bytes = hd * static_cast<int64_t>(sizeof(T));
          if (d0 != 0) ahead = nullptr;
          if constexpr (std::is_same_v<T, int8_t>) {  // the scales, after the hd x bs values
            if (ahead != nullptr && run == bs) PrefetchBytes(ahead + hd * bs, 4 * bs);
          }
          if (ahead != nullptr && run < bs) {
            PrefetchBytes(ahead, tile_bytes);
            ahead = nullptr;
          }
          for (int64_t i = 0; i < run; ++i, vrow += hd) {
            if (ahead != nullptr) PrefetchBytes(ahead + i * row_bytes, row_bytes);
            // The rows' weights, all read before any accumulator changes (interleaved with
            // them, the accumulators went through memory).
            __m512 w[NR];
#pragma GCC unroll 8
            for (int h = 0; h < NR; ++h) w[h] = _mm512_set1_ps(p[h * len + at + i]);
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) {
              if (m[j] == 0) break;
              const __m512 vv = Load16(vrow + 16 * j, m[j]);
#pragma GCC unroll 8
              for (int h = 0; h < NR; ++h) acc[h][j] = _mm512_fmadd_ps(w[h], vv, acc[h][j]);
            }
          }
        });
#pragma GCC unroll 8
    for (int h = 0; h < NR; ++h) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        if (m[j] == 0) break;
        Store16(_mm512_mul_ps(acc[h][j], _mm512_set1_ps(inv_sum[h])), out[h] + d0 + 16 * j, m[j]);
      }
    }
  }
#else
  for (int h = 0; h < NR; ++h) std::fill(out[h], out[h] + hd, 0.0f);
  ForBlocks(
      table, bs, first, ctx, tile_bytes, kPrefetchBlocks,
      [&](int32_t b) { return pools.v_tile(b); },
      [&](int32_t block, int64_t row, int64_t run, int64_t at, const char* ahead) {
        if (ahead != nullptr) PrefetchBytes(ahead, tile_bytes);
        const T* vrow = pools.v_tile(block) + row * hd;
        for (int64_t i = 0; i < run; ++i, vrow += hd) {
          for (int h = 0; h < NR; ++h) {
            float w = p[h * len + at + i];
            if constexpr (std::is_same_v<T, int8_t>)
              w *= TileScales(pools.v_tile(block), hd, bs)[row + i];
            for (int64_t d = 0; d < hd; ++d) out[h][d] += w * ToFloat(vrow[d]);
          }
        }
      });
  for (int h = 0; h < NR; ++h) {
    for (int64_t d = 0; d < hd; ++d) out[h][d] *= inv_sum[h];
  }
#endif
}

// x[0, n) as int8 steps of max|x| / 127 (rounded to nearest, ties to even), written at
// out[i * stride]; returns the step (0 for an all-zero row).
inline float QuantizeRow(const float* x, int64_t n, int8_t* out, int64_t stride) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float step = amax / 127.0f;
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float q = std::clamp(std::nearbyint(x[i] * inv), -127.0f, 127.0f);
    out[i * stride] = static_cast<int8_t>(q);
  }
  return step;
}

template <typename T>
void WriteKvAs(const Tensor& k, const Tensor& v, std::span<const int64_t> slots,
               const KvLayerView& cache, ThreadPool& pool) {
  const int64_t kvh = cache.kv_heads, hd = cache.head_dim, bs = cache.block_size;
  T* kpool = static_cast<T*>(cache.k);
  T* vpool = static_cast<T*>(cache.v);
  const auto write = [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (slots[t] == kNoKvSlot) continue;
      const int64_t block = slots[t] / bs, row = slots[t] % bs;
      for (int64_t h = 0; h < kvh; ++h) {
        const int64_t tile = (block * kvh + h) * TileElems<T>(hd, bs);
        const float* ks = k.data() + (t * kvh + h) * hd;
        const float* vs = v.data() + (t * kvh + h) * hd;
        T* kd = kpool + tile + row;       // (d, row) at kd[d * bs]
        T* vd = vpool + tile + row * hd;  // (row, d) at vd[d]
        if constexpr (std::is_same_v<T, int8_t>) {
          float* kscales = reinterpret_cast<float*>(kpool + tile + hd * bs);
          float* vscales = reinterpret_cast<float*>(vpool + tile + hd * bs);
          kscales[row] = QuantizeRow(ks, hd, kd, bs);
          vscales[row] = QuantizeRow(vs, hd, vd, 1);
        } else {
#if TPSERVE_ATTN_AVX512
          for (int64_t d = 0; d < hd; d += 16) {
            const __mmask16 m = FirstLanes(hd - d);
            Store16(_mm512_maskz_loadu_ps(m, vs + d), vd + d, m);
            T converted[16];  // K goes down a column of the tile: convert 16, then scatter
            Store16(_mm512_maskz_loadu_ps(m, ks + d), converted, m);
            for (int64_t i = 0; i < std::min<int64_t>(16, hd - d); ++i)
              kd[(d + i) * bs] = converted[i];
          }
#else
          for (int64_t d = 0; d < hd; ++d) Store(ks[d], kd + d * bs);
          for (int64_t d = 0; d < hd; ++d) Store(vs[d], vd + d);
#endif
        }
      }
    }
  };
  // Each token's K goes down the columns of its tiles: ~32 cache lines per head, usually not in
  // cache (a decode step writes one row of blocks last touched a step ago), so even a few
  // tokens are worth splitting over the threads.
  const int64_t n = static_cast<int64_t>(slots.size());
  if (n >= 8) {
    pool.ParallelFor(n, 4, write);  // distinct slots: no two tokens write the same element
  } else {
    write(0, n);
  }
}

template <typename T>
void AttentionAs(const Tensor& q, const KvLayerView& cache, std::span<const AttentionSeq> seqs,
                 const AttentionParams& params, Tensor* out, ThreadPool& pool) {
  const int64_t num_tokens = q.dim(0), heads = q.dim(1), hd = q.dim(2);
  const int64_t bs = cache.block_size;

  // Which sequence each token row belongs to.
  std::vector<int32_t> seq_of(num_tokens, -1);
  for (size_t s = 0; s < seqs.size(); ++s) {
    const AttentionSeq& seq = seqs[s];
    for (int64_t t = 0; t < seq.num_tokens; ++t)
      seq_of[seq.token_begin + t] = static_cast<int32_t>(s);
  }
  // The local query heads that read each local KV head: [head_begin[k], head_begin[k + 1]).
  const int64_t first_kvh = params.q_head_begin / params.group_size - params.kv_head_begin;
  const int64_t last_kvh =
      (params.q_head_begin + heads - 1) / params.group_size - params.kv_head_begin;
  const int64_t groups = last_kvh - first_kvh + 1;
  std::vector<int64_t> head_begin(groups + 1, heads);
  for (int64_t h = heads - 1; h >= 0; --h) {
    head_begin[(params.q_head_begin + h) / params.group_size - params.kv_head_begin - first_kvh] =
        h;
  }
  const int64_t tile_elems = TileElems<T>(hd, bs);
  const int64_t block_stride = cache.kv_heads * tile_elems;

  // Rows not claimed by any sequence (padding) are zero.
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (seq_of[t] < 0) std::memset(out->data() + t * heads * hd, 0, heads * hd * sizeof(float));
  }
  // Tasks: (tile, KV head). A tile is up to kTileTokens consecutive tokens of one sequence (a
  // prefill chunk); their query heads that share the KV head go through K and V together, up to
  // kMaxRows at a time, so each K/V element loaded and converted feeds several rows' FMAs. A
  // decode token is a tile of one. With a sliding window the tokens' first positions differ:
  // tiles of one token there.
  struct Tile {
    int32_t seq;
    int64_t t0, n;
  };
  std::vector<Tile> tiles;
  const int64_t tile_tokens = params.sliding_window > 0 ? 1 : kTileTokens;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int64_t t = 0; t < seqs[s].num_tokens; t += tile_tokens) {
      tiles.push_back(Tile{.seq = static_cast<int32_t>(s),
                           .t0 = seqs[s].token_begin + t,
                           .n = std::min(tile_tokens, seqs[s].num_tokens - t)});
    }
  }
  const int64_t num_tasks = static_cast<int64_t>(tiles.size()) * groups;
  // The K and V tiles a task reads, into L2 (the task's own reads prefetch into L1 a few blocks
  // ahead from there).
  const auto prefetch_task = [&](int64_t task) {
    const Tile& tile = tiles[task / groups];
    const AttentionSeq& seq = seqs[tile.seq];
    const int64_t kvh = first_kvh + task % groups;
    const int64_t ctx = seq.start_pos + (tile.t0 - seq.token_begin) + tile.n;
    const int64_t first =
        params.sliding_window > 0 ? std::max<int64_t>(0, ctx - params.sliding_window) : 0;
    const int64_t tile_bytes = tile_elems * static_cast<int64_t>(sizeof(T));
    const int64_t last = std::min((ctx + bs - 1) / bs, first / bs + kL2PrefetchBlocks);
    for (int64_t b = first / bs; b < last; ++b) {
      const int64_t at = (seq.block_table[b] * block_stride + kvh * tile_elems) * sizeof(T);
      const char* kt = static_cast<const char*>(cache.k) + at;
      const char* vt = static_cast<const char*>(cache.v) + at;
      for (int64_t o = 0; o < tile_bytes; o += 64) {
        __builtin_prefetch(kt + o, 0, 2);  // into L2 (prefetcht1)
        __builtin_prefetch(vt + o, 0, 2);
      }
    }
  };
  pool.ParallelFor(num_tasks, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      if (task + 1 < end) prefetch_task(task + 1);
      const Tile& tile = tiles[task / groups];
      const int64_t k = task % groups;
      const int64_t h0 = head_begin[k], h1 = head_begin[k + 1], nh = h1 - h0;
      const int64_t kvh = first_kvh + k;
      const AttentionSeq& seq = seqs[tile.seq];
      const HeadPools<T> pools{.k = static_cast<const T*>(cache.k) + kvh * tile_elems,
                               .v = static_cast<const T*>(cache.v) + kvh * tile_elems,
                               .block_stride = block_stride,
                               .hd = hd,
                               .bs = bs};
      // Rows token-major: row r is query head h0 + r % nh of token tile.t0 + r / nh.
      const int64_t rows = tile.n * nh;
      for (int64_t r0 = 0; r0 < rows; r0 += kMaxRows) {
        const int nr = static_cast<int>(std::min<int64_t>(kMaxRows, rows - r0));
        const float* qr[kMaxRows];
        float* outr[kMaxRows];
        int64_t ctx_of[kMaxRows];
        for (int r = 0; r < nr; ++r) {
          const int64_t t = tile.t0 + (r0 + r) / nh, h = h0 + (r0 + r) % nh;
          qr[r] = q.data() + (t * heads + h) * hd;
          outr[r] = out->data() + (t * heads + h) * hd;
          ctx_of[r] = seq.start_pos + (t - seq.token_begin) + 1;  // causal: up to itself
        }
        // The last row's token sees the most positions; a row of an earlier token has its
        // scores past its own position set to probability 0 (its softmax covers only its own).
        const int64_t ctx = ctx_of[nr - 1];
        const int64_t first =
            params.sliding_window > 0 ? std::max<int64_t>(0, ctx - params.sliding_window) : 0;
        const int64_t len = ctx - first;
        scores.resize(nr * len);
        float inv_sum[kMaxRows];
        WithStaticCount<kMaxRows>(nr, [&](auto n) {
          constexpr int NR = decltype(n)::value;
          Scores<NR>(qr, pools, seq.block_table, first, ctx, params.scale, scores.data());
          for (int r = 0; r < NR; ++r) {
            float* s = scores.data() + r * len;
            const int64_t own = ctx_of[r] - first;
            inv_sum[r] = 1.0f / ExpShiftedSum(s, own, MaxOf(s, own));
            std::fill(s + own, s + len, 0.0f);
          }
          WeightedValues<NR>(scores.data(), inv_sum, pools, seq.block_table, first, ctx, outr);
        });
      }
    }
  });
}

}  // namespace

void CpuBackend::WriteKv(const Tensor& k, const Tensor& v, std::span<const int64_t> slots,
                         const KvLayerView& cache) {
  const int64_t row = cache.kv_heads * cache.head_dim;  // elements per token per layer
  TPSERVE_CHECK(k.shape() == v.shape() && k.numel() == static_cast<int64_t>(slots.size()) * row,
                "WriteKv: k %s, v %s, %zu slots, cache row %lld", k.ShapeString().c_str(),
                v.ShapeString().c_str(), slots.size(), static_cast<long long>(row));
  TPSERVE_CHECK(cache.dtype == kv_dtype_, "WriteKv: a %s pool, this backend keeps %s",
                KvDTypeName(cache.dtype), KvDTypeName(kv_dtype_));
  const int64_t capacity = cache.num_blocks * cache.block_size;
  for (size_t t = 0; t < slots.size(); ++t) {
    TPSERVE_CHECK((slots[t] >= 0 && slots[t] < capacity) || slots[t] == kNoKvSlot,
                  "WriteKv: slot %lld of %lld", static_cast<long long>(slots[t]),
                  static_cast<long long>(capacity));
  }
  if (cache.dtype == KvDType::kFp16) {
    WriteKvAs<uint16_t>(k, v, slots, cache, pool_);
  } else if (cache.dtype == KvDType::kInt8) {
    WriteKvAs<int8_t>(k, v, slots, cache, pool_);
  } else {
    WriteKvAs<float>(k, v, slots, cache, pool_);
  }
}

void CpuBackend::Attention(const Tensor& q, const KvLayerView& cache,
                           std::span<const AttentionSeq> seqs, const AttentionParams& params,
                           Tensor* out) {
  CheckAttentionArgs(q, cache, seqs, *out);
  TPSERVE_CHECK(cache.dtype == kv_dtype_, "Attention: a %s pool, this backend keeps %s",
                KvDTypeName(cache.dtype), KvDTypeName(kv_dtype_));
  if (cache.dtype == KvDType::kFp16) {
    AttentionAs<uint16_t>(q, cache, seqs, params, out, pool_);
  } else if (cache.dtype == KvDType::kInt8) {
    AttentionAs<int8_t>(q, cache, seqs, params, out, pool_);
  } else {
    AttentionAs<float>(q, cache, seqs, params, out, pool_);
  }
}

}  // namespace tpserve
