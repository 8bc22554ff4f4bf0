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

  // One task per (token, head): scores over the visible positions, softmax, weighted sum of V.
  pool_.ParallelFor(num_tokens * heads, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / heads, h = task % heads;
      float* o = out->data() + (t * heads + h) * hd;
      if (seq_of[t] < 0) {  // row not claimed by any sequence (padding)
        std::memset(o, 0, hd * sizeof(float));
        continue;
      }
      const AttentionSeq& seq = seqs[seq_of[t]];
      const int64_t ctx = seq.start_pos + (t - seq.token_begin) + 1;  // causal: up to itself
      const int64_t first =
          params.sliding_window > 0 ? std::max<int64_t>(0, ctx - params.sliding_window) : 0;
      const int64_t kvh = (params.q_head_begin + h) / params.group_size - params.kv_head_begin;
      const float* qv = q.data() + (t * heads + h) * hd;
      scores.resize(ctx);
      float max_score = -INFINITY;
      for (int64_t p = first; p < ctx; ++p) {
        const int64_t slot = static_cast<int64_t>(seq.block_table[p / bs]) * bs + p % bs;
        scores[p] = Dot(qv, cache.k + slot * kv_row + kvh * hd, hd) * params.scale;
        max_score = std::max(max_score, scores[p]);
      }
      float sum = 0.0f;
      for (int64_t p = first; p < ctx; ++p) {
        scores[p] = std::exp(scores[p] - max_score);
        sum += scores[p];
      }
      std::memset(o, 0, hd * sizeof(float));
      const float inv_sum = 1.0f / sum;
      for (int64_t p = first; p < ctx; ++p) {
        const int64_t slot = static_cast<int64_t>(seq.block_table[p / bs]) * bs + p % bs;
        Axpy(scores[p] * inv_sum, cache.v + slot * kv_row + kvh * hd, o, hd);
      }
    }
  });
}

}  // namespace tpserve
