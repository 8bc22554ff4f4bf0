// Causal attention over the paged KV cache (fp32 or fp16, read as fp32): a decode kernel (one query
// row per block) and a flash-style prefill kernel (query tiles against K/V tiles staged in shared
// memory, online softmax). Both read K/V through the sequence's block table: slot(p) = table[p /
// block_size] * block_size + p % block_size, K row = (slot * kv_heads + kvh) * hd.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "worker/backend/cuda/cuda_kernels.h"
#include "worker/backend/cuda/cuda_launch.h"

namespace tpserve::cuda {
namespace {

constexpr int kWarps = 4;
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

__device__ __forceinline__ float Ld(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float Ld(const __half* p, int64_t i) { return __half2float(p[i]); }

__device__ __forceinline__ int64_t KvRow(const AttentionArgs& a, const int32_t* table, int64_t p,
                                         int64_t kvh) {
  const int64_t slot =
      static_cast<int64_t>(table[p / a.block_size]) * a.block_size + p % a.block_size;
  return (slot * a.kv_heads + kvh) * a.hd;
}

// grid (heads, rows), kWarps warps. Lane owns dims lane + 32 i, i < kPerLane. The heads of a row
// are neighbours in launch order: the group_size query heads that read one KV head run together,
// so the KV rows come from HBM once and from L2 for the others (with rows outermost, a KV head's
// rows were read again only after a sweep over the whole batch, long evicted at batch 64).
template <int kPerLane, typename KV>
__global__ void __launch_bounds__(kWarps * 32) PagedDecodeKernel(AttentionArgs a) {
  const KV* k_cache = static_cast<const KV*>(a.k_cache);
  const KV* v_cache = static_cast<const KV*>(a.v_cache);
  const int64_t h = blockIdx.x, t = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t hd = a.hd;
  float* out = a.out + (t * a.heads + h) * hd;
  __nv_bfloat16* out_bf16 =
      a.out_bf16 != nullptr ? reinterpret_cast<__nv_bfloat16*>(a.out_bf16) + (t * a.heads + h) * hd
                            : nullptr;
  const int32_t ctx = a.ctx_len[t];
  if (ctx == 0) {
    for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
      out[d] = 0.0f;
      if (out_bf16 != nullptr) out_bf16[d] = __float2bfloat16_rn(0.0f);
    }
    return;
  }
  const int64_t kvh = (a.q_head_begin + h) / a.group_size - a.kv_head_begin;
  const int32_t* table = a.block_tables + a.table_offset[t];
  const float* q = a.q + (t * a.heads + h) * hd;

  float qv[kPerLane], acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    qv[i] = d < hd ? q[d] : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t p = warp; p < ctx; p += kWarps) {
    const int64_t row = KvRow(a, table, p, kvh);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < hd) s += qv[i] * Ld(k_cache, row + d);
    }
    s = WarpSum(s) * a.scale;
    const float m_new = fmaxf(m, s);
    const float alpha = expf(m - m_new);  // 0 on the first position (m = -inf)
    const float e = expf(s - m_new);
    l = l * alpha + e;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      acc[i] = acc[i] * alpha + (d < hd ? e * Ld(v_cache, row + d) : 0.0f);
    }
    m = m_new;
  }

  // Merge the warps' partial softmax states.
  __shared__ float sm_m[kWarps], sm_l[kWarps];
  __shared__ float sm_acc[kWarps][32 * kPerLane];
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) sm_acc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float big = -INFINITY;
  for (int w = 0; w < kWarps; ++w) big = fmaxf(big, sm_m[w]);
  float total = 0.0f, wscale[kWarps];
  for (int w = 0; w < kWarps; ++w) {
    wscale[w] = sm_m[w] == -INFINITY ? 0.0f : expf(sm_m[w] - big);
    total += sm_l[w] * wscale[w];
  }
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < kWarps; ++w) o += sm_acc[w][d] * wscale[w];
    const float v = o / total;
    out[d] = v;
    if (out_bf16 != nullptr) out_bf16[d] = __float2bfloat16_rn(v);
  }
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

  const int64_t first = tile_first_row[blockIdx.x];
  const int nrows = tile_rows[blockIdx.x];
  const int64_t h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t kvh = (a.q_head_begin + h) / a.group_size - a.kv_head_begin;
  const int32_t* table = a.block_tables + a.table_offset[first];
  const int32_t max_ctx = a.ctx_len[first + nrows - 1];  // rows are consecutive positions

  for (int64_t i = threadIdx.x; i < kPrefillTileRows * hd; i += blockDim.x) {
    const int64_t r = i / hd, d = i % hd;
    qs[i] = r < nrows ? a.q[((first + r) * a.heads + h) * hd + d] : 0.0f;
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
    float* out = a.out + ((first + r) * a.heads + h) * hd;
    __nv_bfloat16* out_bf16 = a.out_bf16 != nullptr ? reinterpret_cast<__nv_bfloat16*>(a.out_bf16) +
                                                          ((first + r) * a.heads + h) * hd
                                                    : nullptr;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < hd) {
        const float v = acc[rr][i] / l[rr];
        out[d] = v;
        if (out_bf16 != nullptr) out_bf16[d] = __float2bfloat16_rn(v);
      }
    }
  }
}

