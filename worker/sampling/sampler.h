// Token sampling from one row of logits, on the CPU (rank 0 samples for the whole group).
//
// Reproducible by construction: the uniform number used for a request's step `i` is a pure
// function of (seed, i) (a counter-based generator, no hidden state), so a request yields the
// same tokens whether it runs alone or batched with others, and after a recompute.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace tpserve {

struct SamplingParams {
  float temperature = 0.0f;  // <= 0: greedy (arg-max)
  int32_t top_k = 0;         // <= 0: off
  float top_p = 1.0f;        // >= 1: off; keeps the smallest set reaching this mass
  float min_p = 0.0f;        // <= 0: off; keeps tokens with p >= min_p * p_max
  uint64_t seed = 0;
};

// Uniform in [0, 1) for (seed, counter): splitmix64 over a mix of both, 53 random bits.
double CounterUniform(uint64_t seed, uint64_t counter);

// Index of the largest logit (the lowest index on ties).
int32_t Argmax(std::span<const float> logits);

// The distribution a non-greedy draw samples from: softmax(logits / temperature) restricted by
// top-k, then top-p, then min-p, renormalised. Pairs (token, probability), most probable first
// (ties by lower token id).
std::vector<std::pair<int32_t, float>> FilteredDistribution(std::span<const float> logits,
                                                            const SamplingParams& params);

// The token for a request's step `step` (0 for its first generated token): the draw
// SampleTokenBySorting states, found without sorting the vocabulary (a fraction of a
// millisecond for 49k logits rather than milliseconds). The two can differ only where fp32
// weights and a different summation order move a cumulative sum across the uniform number.
int32_t SampleToken(std::span<const float> logits, const SamplingParams& params, uint64_t step);

// The same draw computed plainly: FilteredDistribution (a full sort), then the inverse CDF at
// CounterUniform(seed, step). The reference SampleToken is tested against.
int32_t SampleTokenBySorting(std::span<const float> logits, const SamplingParams& params,
                             uint64_t step);

}  // namespace tpserve
