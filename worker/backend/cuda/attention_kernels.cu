// Causal attention over the paged KV cache (fp32 or fp16, read as fp32): a decode kernel (one query
// row per block) and flash-style prefill kernels (query tiles against K/V tiles staged in shared
// memory, online softmax): one in fp32 on the CUDA cores, one on the tensor cores (fp16 Q, K, V
// and probabilities, fp32 scores and sums). All read K/V through the sequence's block table:
// slot(p) = table[p / block_size] * block_size + p % block_size, K row = (slot * kv_heads + kvh) *
// hd. Q and the output are fp32 or bf16 (AttentionArgs::act_bf16).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <atomic>
#include <cmath>

#include "worker/backend/cuda/activation.cuh"
#include "worker/backend/cuda/cuda_kernels.h"
#include "worker/backend/cuda/cuda_launch.h"

namespace tpserve::cuda {
namespace {

constexpr int kWarps = 4;        // the CUDA-core prefill kernel's
constexpr int kDecodeWarps = 8;  // the decode kernel's, each over kDecodeUnroll positions a step
constexpr int kDecodeUnroll = 4;
constexpr int kKvTile = 32;  // positions per K/V tile: one per lane
constexpr int kRowsPerWarp = kPrefillTileRows / kWarps;

__device__ __forceinline__ float WarpSum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Raises `kernel`'s dynamic shared memory limit to `bytes` on the current device, once per device
// (the attribute belongs to the device's copy of the function). `done` is the kernel's own mask.
bool OptInSharedMemory(const void* kernel, int bytes, std::atomic<uint64_t>* done) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return false;
  const uint64_t bit = uint64_t{1} << device;
  if ((done->load(std::memory_order_acquire) & bit) != 0) return true;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) !=
      cudaSuccess) {
    return false;
  }
  done->fetch_or(bit, std::memory_order_release);
  return true;
}

