// Rank 0's per-token host work on one row of logits (default: SmolLM2's 49152-token vocabulary):
// SampleToken (the bucketed draw) against SampleTokenBySorting (the full sort it replaces) for
// the usual sampling settings, and ComputeLogprobs with 0 / 5 / 20 alternatives. Prints
// microseconds per token and how many tokens the two draws agreed on. Nothing is asserted.
//
// Usage: sampling_bench [--vocab 49152] [--tokens 200] [--spread 3]
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "worker/sampling/sampler.h"
#include "worker/service/logits_processing.h"

namespace {

using Clock = std::chrono::steady_clock;

template <typename F>
double MicrosPerCall(int calls, F&& f) {
  const auto start = Clock::now();
  for (int i = 0; i < calls; ++i) f(i);
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count() / calls;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tpserve sampling benchmark"};
  int vocab = 49152, tokens = 200;
  float spread = 3.0f;
  app.add_option("--vocab", vocab, "logits per row");
  app.add_option("--tokens", tokens, "draws timed per setting");
  app.add_option("--spread", spread, "standard deviation of the random logits");
  CLI11_PARSE(app, argc, argv);

  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> logits(vocab);
  for (float& l : logits) l = normal(rng);
  std::printf("one row of %d logits (normal, sd %.1f), %d draws per setting\n", vocab, spread,
              tokens);
  struct Setting {
    const char* name;
    tpserve::SamplingParams params;
  };
  const Setting settings[] = {
      {"greedy", {}},
      {"temperature 1", {.temperature = 1.0f, .seed = 1}},
      {"temperature 0.7, top_p 0.9", {.temperature = 0.7f, .top_p = 0.9f, .seed = 2}},
      {"temperature 0.8, top_k 50, top_p 0.95",
       {.temperature = 0.8f, .top_k = 50, .top_p = 0.95f, .seed = 3}},
      {"temperature 1, min_p 0.05", {.temperature = 1.0f, .min_p = 0.05f, .seed = 4}},
  };
  std::printf("| setting | SampleToken us | by sorting us | speed-up | same token |\n");
  std::printf("|---|---|---|---|---|\n");
  for (const Setting& s : settings) {
    std::vector<int32_t> fast(tokens), sorted(tokens);
    const double f = MicrosPerCall(tokens, [&](int i) {
      fast[i] = tpserve::SampleToken(logits, s.params, static_cast<uint64_t>(i));
    });
    const double r = MicrosPerCall(tokens, [&](int i) {
      sorted[i] = tpserve::SampleTokenBySorting(logits, s.params, static_cast<uint64_t>(i));
    });
    int same = 0;
    for (int i = 0; i < tokens; ++i) same += fast[i] == sorted[i];
    std::printf("| %s | %.1f | %.1f | %.0fx | %d / %d |\n", s.name, f, r, r / f, same, tokens);
  }
  for (int top : {0, 5, 20}) {
    double sink = 0.0;
    const double us = MicrosPerCall(
        tokens, [&](int i) { sink += tpserve::ComputeLogprobs(logits, i % vocab, top).logprob; });
    std::printf("ComputeLogprobs, top %2d: %.1f us per token (checksum %.3f)\n", top, us, sink);
  }
  return 0;
}
