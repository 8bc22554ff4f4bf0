#include "tools/bench_stats.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace tpserve::bench {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(LengthDistTest, ParsesTheThreeForms) {
  absl::StatusOr<LengthDist> fixed = ParseLengthDist("128");
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_EQ(fixed->kind, LengthDist::Kind::kFixed);
  EXPECT_EQ(fixed->ToString(), "128");

  absl::StatusOr<LengthDist> uni = ParseLengthDist("uniform:32-64");
  ASSERT_TRUE(uni.ok()) << uni.status();
  EXPECT_EQ(uni->kind, LengthDist::Kind::kUniform);
  EXPECT_EQ(uni->ToString(), "uniform:32-64");
  EXPECT_DOUBLE_EQ(uni->Mean(), 48);

  absl::StatusOr<LengthDist> norm = ParseLengthDist("normal:100,20.5");
  ASSERT_TRUE(norm.ok()) << norm.status();
  EXPECT_EQ(norm->kind, LengthDist::Kind::kNormal);
  EXPECT_EQ(norm->ToString(), "normal:100,20.5");
}

TEST(LengthDistTest, RejectsBadSpecsWithTheExpectedForms) {
  for (const char* bad :
       {"", "0", "-3", "1.5", "abc", "uniform:5", "uniform:0-4", "uniform:9-3", "uniform:1.5-3",
        "normal:100", "normal:0,1", "normal:10,-1", "poisson:3"}) {
    absl::StatusOr<LengthDist> d = ParseLengthDist(bad);
    EXPECT_FALSE(d.ok()) << bad;
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(d.status().message(), HasSubstr("uniform:A-B")) << bad;
  }
}

TEST(LengthDistTest, FixedAlwaysGivesN) {
  std::mt19937_64 rng(1);
  const LengthDist d = *ParseLengthDist("17");
  for (int i = 0; i < 100; ++i) EXPECT_EQ(SampleLength(d, rng), 17);
}

TEST(LengthDistTest, UniformCoversItsInclusiveRangeEvenly) {
  std::mt19937_64 rng(2);
  const LengthDist d = *ParseLengthDist("uniform:3-6");
  std::map<int, int> seen;
  const int n = 40000;
  for (int i = 0; i < n; ++i) ++seen[SampleLength(d, rng)];
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen.begin()->first, 3);
  EXPECT_EQ(seen.rbegin()->first, 6);
  // Each of the 4 values has probability 1/4: binomial std is sqrt(n/4*3/4) ~ 87; allow 6 sigma.
  for (const auto& [v, count] : seen) EXPECT_NEAR(count, n / 4, 520) << v;
}

TEST(LengthDistTest, NormalHasItsMeanAndStdAndIsClampedToOne) {
  std::mt19937_64 rng(3);
  const LengthDist d = *ParseLengthDist("normal:200,30");
  const int n = 20000;
  double sum = 0, sq = 0;
  for (int i = 0; i < n; ++i) {
    const double v = SampleLength(d, rng);
    sum += v;
    sq += v * v;
  }
  const double mean = sum / n;
  // Standard error of the mean is 30 / sqrt(n) ~ 0.21; rounding adds variance 1/12.
  EXPECT_NEAR(mean, 200, 1.5);
  EXPECT_NEAR(std::sqrt(sq / n - mean * mean), 30, 1.0);

  const LengthDist wide = *ParseLengthDist("normal:2,50");
  int ones = 0;
  for (int i = 0; i < 1000; ++i) {
    const int v = SampleLength(wide, rng);
    ASSERT_GE(v, 1);
    ones += v == 1;
  }
  // About half the draws of N(2, 50) fall at or below 1.5 and become 1.
  EXPECT_GT(ones, 400);
}

TEST(PercentileTest, MatchesNumpyGoldens) {
  std::ifstream f("tests/data/golden/tools/percentiles.json");
  ASSERT_TRUE(f.good()) << "run from the repository root";
  const nlohmann::json j = nlohmann::json::parse(f);
  ASSERT_GE(j["cases"].size(), 5u);
  for (const nlohmann::json& c : j["cases"]) {
    const std::vector<double> values = c["values"].get<std::vector<double>>();
    const std::vector<double> ps = c["percentiles"].get<std::vector<double>>();
    const std::vector<double> want = c["expected"].get<std::vector<double>>();
    for (size_t i = 0; i < ps.size(); ++i) {
      EXPECT_NEAR(Percentile(values, ps[i]), want[i], 1e-9 * std::max(1.0, std::abs(want[i])))
          << "n=" << values.size() << " p=" << ps[i];
    }
    const Summary s = Summarize(values);
    EXPECT_EQ(s.count, static_cast<int64_t>(values.size()));
    EXPECT_NEAR(s.mean, c["mean"].get<double>(), 1e-9 * c["mean"].get<double>());
    EXPECT_DOUBLE_EQ(s.max, c["max"].get<double>());
    EXPECT_NEAR(s.p99, Percentile(values, 99), 0);
  }
}