__device__ __forceinline__ float Ld(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float Ld(const __half* p, int64_t i) { return __half2float(p[i]); }

__device__ __forceinline__ int64_t KvRow(const AttentionArgs& a, const int32_t* table, int64_t p,
                                         int64_t kvh) {
  const int64_t slot =
      static_cast<int64_t>(table[p / a.block_size]) * a.block_size + p % a.block_size;
  return (slot * a.kv_heads + kvh) * a.hd;
}

// grid (heads, rows, splits), kDecodeWarps warps. A row's positions are cut into chunks whose
// length depends only on its own context (DecodeChunkLen): block z computes chunks z, z + splits,
// ... each from scratch (a row of one chunk writes its output directly; longer rows write each
// chunk's softmax state to `partials`, which CombineDecodeChunks merges in chunk order). So the
// arithmetic of a row is the same whatever `splits` and the rest of the batch are, and a small
// batch still has heads x rows x splits blocks on the GPU instead of heads x rows. Lane owns dims
// lane + 32 i, i < kPerLane. The heads of a row are neighbours in launch order: the group_size
// query heads that read one KV head run together, so the KV rows come from HBM once and from L2
// for the others (with rows outermost, a KV head's rows were read again only after a sweep over
// the whole batch, long evicted at batch 64).
template <int kPerLane, typename KV>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    PagedDecodeKernel(AttentionArgs a, DecodeSplit split) {
  const KV* k_cache = static_cast<const KV*>(a.k_cache);
  const KV* v_cache = static_cast<const KV*>(a.v_cache);
  const int64_t h = blockIdx.x, t = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t hd = a.hd;
  const int64_t out_base = (t * a.heads + h) * hd;  // of out and q
  const int32_t ctx = a.ctx_len[t];
  if (ctx == 0) {
    if (blockIdx.z != 0) return;
    for (int64_t d = threadIdx.x; d < hd; d += blockDim.x)
      ActStore(a.out, out_base + d, 0.0f, a.act_bf16);
    return;
  }
  const int64_t kvh = (a.q_head_begin + h) / a.group_size - a.kv_head_begin;
  const int32_t* table = a.block_tables + a.table_offset[t];
  const int32_t chunk_len = DecodeChunkLen(ctx), chunks = (ctx + chunk_len - 1) / chunk_len;

  float qv[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    qv[i] = d < hd ? ActLoad(a.q, out_base + d, a.act_bf16) : 0.0f;
  }
  __shared__ float sm_m[kDecodeWarps], sm_l[kDecodeWarps];
  __shared__ float sm_acc[kDecodeWarps][32 * kPerLane];

  for (int32_t c = blockIdx.z; c < chunks; c += gridDim.z) {  // block-uniform
    const int32_t begin = c * chunk_len, end = begin + chunk_len < ctx ? begin + chunk_len : ctx;
    float m = -INFINITY, l = 0.0f, acc[kPerLane];
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[i] = 0.0f;
    // A warp takes kDecodeUnroll positions a step and loads all their K and V values before it
    // needs the first sum: several rows in flight instead of one (the per-position sum is a chain
    // of shuffles that the next load would wait behind).
    for (int64_t p0 = begin + warp * kDecodeUnroll; p0 < end; p0 += kDecodeWarps * kDecodeUnroll) {
      int64_t row[kDecodeUnroll];
      float s[kDecodeUnroll], vv[kDecodeUnroll][kPerLane];
#pragma unroll
      for (int u = 0; u < kDecodeUnroll; ++u) {
        row[u] = p0 + u < end ? KvRow(a, table, p0 + u, kvh) : -1;  // warp-uniform
        s[u] = 0.0f;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int64_t d = lane + 32 * i;
          const bool in = row[u] >= 0 && d < hd;
          s[u] += in ? qv[i] * Ld(k_cache, row[u] + d) : 0.0f;
          vv[u][i] = in ? Ld(v_cache, row[u] + d) : 0.0f;
        }
      }
      float step_max = -INFINITY;
#pragma unroll
      for (int u = 0; u < kDecodeUnroll; ++u) {
        s[u] = WarpSum(s[u]) * a.scale;
        if (row[u] >= 0) step_max = fmaxf(step_max, s[u]);
      }
      const float m_new = fmaxf(m, step_max);  // finite: position p0 is visible
      const float alpha = expf(m - m_new);     // 0 on the first step (m = -inf)
      float e[kDecodeUnroll], e_sum = 0.0f;
#pragma unroll
      for (int u = 0; u < kDecodeUnroll; ++u) {
        e[u] = row[u] >= 0 ? expf(s[u] - m_new) : 0.0f;
        e_sum += e[u];
      }
      l = l * alpha + e_sum;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        float v = acc[i] * alpha;
#pragma unroll
        for (int u = 0; u < kDecodeUnroll; ++u) v += e[u] * vv[u][i];
        acc[i] = v;
      }
      m = m_new;
    }

    // Merge the warps' softmax states.
    __syncthreads();  // the previous chunk's merge has read the shared state
    if (lane == 0) {
      sm_m[warp] = m;
      sm_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) sm_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float big = -INFINITY;
    for (int w = 0; w < kDecodeWarps; ++w) big = fmaxf(big, sm_m[w]);
    float total = 0.0f, wscale[kDecodeWarps];
    for (int w = 0; w < kDecodeWarps; ++w) {
      wscale[w] = sm_m[w] == -INFINITY ? 0.0f : expf(sm_m[w] - big);
      total += sm_l[w] * wscale[w];
    }
    float* partial =
        chunks > 1
            ? split.partials + ((split.slot[t] * a.heads + h) * kMaxDecodeChunks + c) * (hd + 2)
            : nullptr;
    if (partial != nullptr && threadIdx.x == 0) {
      partial[0] = big;
      partial[1] = total;
    }
    for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
      float o = 0.0f;
      for (int w = 0; w < kDecodeWarps; ++w) o += sm_acc[w][d] * wscale[w];
      if (partial != nullptr) {
        partial[2 + d] = o;
        continue;
      }
      ActStore(a.out, out_base + d, o / total, a.act_bf16);
    }
  }
}

