#include "worker/sampling/sampler.h"

#include <algorithm>
#include <cmath>

#include "worker/backend/cpu/vec_math.h"

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

int32_t SampleTokenBySorting(std::span<const float> logits, const SamplingParams& params,
                             uint64_t step) {
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

namespace {

// SampleToken without sorting the vocabulary. The logits are counted into kBuckets buckets of
// equal width between the largest and the smallest finite logit, so the descending order of the
// logits is the bucket order, then the order inside a bucket; each bucket's count, probability
// mass and smallest weight are summed as the logits are read. The filters and the draw walk that
// order bucket by bucket and stop in one: only the logits of the few buckets where a cut or the
// draw falls are gathered and sorted. Weights exp((l - max) / T) are fp32, sums double.
constexpr int kBuckets = 2048;
constexpr uint16_t kNoBucket = 0xFFFF;  // NaN logits: never drawn

class BucketedLogits {
 public:
  // False when no logit is finite or one is +inf (the caller falls back to the arg-max).
  bool Build(std::span<const float> logits, float temperature) {
    logits_ = logits;
    const int64_t n = static_cast<int64_t>(logits.size());
    float hi = -INFINITY, lo = INFINITY;
    bool all_finite = true;
    int64_t i = 0;
#if defined(__AVX512F__)
    {
      __m512 vhi = _mm512_set1_ps(-INFINITY), vlo = _mm512_set1_ps(INFINITY);
      const __m512 inf = _mm512_set1_ps(INFINITY);
      for (; i + 16 <= n; i += 16) {
        const __m512 l = _mm512_loadu_ps(logits.data() + i);
        // |l| < inf: false for +-inf and NaN.
        const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_abs_ps(l), inf, _CMP_LT_OQ);
        all_finite &= finite == 0xFFFF;
        vhi = _mm512_mask_max_ps(vhi, finite, vhi, l);
        vlo = _mm512_mask_min_ps(vlo, finite, vlo, l);
      }
      hi = _mm512_reduce_max_ps(vhi);
      lo = _mm512_reduce_min_ps(vlo);
    }
#endif
    for (; i < n; ++i) {
      const float l = logits[i];
      if (std::isfinite(l)) {
        hi = std::max(hi, l);
        lo = std::min(lo, l);
      } else {
        all_finite = false;
      }
    }
    if (!all_finite) {
      for (float l : logits) {
        if (l == INFINITY) return false;  // certain: the arg-max picks the first such token
      }
    }
    if (!(hi > -INFINITY)) return false;
    // (hi - lo overflowing to inf gives scale 0: everything in bucket 0 but the logits whose
    // distance to hi overflows too, which land in the last; the order stays right.)
    const float scale = hi > lo ? (kBuckets - 1) / (hi - lo) : 0.0f;
    const float inv_t = 1.0f / temperature;
    key_.resize(n);
    weight_.resize(n);
    i = 0;
#if defined(__AVX512F__)
    const __m512 vhi = _mm512_set1_ps(hi), vscale = _mm512_set1_ps(scale),
                 vinv = _mm512_set1_ps(inv_t), last = _mm512_set1_ps(kBuckets - 1);
    for (; i + 16 <= n; i += 16) {
      const __m512 d = _mm512_sub_ps(vhi, _mm512_loadu_ps(logits.data() + i));  // >= 0
      // min(NaN, last) is last: NaN and -inf logits are sorted out in the loop below.
      const __m512 k = _mm512_min_ps(_mm512_mul_ps(d, vscale), last);
      _mm512_storeu_ps(weight_.data() + i,
                       Exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), d), vinv)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(key_.data() + i),
                          _mm512_cvtepi32_epi16(_mm512_cvttps_epi32(k)));
    }
#endif
    for (; i < n; ++i) {
      const float d = hi - logits[i];
      // As the vector lanes: past the last bucket, or NaN (inf * 0 when the logits span more
      // than a float), goes to the last one.
      const float k = d * scale;
      key_[i] = k < kBuckets - 1 ? static_cast<uint16_t>(k) : kBuckets - 1;
      weight_[i] = std::exp(-d * inv_t);
    }
    count_.assign(kBuckets, 0);
    mass_.assign(kBuckets, 0.0);
    min_weight_.assign(kBuckets, INFINITY);
    for (i = 0; i < n; ++i) {
      const float l = logits[i];
      if (!all_finite && !std::isfinite(l)) {
        if (std::isnan(l)) {  // no defined probability: never drawn
          key_[i] = kNoBucket;
          continue;
        }
        key_[i] = kBuckets - 1;  // -inf (a suppressed token): last, with no mass
        weight_[i] = 0.0f;
      }
      const uint16_t k = key_[i];
      ++count_[k];
      mass_[k] += weight_[i];
      min_weight_[k] = std::min(min_weight_[k], weight_[i]);
    }
    return true;
  }

  int64_t count(int b) const { return count_[b]; }
  double mass(int b) const { return mass_[b]; }
  float min_weight(int b) const { return min_weight_[b]; }
  float weight(int32_t token) const { return weight_[token]; }

  // The tokens of bucket b, most probable first (ties: lower id first).
  const std::vector<int32_t>& Sorted(int b) {
    sorted_.clear();
    const int64_t n = static_cast<int64_t>(key_.size());
    int64_t i = 0;
#if defined(__AVX512BW__)
    const __m512i want = _mm512_set1_epi16(static_cast<int16_t>(b));
    for (; i + 32 <= n; i += 32) {
      uint32_t hits = _mm512_cmpeq_epi16_mask(
          _mm512_loadu_si512(reinterpret_cast<const void*>(key_.data() + i)), want);
      for (; hits != 0; hits &= hits - 1) {
        sorted_.push_back(static_cast<int32_t>(i + __builtin_ctz(hits)));
      }
    }
#endif
    for (; i < n; ++i) {
      if (key_[i] == b) sorted_.push_back(static_cast<int32_t>(i));
    }
    std::sort(sorted_.begin(), sorted_.end(), [this](int32_t a, int32_t c) {
      return logits_[a] > logits_[c] || (logits_[a] == logits_[c] && a < c);
    });
    return sorted_;
  }

 private:
  std::span<const float> logits_;
  std::vector<uint16_t> key_;
  std::vector<float> weight_;
  std::vector<int64_t> count_;
  std::vector<double> mass_;
  std::vector<float> min_weight_;
  std::vector<int32_t> sorted_;
};

