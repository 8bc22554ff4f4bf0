// The packed int8 matmul kernel alone (cpu/int8_gemm.h), against the machine's multiply issue
// rate measured in the same run (compute_peak.h) and its memory read bandwidth (bandwidth.h).
//
// A random Q4_1 (or --dtype q8_0) weight [out, in] (SmolLM2-135M's gate/up shape by default)
// multiplies n activation rows, split over the thread pool by 16-row groups as CpuBackend does.
// With
// --copies C > 1 the product cycles through C distinct copies of the weight, so that the weights
// come from memory (a forward pass reads each matrix once) rather than from the caches. Prints
// GMAC/s per n and terms, the share of the vpdpbusd issue rate that implies (int8x2 issues two
// per 64 products, int8 one) and the weight GB/s. Nothing is asserted.
//
// Usage: gemm_bench [--out 1536] [--in 576] [--n 1,8,32] [--terms 1,2] [--copies 1,64]
//                   [--dtype q4_1|q8_0] [--threads 2] [--reps 20]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/engine/bandwidth.h"
#include "bench/engine/compute_peak.h"
#include "common/format/dtype.h"
#include "worker/backend/cpu/int8_gemm.h"
#include "worker/backend/cpu/thread_pool.h"

namespace tpserve {
namespace {

struct Options {
  int64_t out = 1536, in = 576;
  std::vector<int> n{1, 8, 32};
  std::vector<int> terms{1, 2};
  std::vector<int> copies{1, 64};
  int threads = 2, reps = 20;
  std::string dtype = "q4_1";
};

// Bytes of a random [rows, cols] Q4_1 or Q8_0 matrix: fp16 scales (and Q4_1's min) in a sane
// range, random quants.
std::vector<uint8_t> RandomQuantized(DType dtype, int64_t rows, int64_t cols, std::mt19937& rng) {
  const bool q4 = dtype == DType::kQ4_1;
  const int64_t blocks = rows * cols / 32, block_bytes = q4 ? 20 : 34, header = q4 ? 4 : 2;
  std::vector<uint8_t> bytes(blocks * block_bytes);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* p = bytes.data() + b * block_bytes;
    const uint16_t d = FloatToHalf(scale(rng)), m = FloatToHalf(-8.0f * scale(rng));
    std::memcpy(p, &d, 2);
    if (q4) std::memcpy(p + 2, &m, 2);
    for (int64_t i = header; i < block_bytes; ++i) p[i] = static_cast<uint8_t>(byte(rng));
  }
  return bytes;
}

int Run(const Options& o) {
  if (!Int8GemmAvailable()) {
    std::fprintf(stderr, "gemm_bench: this build has no AVX-512 VNNI kernel\n");
    return 2;
  }
  if (o.in % 32 != 0) {
    std::fprintf(stderr, "gemm_bench: --in must be a multiple of 32\n");
    return 2;
  }
  ThreadPool pool(o.threads);
  const double vnni = VnniInstructionRate(pool);
  const double bw = MemoryReadBandwidth(pool);
  std::printf(
      "vpdpbusd issue rate, %d threads: %.2f G/s (%.0f G int8 products/s); read "
      "bandwidth %.1f GB/s\n",
      o.threads, vnni / 1e9, 64.0 * vnni / 1e9, bw / 1e9);
  // The kernel scales each block sum in fp32 (Q4_1: a multiply and two FMAs per 8 vpdpbusd of a
  // row and block). If FMAs share the multiplies' issue slots, that caps the kernel below the
  // rate above: 8 / (8 + 3) for Q4_1 at one term.
  const double with_fma = VnniInstructionRate<4>(pool);
  std::printf(
      "vpdpbusd issued with 4 fp32 FMAs per 16: %.2f G/s = %.0f%% (%.0f%% if the FMAs took no "
      "vpdpbusd slots, %.0f%% if each took one)\n",
      with_fma / 1e9, 100.0 * with_fma / vnni, 100.0, 100.0 * 16.0 / 20.0);
  const DType dtype = o.dtype == "q8_0" ? DType::kQ8_0 : DType::kQ4_1;
  const int64_t row_bytes = o.in / 32 * (dtype == DType::kQ8_0 ? 34 : 20);
  std::mt19937 rng(7);
  const int max_copies = *std::max_element(o.copies.begin(), o.copies.end());
  std::vector<std::shared_ptr<const PackedInt8Weight>> weights;
  for (int c = 0; c < max_copies; ++c) {
    const std::vector<uint8_t> bytes = RandomQuantized(dtype, o.out, o.in, rng);
    weights.push_back(PackInt8Weight(dtype, o.out, o.in, bytes.data(), row_bytes, &pool));
  }
  const double packed_bytes =
      static_cast<double>(weights[0]->groups) * (o.in / 32) * weights[0]->block_bytes;
  std::printf("weight [%lld x %lld] %s, packed %.2f MB per copy\n", static_cast<long long>(o.out),
              static_cast<long long>(o.in), DTypeName(dtype), packed_bytes / 1e6);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int terms : o.terms) {
    for (int copies : o.copies) {
      for (int n : o.n) {
        std::vector<float> x(n * o.in);
        for (float& v : x) v = u(rng);
        Int8Activations q;
        q.Resize(n, o.in, terms);
        QuantizeActivations(x.data(), o.in, 0, n, &q);
        std::vector<float> y(n * o.out);
        const int64_t groups = weights[0]->groups;
        const int calls = o.reps * copies;
        auto once = [&](int c) {
          const PackedInt8Weight& w = *weights[c % copies];
          pool.ParallelFor(groups, 2,
                           [&](int64_t b, int64_t e) { Int8Gemm(w, q, b, e, y.data(), o.out); });
        };
        for (int c = 0; c < copies; ++c) once(c);  // warm-up
        const auto start = std::chrono::steady_clock::now();
        for (int c = 0; c < calls; ++c) once(c);
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / calls;
        const double macs = static_cast<double>(n) * o.out * o.in;
        const double instr = macs * terms / 64.0;
        std::printf(
            "terms %d, %2d copies (%7.1f MB), n %2d: %8.1f us, %6.1f GMAC/s = %3.0f%% of the "
            "vpdpbusd rate, weights %5.1f GB/s\n",
            terms, copies, copies * packed_bytes / 1e6, n, s * 1e6, macs / s / 1e9,
            100.0 * instr / s / vnni, packed_bytes / s / 1e9);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace tpserve

int main(int argc, char** argv) {
  CLI::App app{"tpserve packed int8 matmul benchmark"};
  tpserve::Options o;
  app.add_option("--out", o.out, "weight rows (outputs)");
  app.add_option("--in", o.in, "weight columns (inputs), a multiple of 32");
  app.add_option("--n", o.n, "activation rows, e.g. 1,8,32")->delimiter(',');
  app.add_option("--terms", o.terms, "activation terms: 1 (int8), 2 (int8x2)")->delimiter(',');
  app.add_option("--copies", o.copies, "distinct weight copies cycled through, e.g. 1,64")
      ->delimiter(',');
  app.add_option("--dtype", o.dtype, "weight type")->check(CLI::IsMember({"q4_1", "q8_0"}));
  app.add_option("--threads", o.threads, "threads");
  app.add_option("--reps", o.reps, "timed passes over the copies");
  CLI11_PARSE(app, argc, argv);
  return tpserve::Run(o);
}