template <int kPerLane, typename KV>
bool LaunchFlash(const AttentionArgs& a, const int32_t* first, const int32_t* rows, int64_t tiles,
                 cudaStream_t stream) {
  const size_t smem =
      sizeof(float) * (kPrefillTileRows * a.hd + kKvTile * (a.hd + 1) + kKvTile * a.hd);
  static bool configured = false;  // opt in to > 48 KiB once per instantiation
  if (!configured) {
    if (cudaFuncSetAttribute(
            FlashPrefillKernel<kPerLane, KV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
            static_cast<int>(sizeof(float) *
                             (kPrefillTileRows * 32 * kPerLane + kKvTile * (32 * kPerLane + 1) +
                              kKvTile * 32 * kPerLane))) != cudaSuccess) {
      return false;
    }
    configured = true;
  }
  dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(a.heads));
  void (*prefill_kernel)(AttentionArgs, const int32_t*, const int32_t*) =
      FlashPrefillKernel<kPerLane, KV>;
  TPSERVE_LAUNCH(prefill_kernel, (grid, kWarps * 32, smem, stream), a, first, rows);
  return true;
}

template <typename KV>
void LaunchDecode(const AttentionArgs& a, cudaStream_t stream) {
  dim3 grid(static_cast<unsigned>(a.heads), static_cast<unsigned>(a.num_tokens));
  void (*decode_kernel)(AttentionArgs) = a.hd <= 64    ? PagedDecodeKernel<2, KV>
                                         : a.hd <= 128 ? PagedDecodeKernel<4, KV>
                                                       : PagedDecodeKernel<8, KV>;
  TPSERVE_LAUNCH(decode_kernel, (grid, kWarps * 32, 0, stream), a);
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

void LaunchPagedDecodeAttention(const AttentionArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0 || a.heads == 0) return;
  if (a.kv_half) {
    LaunchDecode<__half>(a, stream);
  } else {
    LaunchDecode<float>(a, stream);
  }
}

bool LaunchFlashPrefillAttention(const AttentionArgs& a, const int32_t* tile_first_row,
                                 const int32_t* tile_rows, int64_t num_tiles, cudaStream_t stream) {
  if (num_tiles == 0 || a.heads == 0) return true;
  return a.kv_half ? LaunchPrefill<__half>(a, tile_first_row, tile_rows, num_tiles, stream)
                   : LaunchPrefill<float>(a, tile_first_row, tile_rows, num_tiles, stream);
}

}  // namespace tpserve::cuda