// grid (heads, rows), one warp: the rows of more than one chunk, their chunks merged in order.
__global__ void __launch_bounds__(32) CombineDecodeChunks(AttentionArgs a, DecodeSplit split) {
  const int64_t h = blockIdx.x, t = blockIdx.y, hd = a.hd;
  const int32_t ctx = a.ctx_len[t];
  if (ctx == 0) return;
  const int32_t chunk_len = DecodeChunkLen(ctx), chunks = (ctx + chunk_len - 1) / chunk_len;
  if (chunks <= 1) return;  // written by the decode kernel
  const float* partials =
      split.partials + (split.slot[t] * a.heads + h) * kMaxDecodeChunks * (hd + 2);
  // Each chunk's weight exp(m_c - max), once.
  __shared__ float weight[kMaxDecodeChunks];
  float big = -INFINITY;
  for (int32_t c = 0; c < chunks; ++c) big = fmaxf(big, partials[c * (hd + 2)]);
  for (int32_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    weight[c] = expf(partials[c * (hd + 2)] - big);
  }
  __syncthreads();
  float total = 0.0f;
  for (int32_t c = 0; c < chunks; ++c) total += partials[c * (hd + 2) + 1] * weight[c];
  const int64_t out_base = (t * a.heads + h) * hd;
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.0f;
    for (int32_t c = 0; c < chunks; ++c) o += partials[c * (hd + 2) + 2 + d] * weight[c];
    ActStore(a.out, out_base + d, o / total, a.act_bf16);
  }
}

// A prefill block's work (grid (tiles, heads)): rows [first, first + nrows) of one sequence, which
// are consecutive positions, for query head h.
struct PrefillTile {
  int64_t first, h, kvh;  // kvh: this rank's KV head for h
  int nrows;
  const int32_t* table;  // the sequence's block table
  int32_t max_ctx;       // positions the last row sees
};
__device__ __forceinline__ PrefillTile TileOf(const AttentionArgs& a, const int32_t* tile_first_row,
                                              const int32_t* tile_rows) {
  PrefillTile t;
  t.first = tile_first_row[blockIdx.x];
  t.nrows = tile_rows[blockIdx.x];
  t.h = blockIdx.y;
  t.kvh = (a.q_head_begin + t.h) / a.group_size - a.kv_head_begin;
  t.table = a.block_tables + a.table_offset[t.first];
  t.max_ctx = a.ctx_len[t.first + t.nrows - 1];
  return t;
}

// grid (tiles, heads), kWarps warps; warp w owns query rows [w * kRowsPerWarp, +kRowsPerWarp) of
// the tile. Shared memory: Q [kPrefillTileRows][hd], K [kKvTile][hd + 1] (padded: lane j reads
// row j without bank conflicts), V [kKvTile][hd].
template <int kPerLane, typename KV>
__global__ void __launch_bounds__(kWarps * 32)
    FlashPrefillKernel(AttentionArgs a, const int32_t* tile_first_row, const int32_t* tile_rows) {
  TPSERVE_DYNAMIC_SHARED(float, smem);
  const KV* k_cache = static_cast<const KV*>(a.k_cache);
  const KV* v_cache = static_cast<const KV*>(a.v_cache);
  const int64_t hd = a.hd;
  float* qs = smem;
  float* ks = qs + kPrefillTileRows * hd;
  float* vs = ks + kKvTile * (hd + 1);

  const auto [first, h, kvh, nrows, table, max_ctx] = TileOf(a, tile_first_row, tile_rows);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  for (int64_t i = threadIdx.x; i < kPrefillTileRows * hd; i += blockDim.x) {
    const int64_t r = i / hd, d = i % hd;
    qs[i] = r < nrows ? ActLoad(a.q, ((first + r) * a.heads + h) * hd + d, a.act_bf16) : 0.0f;
  }

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kPerLane];
  int32_t row_ctx[kRowsPerWarp];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp * kRowsPerWarp + rr;
    row_ctx[rr] = r < nrows ? a.ctx_len[first + r] : 0;
    m[rr] = -INFINITY;
    l[rr] = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[rr][i] = 0.0f;
  }

  for (int32_t kv0 = 0; kv0 < max_ctx; kv0 += kKvTile) {
    __syncthreads();  // previous tile fully consumed (and Q staged, the first time)
    for (int64_t i = threadIdx.x; i < kKvTile * hd; i += blockDim.x) {
      const int64_t j = i / hd, d = i % hd, p = kv0 + j;
      float kv = 0.0f, vv = 0.0f;
      if (p < max_ctx) {
        const int64_t row = KvRow(a, table, p, kvh);
        kv = Ld(k_cache, row + d);
        vv = Ld(v_cache, row + d);
      }
      ks[j * (hd + 1) + d] = kv;
      vs[j * hd + d] = vv;
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      if (r >= nrows) continue;  // warp-uniform
      const int32_t p = kv0 + lane;
      float s = -INFINITY;
      if (p < row_ctx[rr]) {
        float dot = 0.0f;
        const float* qr = qs + r * hd;
        const float* kr = ks + lane * (hd + 1);
        for (int64_t d = 0; d < hd; ++d) dot += qr[d] * kr[d];
        s = dot * a.scale;
      }
      const float tile_max = WarpMax(s);
      if (tile_max == -INFINITY) continue;  // whole tile beyond this row (warp-uniform)
      const float m_new = fmaxf(m[rr], tile_max);
      const float alpha = expf(m[rr] - m_new);
      const float e = s == -INFINITY ? 0.0f : expf(s - m_new);
      l[rr] = l[rr] * alpha + WarpSum(e);
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) acc[rr][i] *= alpha;
      for (int j = 0; j < kKvTile; ++j) {
        const float ej = __shfl_sync(0xffffffffu, e, j);
        if (ej == 0.0f) continue;  // uniform across the warp
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int64_t d = lane + 32 * i;
          if (d < hd) acc[rr][i] += ej * vs[j * hd + d];
        }
      }
      m[rr] = m_new;
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp * kRowsPerWarp + rr;
    if (r >= nrows) continue;
    const int64_t out_base = ((first + r) * a.heads + h) * hd;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < hd) ActStore(a.out, out_base + d, acc[rr][i] / l[rr], a.act_bf16);
    }
  }
}

