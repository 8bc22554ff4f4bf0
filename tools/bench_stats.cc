#include "tools/bench_stats.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace tpserve::bench {
namespace {

absl::Status BadSpec(absl::string_view spec, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("length distribution \"", spec, "\": ", why,
                   "; expected N, uniform:A-B or normal:MEAN,STD (token counts >= 1)"));
}

bool ParseNumber(absl::string_view s, double* out) {
  return absl::SimpleAtod(absl::StripAsciiWhitespace(s), out) && std::isfinite(*out);
}

}  // namespace

std::string LengthDist::ToString() const {
  switch (kind) {
    case Kind::kFixed:
      return absl::StrCat(a);
    case Kind::kUniform:
      return absl::StrCat("uniform:", a, "-", b);
    case Kind::kNormal:
      return absl::StrCat("normal:", a, ",", b);
  }
  return "";
}

double LengthDist::Mean() const { return kind == Kind::kUniform ? (a + b) / 2 : a; }

absl::StatusOr<LengthDist> ParseLengthDist(const std::string& full) {
  absl::string_view spec = full;
  LengthDist d;
  if (absl::ConsumePrefix(&spec, "uniform:")) {
    std::vector<absl::string_view> parts = absl::StrSplit(spec, '-');
    if (parts.size() != 2 || !ParseNumber(parts[0], &d.a) || !ParseNumber(parts[1], &d.b)) {
      return BadSpec(full, "uniform needs two integers A-B");
    }
    if (d.a != std::floor(d.a) || d.b != std::floor(d.b) || d.a < 1 || d.b < d.a) {
      return BadSpec(full, "uniform needs integers 1 <= A <= B");
    }
    d.kind = LengthDist::Kind::kUniform;
    return d;
  }
  if (absl::ConsumePrefix(&spec, "normal:")) {
    std::vector<absl::string_view> parts = absl::StrSplit(spec, ',');
    if (parts.size() != 2 || !ParseNumber(parts[0], &d.a) || !ParseNumber(parts[1], &d.b)) {
      return BadSpec(full, "normal needs MEAN,STD");
    }
    if (d.a < 1 || d.b < 0) return BadSpec(full, "normal needs MEAN >= 1 and STD >= 0");
    d.kind = LengthDist::Kind::kNormal;
    return d;
  }
  if (!ParseNumber(spec, &d.a) || d.a != std::floor(d.a) || d.a < 1) {
    return BadSpec(full, "not a whole number >= 1");
  }
  return d;
}

int SampleLength(const LengthDist& d, std::mt19937_64& rng) {
  double v = d.a;
  switch (d.kind) {
    case LengthDist::Kind::kFixed:
      break;
    case LengthDist::Kind::kUniform:
      v = static_cast<double>(std::uniform_int_distribution<int64_t>(
          static_cast<int64_t>(d.a), static_cast<int64_t>(d.b))(rng));
      break;
    case LengthDist::Kind::kNormal:
      v = std::round(std::normal_distribution<double>(d.a, d.b)(rng));
      break;
  }
  return static_cast<int>(std::clamp(v, 1.0, 1e9));
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  // numpy "linear": rank = p/100 * (n - 1), interpolated between its floor and ceiling.
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  const double frac = rank - static_cast<double>(lo);
  return values[lo] + (values[hi] - values[lo]) * frac;
}

Summary Summarize(const std::vector<double>& values) {
  Summary s;
  s.count = static_cast<int64_t>(values.size());
  if (values.empty()) return s;
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / static_cast<double>(values.size());
  s.p50 = Percentile(values, 50);
  s.p90 = Percentile(values, 90);
  s.p99 = Percentile(values, 99);
  s.max = *std::max_element(values.begin(), values.end());
  return s;
}

double NextArrivalGap(double rate, std::mt19937_64& rng) {
  return std::exponential_distribution<double>(rate)(rng);
}

std::vector<int32_t> AllowedIds(int32_t vocab_size, std::vector<int32_t> excluded) {
  std::sort(excluded.begin(), excluded.end());
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(std::max(vocab_size, 0)));
  for (int32_t id = 0; id < vocab_size; ++id) {
    if (!std::binary_search(excluded.begin(), excluded.end(), id)) out.push_back(id);
  }
  return out;
}

PromptMaker::PromptMaker(std::vector<int32_t> allowed, double shared_prefix_ratio, int num_prefixes,
                         uint64_t seed)
    : allowed_(std::move(allowed)),
      ratio_(std::clamp(shared_prefix_ratio, 0.0, 1.0)),
      prefixes_(static_cast<size_t>(std::max(num_prefixes, 1))),
      rng_(seed) {
  // Each prefix has its own stream so that its tokens do not depend on the lengths asked for.
  for (size_t k = 0; k < prefixes_.size(); ++k) prefix_rngs_.emplace_back(seed * 1000003 + k + 1);
}

int32_t PromptMaker::Draw(std::mt19937_64& rng) {
  return allowed_[std::uniform_int_distribution<size_t>(0, allowed_.size() - 1)(rng)];
}

int PromptMaker::PrefixLength(int length) const {
  return static_cast<int>(std::floor(ratio_ * static_cast<double>(length)));
}

std::vector<int32_t> PromptMaker::Make(int64_t index, int length) {
  const int shared = PrefixLength(length);
  const size_t k = static_cast<size_t>(index) % prefixes_.size();
  std::vector<int32_t>& prefix = prefixes_[k];
  while (static_cast<int>(prefix.size()) < shared) prefix.push_back(Draw(prefix_rngs_[k]));
  std::vector<int32_t> out(prefix.begin(), prefix.begin() + shared);
  while (static_cast<int>(out.size()) < length) out.push_back(Draw(rng_));
  return out;
}

std::vector<int32_t> FindSpecialIds(int32_t vocab_size, int32_t chunk,
                                    const std::function<bool(int32_t, int32_t)>& differs) {
  std::vector<int32_t> found;
  // Depth-first bisection of [begin, end), known to hold a special id.
  std::function<void(int32_t, int32_t)> bisect = [&](int32_t begin, int32_t end) {
    if (end - begin == 1) {
      found.push_back(begin);
      return;
    }
    const int32_t mid = begin + (end - begin) / 2;
    if (differs(begin, mid)) bisect(begin, mid);
    if (differs(mid, end)) bisect(mid, end);
  };
  chunk = std::max(chunk, 1);
  for (int32_t begin = 0; begin < vocab_size; begin += chunk) {
    const int32_t end = std::min(vocab_size, begin + chunk);
    if (differs(begin, end)) bisect(begin, end);
  }
  return found;
}

}  // namespace tpserve::bench
