#include "worker/service/logits_processing.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "worker/backend/cpu/vec_math.h"

namespace tpserve {
namespace {

absl::Status CheckId(int32_t id, int64_t vocab_size, const char* field) {
  if (id < 0 || id >= vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": token ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateAdjustments(const LogitsAdjustments& adj, int64_t vocab_size) {
  if (!std::isfinite(adj.repetition_penalty) || adj.repetition_penalty <= 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("repetition_penalty must be > 0 (1 = off), got ", adj.repetition_penalty));
  }
  if (!std::isfinite(adj.presence_penalty) || !std::isfinite(adj.frequency_penalty)) {
    return absl::InvalidArgumentError("presence_penalty and frequency_penalty must be finite");
  }
  for (int32_t t : adj.penalty_tokens) {
    if (auto st = CheckId(t, vocab_size, "penalty_tokens"); !st.ok()) return st;
  }
  for (const auto& [t, bias] : adj.logit_bias) {
    if (auto st = CheckId(t, vocab_size, "logit_bias"); !st.ok()) return st;
    if (std::isnan(bias)) {
      return absl::InvalidArgumentError(absl::StrCat("logit_bias: token ", t, " has a NaN bias"));
    }
  }
  for (int32_t t : adj.suppressed_token_ids) {
    if (auto st = CheckId(t, vocab_size, "suppressed_token_ids"); !st.ok()) return st;
  }
  return absl::OkStatus();
}

void ApplyAdjustments(const LogitsAdjustments& adj, std::span<float> logits) {
  if (!adj.penalty_tokens.empty() && adj.penalties_active()) {
    std::unordered_map<int32_t, int> counts;
    for (int32_t t : adj.penalty_tokens) ++counts[t];
    for (const auto& [t, n] : counts) {
      float& l = logits[t];
      if (adj.repetition_penalty != 1.0f) {
        l = l > 0.0f ? l / adj.repetition_penalty : l * adj.repetition_penalty;
      }
      l -= adj.presence_penalty + adj.frequency_penalty * static_cast<float>(n);
    }
  }
  for (const auto& [t, bias] : adj.logit_bias) logits[t] += bias;
  for (int32_t t : adj.suppressed_token_ids) {
    logits[t] = -std::numeric_limits<float>::infinity();
  }
}

TokenLogprobs ComputeLogprobs(std::span<const float> logits, int32_t token, int top_n) {
  // log Z = max + log(sum exp(l - max)): the exponentials in fp32 (one vector pass), their sum
  // in double; log-probs come out in fp32, so Z's ~1e-7 relative error is below their rounding.
  const int64_t V = static_cast<int64_t>(logits.size());
  float max = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 vmax = _mm512_set1_ps(max);
  for (; i + 16 <= V; i += 16) {  // max_ps returns its second operand on NaN: NaNs do not win
    vmax = _mm512_max_ps(_mm512_loadu_ps(logits.data() + i), vmax);
  }
  max = _mm512_reduce_max_ps(vmax);
#endif
  for (; i < V; ++i) max = std::max(max, logits[i]);  // NaNs do not win (std::max keeps the first)
  double sum = 0.0;
  i = 0;
#if defined(__AVX512F__)
  if (std::isfinite(max)) {
    const __m512 m = _mm512_set1_ps(max);
    for (; i + 16 <= V; i += 16) {
      const __m512 l = _mm512_loadu_ps(logits.data() + i);
      // exp(-inf) is 0 (Exp512 alone would clamp it to e^-87).
      const __mmask16 finite = _mm512_cmp_ps_mask(l, _mm512_set1_ps(-INFINITY), _CMP_NEQ_UQ);
      const __m512 e = _mm512_maskz_mov_ps(finite, Exp512(_mm512_sub_ps(l, m)));
      sum += _mm512_reduce_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(e))) +
             _mm512_reduce_add_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
  }
#endif
  for (; i < V; ++i) sum += std::exp(static_cast<double>(logits[i]) - max);
  const double log_z = max + std::log(sum);
  TokenLogprobs out;
  out.logprob = static_cast<float>(logits[token] - log_z);
  const int64_t n = std::clamp<int64_t>(top_n, 0, V);
  if (n > 0) {
    // The n largest (ties: lower id first) in one pass: a sorted buffer of the best so far; a
    // logit not above the n-th best is rejected by one compare (ids come in increasing order, so
    // an equal logit later never outranks the one kept).
    std::vector<int32_t> best;
    best.reserve(n + 1);
    auto before = [&](int32_t a, int32_t b) {
      return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
    };
    auto offer = [&](int32_t t) {
      if (static_cast<int64_t>(best.size()) == n && !(logits[t] > logits[best.back()])) return;
      best.insert(std::upper_bound(best.begin(), best.end(), t, before), t);
      if (static_cast<int64_t>(best.size()) > n) best.pop_back();
    };
    int32_t t = 0;
#if defined(__AVX512F__)
    for (; t + 16 <= V; t += 16) {  // 16 at a time against the n-th best so far
      const float bar = static_cast<int64_t>(best.size()) == n
                            ? logits[best.back()]
                            : -std::numeric_limits<float>::infinity();
      __mmask16 above =
          _mm512_cmp_ps_mask(_mm512_loadu_ps(logits.data() + t), _mm512_set1_ps(bar), _CMP_GT_OQ);
      if (static_cast<int64_t>(best.size()) < n) above = 0xFFFF;
      for (; above != 0; above &= above - 1) offer(t + __builtin_ctz(above));
    }
#endif
    for (; t < V; ++t) offer(t);
    for (int32_t id : best) {
      out.top_ids.push_back(id);
      out.top_logprobs.push_back(static_cast<float>(logits[id] - log_z));
    }
  }
  return out;
}

}  // namespace tpserve
