// Pure pieces of `tpserve bench`: length distributions, percentiles, random prompts with shared
// prefixes, Poisson arrival gaps and the search for special token ids. No gRPC here, so each is
// unit-tested on its own (tests/tools/bench_stats_test.cc).
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tpserve::bench {

// A distribution of token counts: "N" (always N), "uniform:A-B" (integers A..B inclusive),
// "normal:MEAN,STD" (rounded to the nearest integer). Every draw is clamped to >= 1.
struct LengthDist {
  enum class Kind { kFixed, kUniform, kNormal };
  Kind kind = Kind::kFixed;
  double a = 1;  // fixed: the value; uniform: low end; normal: mean
  double b = 0;  // uniform: high end; normal: standard deviation
  // The spec it was parsed from, normalised ("128", "uniform:32-64", "normal:100,20").
  std::string ToString() const;
  // Mean of the draws before clamping (fixed: a; uniform: (a+b)/2; normal: a).
  double Mean() const;
};

// INVALID_ARGUMENT naming the spec and the expected forms when it does not parse or is out of
// range (N < 1, A < 1, B < A, STD < 0).
absl::StatusOr<LengthDist> ParseLengthDist(const std::string& spec);

// One draw, >= 1.
int SampleLength(const LengthDist& d, std::mt19937_64& rng);

// The p-th percentile (p in [0, 100]) of `values` with linear interpolation between closest
// ranks (numpy.percentile's default "linear" method). 0 for an empty input.
double Percentile(std::vector<double> values, double p);

// Count, mean and the percentiles the report shows, of one metric (milliseconds usually).
struct Summary {
  int64_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};
Summary Summarize(const std::vector<double>& values);

// Seconds until the next arrival of a Poisson process of `rate` arrivals per second
// (exponentially distributed gaps, mean 1 / rate).
double NextArrivalGap(double rate, std::mt19937_64& rng);

// Token ids in [0, vocab_size) minus `excluded` (sorted, unique), from which prompts are drawn.
std::vector<int32_t> AllowedIds(int32_t vocab_size, std::vector<int32_t> excluded);

// Random prompts: `shared_prefix_ratio` of each prompt (rounded down) is the start of one of
// `num_prefixes` fixed random sequences (request i uses prefix i % num_prefixes), the rest is
// drawn fresh. Every id comes from `allowed`. Deterministic for a given seed and call order.
class PromptMaker {
 public:
  PromptMaker(std::vector<int32_t> allowed, double shared_prefix_ratio, int num_prefixes,
              uint64_t seed);
  // `length` >= 1 token ids for request number `index`.
  std::vector<int32_t> Make(int64_t index, int length);
  // Tokens of a `length`-token prompt that come from the shared prefix.
  int PrefixLength(int length) const;

 private:
  int32_t Draw(std::mt19937_64& rng);

  std::vector<int32_t> allowed_;
  double ratio_;
  std::vector<std::vector<int32_t>> prefixes_;  // grown on demand, one rng each
  std::vector<std::mt19937_64> prefix_rngs_;
  std::mt19937_64 rng_;
};

// Finds every id in [0, vocab_size) for which the model treats the token as special, given
// `differs(begin, end)`: whether the ids [begin, end) hold at least one special id (the server
// check is: detokenizing them with and without skip_special_tokens gives different text).
// Scans chunks of `chunk` ids and bisects the chunks that differ, so a vocabulary of 49152 ids with
// a few specials takes a few hundred calls. Returns the ids, ascending.
std::vector<int32_t> FindSpecialIds(int32_t vocab_size, int32_t chunk,
                                    const std::function<bool(int32_t, int32_t)>& differs);

}  // namespace tpserve::bench
