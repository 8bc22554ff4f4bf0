#include "worker/sampling/sampler.h"

#include <algorithm>
#include <cmath>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace tpserve {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

double CounterUniform(uint64_t seed, uint64_t counter) {
  // Two rounds so that nearby (seed, counter) pairs give unrelated outputs.
  const uint64_t bits = SplitMix64(SplitMix64(seed) ^ SplitMix64(counter + 0x632BE59BD9B4E019ull));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

int32_t Argmax(std::span<const float> logits) {
  // Same answer as std::max_element (the first maximum; NaNs never win unless first), with
  // wide compares: the LM head's output is tens of thousands of floats per sequence.
#if defined(__AVX512F__)
  const int64_t n = static_cast<int64_t>(logits.size());
  if (n == 0 || std::isnan(logits[0])) return 0;
  const float* x = logits.data();
  __m512 acc = _mm512_set1_ps(-INFINITY);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    // max_ps returns its second operand when either is NaN: NaN elements leave acc unchanged.
    acc = _mm512_mask_max_ps(acc, m, _mm512_maskz_loadu_ps(m, x + i), acc);
  }
  const __m512 best = _mm512_set1_ps(_mm512_reduce_max_ps(acc));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __mmask16 eq =
        _mm512_mask_cmp_ps_mask(m, _mm512_maskz_loadu_ps(m, x + i), best, _CMP_EQ_OQ);
    if (eq != 0) return static_cast<int32_t>(i + __builtin_ctz(eq));
  }
#endif
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

std::vector<std::pair<int32_t, float>> FilteredDistribution(std::span<const float> logits,
                                                            const SamplingParams& params) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  const double temperature = params.temperature > 0.0f ? params.temperature : 1.0;
  std::vector<std::pair<int32_t, float>> c(vocab);
  for (int32_t i = 0; i < vocab; ++i) c[i] = {i, logits[i]};
  auto more_probable = [](const auto& a, const auto& b) {
    return a.second > b.second || (a.second == b.second && a.first < b.first);
  };
  // top-k on the logits (same order as on probabilities), then sort what is left.
  if (params.top_k > 0 && params.top_k < vocab) {
    std::nth_element(c.begin(), c.begin() + params.top_k, c.end(), more_probable);
    c.resize(params.top_k);
  }
  std::sort(c.begin(), c.end(), more_probable);
  // Softmax over the survivors in double: the excluded tokens do not change the ratios.
  const double max_logit = c.front().second;
  std::vector<double> p(c.size());
  double total = 0.0;
  for (size_t i = 0; i < c.size(); ++i) {
    p[i] = std::exp((c[i].second - max_logit) / temperature);
    total += p[i];
  }
  size_t keep = c.size();
  if (params.top_p < 1.0f) {
    // The nucleus: the shortest prefix whose mass reaches top_p (at least one token).
    double mass = 0.0;
    for (size_t i = 0; i < c.size(); ++i) {
      mass += p[i] / total;
      if (mass >= params.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (params.min_p > 0.0f) {
    const double threshold = params.min_p * p[0];
    size_t n = 1;
    while (n < keep && p[n] >= threshold) ++n;
    keep = n;
  }
  c.resize(keep);
  double kept = 0.0;
  for (size_t i = 0; i < keep; ++i) kept += p[i];
  for (size_t i = 0; i < keep; ++i) c[i].second = static_cast<float>(p[i] / kept);
  return c;
}

int32_t SampleToken(std::span<const float> logits, const SamplingParams& params, uint64_t step) {
  if (params.temperature <= 0.0f || params.top_k == 1) return Argmax(logits);
  const std::vector<std::pair<int32_t, float>> dist = FilteredDistribution(logits, params);
  // Inverse CDF over the filtered distribution, most probable first.
  const double u = CounterUniform(params.seed, step);
  double cum = 0.0;
  for (const auto& [token, prob] : dist) {
    cum += prob;
    if (u < cum) return token;
  }
  return dist.back().first;  // u within rounding of 1
}

}  // namespace tpserve