// ---- prefill on the tensor cores ----
// A block takes kTensorCoreTileRows query rows of one sequence and one query head (4 warps, 16
// rows each) and walks the sequence's positions kTcKv at a time: K and V staged in shared memory
// as they are in the pool (fp16), S = (scale Q) Kᵀ by WMMA (fp16 in, fp32 out) into shared memory,
// the online softmax on S in fp32 (a lane pair per row), P = exp(S - m) rounded to fp16, and O += P
// V by WMMA with O kept in shared memory in fp32 (WMMA's register layout is unspecified, so the
// per-row rescaling by exp(m_old - m_new) happens there). The row sums add the rounded
// probabilities, so each output row is a weighted mean of V with the weights actually applied.
// A warp does nothing for a KV tile none of its rows can see, and computes only the 16-position
// column groups some of its rows see. Every row's arithmetic is the same whichever tile it lands
// in (all start at position 0 in steps of kTcKv), so a request's numbers do not depend on how
// its prompt was chunked or batched.
constexpr int kTcWarps = kTensorCoreTileRows / 16;
constexpr int kTcKv = 64;  // positions per K/V tile
static_assert(kTensorCoreTileRows == 64, "4 warps of 16 rows");

// Shared memory, in bytes from the (128-byte aligned) start; every tile 32-byte aligned, rows
// padded (against bank conflicts) by 16 bytes while keeping WMMA's 16-byte ldm multiple.
struct TcLayout {
  int64_t ldh, lds, ldp, ldo;       // row pitch of Q/K/V (halves), S (floats), P, O
  int64_t q, k, v, s, p, o, bytes;  // offsets
};
__host__ __device__ inline TcLayout MakeTcLayout(int64_t hd) {
  TcLayout t;
  t.ldh = hd + 8;
  t.lds = kTcKv + 4;
  t.ldp = kTcKv + 8;
  t.ldo = hd + 4;
  t.q = 0;
  t.k = t.q + kTensorCoreTileRows * t.ldh * 2;
  t.v = t.k + kTcKv * t.ldh * 2;
  t.s = t.v + kTcKv * t.ldh * 2;
  t.p = t.s + kTensorCoreTileRows * t.lds * 4;
  t.o = t.p + kTensorCoreTileRows * t.ldp * 2;
  t.bytes = t.o + kTensorCoreTileRows * t.ldo * 4;
  return t;
}