// The tokens still kept, most probable first: all of buckets [0, full), then `tail`, a sorted
// prefix of bucket `full` (empty when full == kBuckets).
struct Kept {
  int full = kBuckets;
  std::vector<int32_t> tail;

  double Mass(const BucketedLogits& b) const {
    double m = 0.0;
    for (int k = 0; k < full; ++k) m += b.mass(k);
    for (int32_t t : tail) m += b.weight(t);
    return m;
  }
};

// Ends `kept` at the first token for which stop(token, weight) holds, keeping that token when
// `inclusive`. skip_whole(bucket) says whether a whole bucket can pass without looking inside;
// passed(bucket) is told of each one that does. Returns whether a stop was found.
template <typename SkipWhole, typename Passed, typename Stop>
bool CutAt(BucketedLogits& b, Kept* kept, bool inclusive, SkipWhole&& skip_whole, Passed&& passed,
           Stop&& stop) {
  auto cut = [&](const std::vector<int32_t>& tokens, int full) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (stop(tokens[i], b.weight(tokens[i]))) {
        std::vector<int32_t> tail(tokens.begin(), tokens.begin() + i + (inclusive ? 1 : 0));
        kept->tail = std::move(tail);
        kept->full = full;
        return true;
      }
    }
    return false;
  };
  for (int k = 0; k < kept->full; ++k) {
    if (b.count(k) == 0) continue;
    if (skip_whole(k)) {
      passed(k);
      continue;
    }
    if (cut(b.Sorted(k), k)) return true;
  }
  const std::vector<int32_t> tail = kept->tail;
  return cut(tail, kept->full);
}

int32_t SampleBucketed(std::span<const float> logits, const SamplingParams& params, uint64_t step) {
  thread_local BucketedLogits b;
  if (!b.Build(logits, params.temperature)) return Argmax(logits);
  Kept kept;
  if (params.top_k > 0) {  // the first top_k tokens
    int64_t seen = 0;
    CutAt(
        b, &kept, true, [&](int k) { return seen + b.count(k) < params.top_k; },
        [&](int k) { seen += b.count(k); }, [&](int32_t, float) { return ++seen == params.top_k; });
  }
  if (params.top_p < 1.0f) {  // the shortest prefix whose mass reaches top_p of the total
    const double target = static_cast<double>(params.top_p) * kept.Mass(b);
    double cum = 0.0;
    CutAt(
        b, &kept, true, [&](int k) { return cum + b.mass(k) < target; },
        [&](int k) { cum += b.mass(k); }, [&](int32_t, float w) { return (cum += w) >= target; });
  }
  if (params.min_p > 0.0f) {  // tokens with p >= min_p * p_max (the top token's weight is 1)
    bool first = true;
    CutAt(
        b, &kept, false, [&](int k) { return b.min_weight(k) >= params.min_p; },
        [&](int) { first = false; },
        [&](int32_t, float w) {
          const bool cut = !first && w < params.min_p;
          first = false;
          return cut;
        });
  }
  // Inverse CDF: the first token whose cumulative weight passes u * (the kept mass).
  const double target = CounterUniform(params.seed, step) * kept.Mass(b);
  double cum = 0.0;
  int32_t token = -1, last = -1;  // last: the latest token walked one by one that has weight
  CutAt(
      b, &kept, true, [&](int k) { return cum + b.mass(k) <= target; },
      [&](int k) { cum += b.mass(k); },
      [&](int32_t t, float w) {
        if (w > 0.0f) last = t;
        if ((cum += w) > target) token = t;
        return token >= 0;
      });
  if (token >= 0) return token;
  // u * mass rounded up to the whole mass: the least probable kept token with weight. A tail is
  // walked one by one (so `last` is it); otherwise it is in the last bucket with mass, which the
  // walk may have passed whole.
  if (kept.tail.empty()) {
    for (int k = kept.full - 1; k >= 0; --k) {
      if (b.mass(k) == 0.0) continue;
      const std::vector<int32_t>& sorted = b.Sorted(k);
      for (auto it = sorted.rbegin(); it != sorted.rend(); ++it) {
        if (b.weight(*it) > 0.0f) return *it;
      }
    }
  }
  return last >= 0 ? last : Argmax(logits);
}

}  // namespace

int32_t SampleToken(std::span<const float> logits, const SamplingParams& params, uint64_t step) {
  if (params.temperature <= 0.0f || params.top_k == 1) return Argmax(logits);
  return SampleBucketed(logits, params, step);
}

}  // namespace tpserve
