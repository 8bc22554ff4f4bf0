// Sampling: filters keep exactly what their definitions say, draws follow the filtered
// distribution, and the same (seed, step) gives the same token.
#include "worker/sampling/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <set>

namespace tpserve {
namespace {

// Probabilities 0.5, 0.2, 0.15, 0.1, 0.05 (as logits, permuted so order is not index order).
const std::vector<int32_t> kOrder = {3, 0, 4, 1, 2};  // token of the i-th most probable
const std::vector<double> kProbs = {0.5, 0.2, 0.15, 0.1, 0.05};
std::vector<float> Logits() {
  std::vector<float> l(5);
  for (int i = 0; i < 5; ++i) l[kOrder[i]] = static_cast<float>(std::log(kProbs[i]) + 3.0);
  return l;
}

std::set<int32_t> Tokens(const std::vector<std::pair<int32_t, float>>& d) {
  std::set<int32_t> s;
  for (const auto& [t, p] : d) s.insert(t);
  return s;
}

TEST(Sampler, GreedyIsArgmax) {
  std::mt19937 rng(1);
  std::normal_distribution<float> n;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> l(1000);
    for (float& x : l) x = n(rng);
    const int32_t best = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    EXPECT_EQ(SampleToken(l, SamplingParams{}, trial), best);
    EXPECT_EQ(SampleToken(l, SamplingParams{.temperature = 0.7f, .top_k = 1, .seed = 5}, trial),
              best);
  }
}

TEST(Sampler, ArgmaxIsStdMaxElementOnTiesNansAndTails) {
  std::mt19937 rng(2);
  std::uniform_int_distribution<int> small(-3, 3);
  for (int n : {1, 5, 16, 17, 33, 1000, 49152}) {
    for (int trial = 0; trial < 10; ++trial) {
      std::vector<float> l(n);
      for (float& x : l) x = static_cast<float>(small(rng));  // many ties
      if (trial % 3 == 1) l[rng() % n] = NAN;                 // a NaN anywhere
      if (trial % 3 == 2) l[0] = NAN;                         // a NaN first: max_element gives 0
      if (trial == 9) std::fill(l.begin(), l.end(), -INFINITY);
      const int32_t expected =
          static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
      EXPECT_EQ(Argmax(l), expected) << "n " << n << " trial " << trial;
    }
  }
}

TEST(Sampler, TemperatureOnlyIsSoftmax) {
  const auto d = FilteredDistribution(Logits(), SamplingParams{.temperature = 1.0f});
  ASSERT_EQ(d.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(d[i].first, kOrder[i]);
    EXPECT_NEAR(d[i].second, kProbs[i], 1e-6);
  }
  // T = 0.5 squares the probabilities (then renormalises).
  const auto d2 = FilteredDistribution(Logits(), SamplingParams{.temperature = 0.5f});
  double z = 0;
  for (double p : kProbs) z += p * p;
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(d2[i].second, kProbs[i] * kProbs[i] / z, 1e-6);
}

TEST(Sampler, TopKKeepsTheKMostProbable) {
  const auto d = FilteredDistribution(Logits(), SamplingParams{.temperature = 1.0f, .top_k = 2});
  EXPECT_EQ(Tokens(d), (std::set<int32_t>{kOrder[0], kOrder[1]}));
  EXPECT_NEAR(d[0].second, 0.5 / 0.7, 1e-6);
  EXPECT_NEAR(d[1].second, 0.2 / 0.7, 1e-6);
}

TEST(Sampler, TopPKeepsExactlyTheNucleus) {
  // Cumulative mass 0.5, 0.7, 0.85, 0.95, 1: the nucleus of 0.8 is the first three tokens, of 0.7
  // the first two, of 0.3 the first one.
  auto d = FilteredDistribution(Logits(), SamplingParams{.temperature = 1.0f, .top_p = 0.8f});
  EXPECT_EQ(Tokens(d), (std::set<int32_t>{kOrder[0], kOrder[1], kOrder[2]}));
  EXPECT_NEAR(d[2].second, 0.15 / 0.85, 1e-6);
  d = FilteredDistribution(Logits(), SamplingParams{.temperature = 1.0f, .top_p = 0.69f});
  EXPECT_EQ(Tokens(d), (std::set<int32_t>{kOrder[0], kOrder[1]}));
  d = FilteredDistribution(Logits(), SamplingParams{.temperature = 1.0f, .top_p = 0.3f});
  EXPECT_EQ(Tokens(d), (std::set<int32_t>{kOrder[0]}));
  EXPECT_FLOAT_EQ(d[0].second, 1.0f);
}

TEST(Sampler, MinPKeepsTokensAboveAFractionOfTheMax) {
  // p >= 0.25 * 0.5 = 0.125 keeps 0.5, 0.2, 0.15.
  const auto d =
      FilteredDistribution(Logits(), SamplingParams{.temperature = 1.0f, .min_p = 0.25f});
  EXPECT_EQ(Tokens(d), (std::set<int32_t>{kOrder[0], kOrder[1], kOrder[2]}));
}

TEST(Sampler, DrawFrequenciesFollowTheFilteredDistribution) {
  const SamplingParams params{.temperature = 1.0f, .top_p = 0.9f, .seed = 42};
  // Nucleus of 0.9: 0.5, 0.2, 0.15, 0.1 (cumulative 0.95), renormalised by 0.95.
  const int draws = 40000;
  std::map<int32_t, int> count;
  for (int step = 0; step < draws; ++step) ++count[SampleToken(Logits(), params, step)];
  EXPECT_EQ(count.count(kOrder[4]), 0u) << "token outside the nucleus drawn";
  for (int i = 0; i < 4; ++i) {
    const double p = kProbs[i] / 0.95;
    const double sigma = std::sqrt(p * (1 - p) / draws);
    EXPECT_NEAR(count[kOrder[i]] / double(draws), p, 5 * sigma) << "token " << kOrder[i];
  }
}

TEST(Sampler, SameSeedAndStepSameToken) {
  std::vector<float> l(200);
  for (int i = 0; i < 200; ++i) l[i] = std::sin(i * 0.37f) * 2;
  const SamplingParams a{.temperature = 1.0f, .seed = 7}, b{.temperature = 1.0f, .seed = 8};
  int differ = 0;
  for (uint64_t step = 0; step < 64; ++step) {
    EXPECT_EQ(SampleToken(l, a, step), SampleToken(l, a, step));
    differ += SampleToken(l, a, step) != SampleToken(l, b, step);
  }
  EXPECT_GT(differ, 32);  // another seed gives another sequence
}

TEST(Sampler, CounterUniformIsUniform) {
  // Mean and variance of 1e5 draws over consecutive counters and seeds.
  double sum = 0, sq = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const double u = CounterUniform(i % 7, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    sq += u * u;
  }
  EXPECT_NEAR(sum / n, 0.5, 5 * std::sqrt(1.0 / 12 / n));
  EXPECT_NEAR(sq / n - (sum / n) * (sum / n), 1.0 / 12, 0.002);
}

}  // namespace
}  // namespace tpserve