struct alignas(16) Chunk16 {  // 8 halves
  uint32_t w[4];
};

// One warp's 16x16 fp32 tile in shared memory (row-major, ld_c), c = [c +] sum over `steps` of
// A_k B_k: A_k the 16x16 fp16 tile at a + k a_step (row-major, lda), B_k at b + k b_step (ldb,
// LayoutB). The accumulation runs on the tensor cores in fp32.
template <typename LayoutB>
__device__ __forceinline__ void WarpTileMma(float* c, int64_t ld_c, bool accumulate,
                                            const __half* a, int64_t lda, int64_t a_step,
                                            const __half* b, int64_t ldb, int64_t b_step,
                                            int64_t steps) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  if (accumulate) {
    wmma::load_matrix_sync(acc, c, static_cast<unsigned>(ld_c), wmma::mem_row_major);
  } else {
    wmma::fill_fragment(acc, 0.0f);
  }
  for (int64_t k = 0; k < steps; ++k) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a_frag;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, LayoutB> b_frag;
    wmma::load_matrix_sync(a_frag, a + k * a_step, static_cast<unsigned>(lda));
    wmma::load_matrix_sync(b_frag, b + k * b_step, static_cast<unsigned>(ldb));
    wmma::mma_sync(acc, a_frag, b_frag, acc);
  }
  wmma::store_matrix_sync(c, acc, static_cast<unsigned>(ld_c), wmma::mem_row_major);
}

