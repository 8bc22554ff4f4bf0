// KV cache writes and causal attention over the paged cache, on the CPU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "worker/backend/check.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/backend/cpu/vec_math.h"

namespace tpserve {

void CpuBackend::WriteKv(const Tensor& k, const Tensor& v, std::span<const int64_t> slots,
                         const KvLayerView& cache) {
  const int64_t row = cache.kv_heads * cache.head_dim;  // floats per token per layer
  TPSERVE_CHECK(k.shape() == v.shape() && k.numel() == static_cast<int64_t>(slots.size()) * row,
                "WriteKv: k %s, v %s, %zu slots, cache row %lld", k.ShapeString().c_str(),
                v.ShapeString().c_str(), slots.size(), static_cast<long long>(row));
  const int64_t capacity = cache.num_blocks * cache.block_size;
  for (size_t t = 0; t < slots.size(); ++t) {
    TPSERVE_CHECK(slots[t] >= 0 && slots[t] < capacity, "WriteKv: slot %lld of %lld",
                  static_cast<long long>(slots[t]), static_cast<long long>(capacity));
    std::memcpy(cache.k + slots[t] * row, k.data() + t * row, row * sizeof(float));
    std::memcpy(cache.v + slots[t] * row, v.data() + t * row, row * sizeof(float));
  }
}

void CpuBackend::Attention(const Tensor& q, const KvLayerView& cache,
                           std::span<const AttentionSeq> seqs, const AttentionParams& params,
                           Tensor* out) {
  CheckAttentionArgs(q, cache, seqs, *out);
  const int64_t num_tokens = q.dim(0), heads = q.dim(1), hd = q.dim(2);
  const int64_t bs = cache.block_size, kv_row = cache.kv_heads * hd;

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

  // One task per (token, KV head): each K and V row is read once for the query heads that
  // share it; positions are walked block by block through the table (no division per
  // position); scores of one head are contiguous, so softmax runs on whole vectors.
  pool_.ParallelFor(num_tokens * groups, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / groups, k = task % groups;
      const int64_t h0 = head_begin[k], h1 = head_begin[k + 1], nh = h1 - h0;
      const int64_t kvh = first_kvh + k;
      float* out_t = out->data() + t * heads * hd;
      if (seq_of[t] < 0) {  // row not claimed by any sequence (padding)
        std::memset(out_t + h0 * hd, 0, nh * hd * sizeof(float));
        continue;
      }
      const AttentionSeq& seq = seqs[seq_of[t]];
      const int64_t ctx = seq.start_pos + (t - seq.token_begin) + 1;  // causal: up to itself
      const int64_t first =
          params.sliding_window > 0 ? std::max<int64_t>(0, ctx - params.sliding_window) : 0;
      const int64_t len = ctx - first;
      const float* q_t = q.data() + t * heads * hd;
      scores.resize(nh * len);
      // Visits the K (or V) rows of positions [first, ctx): fn(position - first, row). Blocks
      // are scattered, so the next block's rows are prefetched while this one is read.
      const auto block_rows = [&](const float* base, int64_t p) {
        return base + (static_cast<int64_t>(seq.block_table[p / bs]) * bs + p % bs) * kv_row +
               kvh * hd;
      };
      const auto for_rows = [&](const float* base, auto&& fn) {
        for (int64_t p = first; p < ctx;) {
          const int64_t run = std::min(bs - p % bs, ctx - p);
          if (p + run < ctx) {
            const float* next = block_rows(base, p + run);
            const int64_t next_run = std::min(bs, ctx - p - run);
            for (int64_t i = 0; i < next_run; ++i) {
              for (int64_t c = 0; c < hd; c += 16) {
                __builtin_prefetch(next + i * kv_row + c);
              }
            }
          }
          const float* row = block_rows(base, p);
          for (int64_t i = 0; i < run; ++i, row += kv_row) fn(p - first + i, row);
          p += run;
        }
      };
      for_rows(cache.k, [&](int64_t i, const float* krow) {
        for (int64_t h = 0; h < nh; ++h)
          scores[h * len + i] = Dot(q_t + (h0 + h) * hd, krow, hd) * params.scale;
      });
      std::memset(out_t + h0 * hd, 0, nh * hd * sizeof(float));
      for (int64_t h = 0; h < nh; ++h) {
        float* s = scores.data() + h * len;
        const float inv_sum = 1.0f / ExpShiftedSum(s, len, MaxOf(s, len));
        for (int64_t i = 0; i < len; ++i) s[i] *= inv_sum;
      }
      for_rows(cache.v, [&](int64_t i, const float* vrow) {
        for (int64_t h = 0; h < nh; ++h) Axpy(scores[h * len + i], vrow, out_t + (h0 + h) * hd, hd);
      });
    }
  });
}

}  // namespace tpserve