TEST(PercentileTest, EmptyIsZero) {
  EXPECT_EQ(Percentile({}, 50), 0);
  const Summary s = Summarize({});
  EXPECT_EQ(s.count, 0);
  EXPECT_EQ(s.p99, 0);
}

TEST(ArrivalTest, GapsAverageOneOverTheRate) {
  std::mt19937_64 rng(4);
  const int n = 20000;
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    const double g = NextArrivalGap(8.0, rng);
    ASSERT_GE(g, 0);
    sum += g;
  }
  // Exponential: std = mean = 0.125 s; standard error 0.125 / sqrt(n) ~ 0.0009.
  EXPECT_NEAR(sum / n, 0.125, 0.005);
}

TEST(AllowedIdsTest, DropsTheExcludedIds) {
  EXPECT_THAT(AllowedIds(6, {5, 0, 2, 2}), ElementsAre(1, 3, 4));
  EXPECT_EQ(AllowedIds(49152, {0, 1, 2}).size(), 49149u);
}

TEST(PromptMakerTest, SharedPrefixIsCommonAndTheRestDiffers) {
  const std::vector<int32_t> allowed = AllowedIds(1000, {0, 1, 2});
  PromptMaker maker(allowed, 0.5, /*num_prefixes=*/1, /*seed=*/7);
  EXPECT_EQ(maker.PrefixLength(64), 32);
  const std::vector<int32_t> a = maker.Make(0, 64);
  const std::vector<int32_t> b = maker.Make(1, 64);
  const std::vector<int32_t> c = maker.Make(2, 40);  // shorter: a shorter share of the prefix
  ASSERT_EQ(a.size(), 64u);
  ASSERT_EQ(c.size(), 40u);
  EXPECT_TRUE(std::equal(a.begin(), a.begin() + 32, b.begin()));
  EXPECT_TRUE(std::equal(a.begin(), a.begin() + 20, c.begin()));
  EXPECT_FALSE(std::equal(a.begin() + 32, a.end(), b.begin() + 32));
  for (const auto* p : {&a, &b, &c}) {
    for (int32_t id : *p) EXPECT_TRUE(id >= 3 && id < 1000) << id;
  }
}

TEST(PromptMakerTest, DistinctPrefixesRotateAndNoSharingMeansDistinctPrompts) {
  const std::vector<int32_t> allowed = AllowedIds(5000, {});
  PromptMaker two(allowed, 1.0, /*num_prefixes=*/2, 9);
  const std::vector<int32_t> p0 = two.Make(0, 16), p1 = two.Make(1, 16), p2 = two.Make(2, 16);
  EXPECT_EQ(p0, p2);  // ratio 1: the whole prompt is prefix 0
  EXPECT_NE(p0, p1);

  PromptMaker none(allowed, 0.0, 1, 9);
  EXPECT_EQ(none.PrefixLength(100), 0);
  EXPECT_NE(none.Make(0, 16), none.Make(1, 16));
}

TEST(PromptMakerTest, SameSeedSamePrompts) {
  const std::vector<int32_t> allowed = AllowedIds(300, {});
  PromptMaker a(allowed, 0.25, 3, 11), b(allowed, 0.25, 3, 11), c(allowed, 0.25, 3, 12);
  for (int i = 0; i < 5; ++i) {
    const std::vector<int32_t> x = a.Make(i, 30 + i);
    EXPECT_EQ(x, b.Make(i, 30 + i));
    EXPECT_NE(x, c.Make(i, 30 + i));
  }
}

TEST(FindSpecialIdsTest, FindsEverySpecialIdWithFewCalls) {
  const std::set<int32_t> special = {0, 1, 2, 17, 1023, 1024, 30000, 49151};
  int calls = 0;
  auto differs = [&](int32_t begin, int32_t end) {
    ++calls;
    auto it = special.lower_bound(begin);
    return it != special.end() && *it < end;
  };
  const std::vector<int32_t> found = FindSpecialIds(49152, 1024, differs);
  EXPECT_EQ(std::set<int32_t>(found.begin(), found.end()), special);
  EXPECT_TRUE(std::is_sorted(found.begin(), found.end()));
  // 48 chunks + at most 2 * 10 bisection calls per special id.
  EXPECT_LE(calls, 48 + 2 * 10 * static_cast<int>(special.size()));
}

TEST(FindSpecialIdsTest, NoneWhenNothingDiffers) {
  EXPECT_TRUE(FindSpecialIds(5000, 512, [](int32_t, int32_t) { return false; }).empty());
}

}  // namespace
}  // namespace tpserve::bench