__global__ void __launch_bounds__(kTcWarps * 32)
    TensorCorePrefillKernel(AttentionArgs a, const int32_t* tile_first_row,
                            const int32_t* tile_rows) {
  TPSERVE_DYNAMIC_SHARED(float, smem);
  const int64_t hd = a.hd;
  const TcLayout L = MakeTcLayout(hd);
  unsigned char* base = reinterpret_cast<unsigned char*>(smem);
  __half* qs = reinterpret_cast<__half*>(base + L.q);
  __half* ks = reinterpret_cast<__half*>(base + L.k);
  __half* vs = reinterpret_cast<__half*>(base + L.v);
  float* ss = reinterpret_cast<float*>(base + L.s);
  __half* ps = reinterpret_cast<__half*>(base + L.p);
  float* os = reinterpret_cast<float*>(base + L.o);
  const __half* k_cache = static_cast<const __half*>(a.k_cache);
  const __half* v_cache = static_cast<const __half*>(a.v_cache);

  const auto [first, h, kvh, nrows, table, max_ctx] = TileOf(a, tile_first_row, tile_rows);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  for (int64_t i = threadIdx.x; i < kTensorCoreTileRows * hd; i += blockDim.x) {
    const int64_t r = i / hd, d = i % hd;
    // Scaled before the rounding to fp16 (the scores come out scaled): 1/sqrt(hd) of the range
    // a large query would need.
    qs[r * L.ldh + d] = __float2half_rn(
        r < nrows ? ActLoad(a.q, ((first + r) * a.heads + h) * hd + d, a.act_bf16) * a.scale
                  : 0.0f);
    os[r * L.ldo + d] = 0.0f;
  }

  // Lanes 2j and 2j+1 keep the softmax state of the warp's row j, each over every other column.
  const int row0 = warp * 16, my_row = row0 + lane / 2, odd = lane % 2;
  const int32_t my_ctx = my_row < nrows ? a.ctx_len[first + my_row] : 0;
  const int32_t warp_ctx =
      row0 < nrows ? a.ctx_len[first + (row0 + 15 < nrows ? row0 + 15 : nrows - 1)] : 0;
  float m = -INFINITY, l = 0.0f;
  const int64_t chunks = hd / 8;

  for (int32_t kv0 = 0; kv0 < max_ctx; kv0 += kTcKv) {
    __syncthreads();  // the previous tile fully consumed (and Q staged, the first time)
    for (int64_t i = threadIdx.x; i < kTcKv * chunks; i += blockDim.x) {
      const int64_t j = i / chunks, c = i % chunks, p = kv0 + j;
      Chunk16 kc{}, vc{};
      if (p < max_ctx) {
        const int64_t row = KvRow(a, table, p, kvh);
        kc = *reinterpret_cast<const Chunk16*>(k_cache + row + 8 * c);
        vc = *reinterpret_cast<const Chunk16*>(v_cache + row + 8 * c);
      }
      *reinterpret_cast<Chunk16*>(ks + j * L.ldh + 8 * c) = kc;
      *reinterpret_cast<Chunk16*>(vs + j * L.ldh + 8 * c) = vc;
    }
    __syncthreads();
    if (kv0 >= warp_ctx) continue;  // warp-uniform: no row of this warp sees the tile

    // S = Q Kᵀ over the 16-position groups some row of the warp sees.
    const int seen = (warp_ctx - kv0 + 15) / 16, groups = seen < kTcKv / 16 ? seen : kTcKv / 16;
    for (int n = 0; n < groups; ++n) {  // Kᵀ: K's rows read as columns
      WarpTileMma<nvcuda::wmma::col_major>(ss + row0 * L.lds + 16 * n, L.lds, false,
                                           qs + row0 * L.ldh, L.ldh, 16, ks + 16 * n * L.ldh, L.ldh,
                                           16, hd / 16);
    }
    __syncwarp();

    // Online softmax of the row's visible positions; P of the others (and of rows past the
    // tile's) is 0, so the P V product below may run over whole groups.
    const float* srow = ss + my_row * L.lds;
    __half* prow = ps + my_row * L.ldp;
    float tile_max = -INFINITY;
    for (int c = odd; c < kTcKv; c += 2) {
      if (kv0 + c < my_ctx) tile_max = fmaxf(tile_max, srow[c]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_new = fmaxf(m, tile_max);
    float sum = 0.0f;
    for (int c = odd; c < kTcKv; c += 2) {
      __half pv = __float2half_rn(0.0f);
      if (kv0 + c < my_ctx) {
        pv = __float2half_rn(expf(srow[c] - m_new));
        sum += __half2float(pv);
      }
      prow[c] = pv;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    if (tile_max != -INFINITY) {  // the row sees something here (m_new is finite)
      const float alpha = m == -INFINITY ? 0.0f : expf(m - m_new);  // O and l are 0 at first
      l = l * alpha + sum;
      m = m_new;
      if (alpha != 1.0f) {
        for (int64_t d = odd; d < hd; d += 2) os[my_row * L.ldo + d] *= alpha;
      }
    }
    __syncwarp();

    // O += P V over the same groups.
    for (int64_t j = 0; j < hd / 16; ++j) {
      WarpTileMma<nvcuda::wmma::row_major>(os + row0 * L.ldo + 16 * j, L.ldo, true,
                                           ps + row0 * L.ldp, L.ldp, 16, vs + 16 * j, L.ldh,
                                           16 * L.ldh, groups);
    }
    __syncwarp();
  }

  // The warp writes its rows out, all lanes along each row (coalesced); row j's sum is with
  // lanes 2j and 2j+1.
  for (int j = 0; j < 16; ++j) {
    const float row_l = __shfl_sync(0xffffffffu, l, 2 * j);
    const int r = row0 + j;
    if (r >= nrows) continue;  // warp-uniform
    const int64_t out_base = ((first + r) * a.heads + h) * hd;
    const float inv = 1.0f / row_l;
    for (int64_t d = lane; d < hd; d += 32) {
      ActStore(a.out, out_base + d, os[r * L.ldo + d] * inv, a.act_bf16);
    }
  }
}

bool LaunchTensorCore(const AttentionArgs& a, const int32_t* first, const int32_t* rows,
                      int64_t tiles, cudaStream_t stream) {
  if (a.hd % 16 != 0 || a.hd > 256 || !a.kv_half) return false;
  const size_t smem = static_cast<size_t>(MakeTcLayout(a.hd).bytes);
  static std::atomic<uint64_t> configured{0};  // > 48 KiB, for the largest head size
  if (!OptInSharedMemory(reinterpret_cast<const void*>(TensorCorePrefillKernel),
                         static_cast<int>(MakeTcLayout(256).bytes), &configured)) {
    return false;
  }
  dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(a.heads));
  TPSERVE_LAUNCH(TensorCorePrefillKernel, (grid, kTcWarps * 32, smem, stream), a, first, rows);
  return true;
}

template <int kPerLane, typename KV>
bool LaunchFlash(const AttentionArgs& a, const int32_t* first, const int32_t* rows, int64_t tiles,
                 cudaStream_t stream) {
  const size_t smem =
      sizeof(float) * (kPrefillTileRows * a.hd + kKvTile * (a.hd + 1) + kKvTile * a.hd);
  void (*prefill_kernel)(AttentionArgs, const int32_t*, const int32_t*) =
      FlashPrefillKernel<kPerLane, KV>;
  static std::atomic<uint64_t> configured{0};  // > 48 KiB for the instantiation's largest hd
  if (!OptInSharedMemory(reinterpret_cast<const void*>(prefill_kernel),
                         static_cast<int>(sizeof(float) * (kPrefillTileRows * 32 * kPerLane +
                                                           kKvTile * (32 * kPerLane + 1) +
                                                           kKvTile * 32 * kPerLane)),
                         &configured)) {
    return false;
  }
  dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(a.heads));
  TPSERVE_LAUNCH(prefill_kernel, (grid, kWarps * 32, smem, stream), a, first, rows);
  return true;
}

template <typename KV>
void LaunchDecode(const AttentionArgs& a, const DecodeSplit& split, cudaStream_t stream) {
  dim3 grid(static_cast<unsigned>(a.heads), static_cast<unsigned>(a.num_tokens),
            static_cast<unsigned>(split.splits));
  void (*decode_kernel)(AttentionArgs, DecodeSplit) = a.hd <= 64    ? PagedDecodeKernel<2, KV>
                                                      : a.hd <= 128 ? PagedDecodeKernel<4, KV>
                                                                    : PagedDecodeKernel<8, KV>;
  TPSERVE_LAUNCH(decode_kernel, (grid, kDecodeWarps * 32, 0, stream), a, split);
  if (split.partials != nullptr) {
    dim3 rows(static_cast<unsigned>(a.heads), static_cast<unsigned>(a.num_tokens));
    TPSERVE_LAUNCH(CombineDecodeChunks, (rows, 32, 0, stream), a, split);
  }
}

template <typename KV>
bool LaunchPrefill(const AttentionArgs& a, const int32_t* first, const int32_t* rows, int64_t tiles,
                   cudaStream_t stream) {
  if (a.hd <= 64) return LaunchFlash<2, KV>(a, first, rows, tiles, stream);
  if (a.hd <= 128) return LaunchFlash<4, KV>(a, first, rows, tiles, stream);
  if (a.hd <= 256) return LaunchFlash<8, KV>(a, first, rows, tiles, stream);
  return false;
}

}  // namespace