namespace tpserve {
namespace {

// SampleToken (buckets, fp32 weights) against SampleTokenBySorting (the full sort, double
// weights) over many logit shapes and filter settings: the same token in every case. (They may
// differ where a cumulative sum straddles the uniform number within fp32 rounding; none of these
// fixed cases does, so any difference here is a bug.)
TEST(Sampler, BucketedDrawEqualsTheSortedDraw) {
  std::mt19937 rng(11);
  int cases = 0, same = 0;
  for (int v : {5, 17, 1000, 49152}) {
    for (int shape = 0; shape < 5; ++shape) {
      std::vector<float> l(v);
      std::normal_distribution<float> wide(0.0f, shape == 1 ? 10.0f : 3.0f);
      std::uniform_int_distribution<int> small(-4, 4);
      for (float& x : l) x = shape == 2 ? static_cast<float>(small(rng)) : wide(rng);  // ties
      if (shape == 3) {  // suppressed tokens
        for (int i = 0; i < v; i += 3) l[i] = -INFINITY;
      }
      if (shape == 4) l[rng() % v] += 25.0f;  // one token carries nearly all the mass
      for (float t : {0.3f, 0.7f, 1.0f, 1.5f}) {
        for (int k : {0, 3, 50, 2000}) {
          for (float top_p : {1.0f, 0.9f, 0.5f}) {
            for (float min_p : {0.0f, 0.05f}) {
              const SamplingParams p{.temperature = t,
                                     .top_k = k,
                                     .top_p = top_p,
                                     .min_p = min_p,
                                     .seed = static_cast<uint64_t>(rng())};
              for (uint64_t step = 0; step < 4; ++step) {
                ++cases;
                const int32_t fast = SampleToken(l, p, step);
                const int32_t sorted = SampleTokenBySorting(l, p, step);
                same += fast == sorted;
                ASSERT_GE(fast, 0);
                ASSERT_LT(fast, v);
                ASSERT_GT(l[fast], -INFINITY) << "drew a suppressed token";
                if (fast != sorted) {
                  std::printf("differ: v %d shape %d T %.1f k %d top_p %.2f min_p %.2f: %d vs %d\n",
                              v, shape, t, k, top_p, min_p, fast, sorted);
                }
              }
            }
          }
        }
      }
    }
  }
  std::printf("bucketed draw equals the sorted draw in %d of %d cases\n", same, cases);
  EXPECT_EQ(same, cases);
}

}  // namespace
}  // namespace tpserve

namespace tpserve {
namespace {

// Logits spanning more than a float (their differences overflow), a single finite logit among
// suppressed ones, and every logit suppressed.
TEST(Sampler, ExtremeLogitRangesDrawLikeTheSort) {
  const std::vector<std::vector<float>> rows = {
      {3e38f, -3e38f, 0.0f, 1.0f, 2.0f, -1e38f, 3e38f},
      {-INFINITY, -INFINITY, 4.0f, -INFINITY},
      {1.0f, 1.0f, 1.0f, 1.0f},
  };
  for (const std::vector<float>& l : rows) {
    for (uint64_t step = 0; step < 50; ++step) {
      for (const SamplingParams& p :
           {SamplingParams{.temperature = 1.0f, .seed = 9},
            SamplingParams{.temperature = 0.5f, .top_k = 2, .top_p = 0.7f, .seed = 9}}) {
        EXPECT_EQ(SampleToken(l, p, step), SampleTokenBySorting(l, p, step)) << "step " << step;
      }
    }
  }
  const std::vector<float> none(5, -INFINITY);  // nothing can be drawn: the arg-max's answer
  EXPECT_EQ(SampleToken(none, SamplingParams{.temperature = 1.0f}, 0), 0);
}

// The full sort has no order for NaN; the bucketed draw leaves NaN logits out.
TEST(Sampler, NanLogitsAreNeverDrawn) {
  std::mt19937 rng(12);
  std::normal_distribution<float> n;
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> l(300);
    for (float& x : l) x = n(rng);
    for (int i = trial % 7; i < 300; i += 7) l[i] = NAN;
    const int32_t t = SampleToken(l, SamplingParams{.temperature = 2.0f, .seed = 3},
                                  static_cast<uint64_t>(trial));
    EXPECT_FALSE(std::isnan(l[t])) << "trial " << trial;
  }
}

}  // namespace
}  // namespace tpserve