void LaunchPagedDecodeAttention(const AttentionArgs& a, const DecodeSplit& split,
                                cudaStream_t stream) {
  if (a.num_tokens == 0 || a.heads == 0) return;
  if (a.kv_half) {
    LaunchDecode<__half>(a, split, stream);
  } else {
    LaunchDecode<float>(a, split, stream);
  }
}

bool TensorCorePrefillApplies(int64_t hd, bool kv_half) {
  return kv_half && hd % 16 == 0 && hd <= 256;
}

bool LaunchTensorCorePrefillAttention(const AttentionArgs& a, const int32_t* tile_first_row,
                                      const int32_t* tile_rows, int64_t num_tiles,
                                      cudaStream_t stream) {
  if (num_tiles == 0 || a.heads == 0) return true;
  return LaunchTensorCore(a, tile_first_row, tile_rows, num_tiles, stream);
}

bool LaunchFlashPrefillAttention(const AttentionArgs& a, const int32_t* tile_first_row,
                                 const int32_t* tile_rows, int64_t num_tiles, cudaStream_t stream) {
  if (num_tiles == 0 || a.heads == 0) return true;
  return a.kv_half ? LaunchPrefill<__half>(a, tile_first_row, tile_rows, num_tiles, stream)
                   : LaunchPrefill<float>(a, tile_first_row, tile_rows, num_tiles, stream);
}

}  // namespace tpserve::cuda
