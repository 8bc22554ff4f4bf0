// Engine micro-benchmark on a real model (default: SmolLM2-135M-Instruct Q4_1). Prints decode and
// prefill tokens/s and puts them against this machine's limits measured in the same run:
//   decode:  memory read bandwidth / bytes of weights read per token (the roofline of a
//            bandwidth-bound decoder at batch 1);
//   prefill: GFLOP/s of the forward's matmuls vs cblas_sgemm GFLOP/s on the same shapes.
// With --batch, also decodes B sequences at once (one token each per step) and prints the
// aggregate tokens/s per batch size and its ratio to one sequence: how batching scales.
// With --op-times, each batched run also prints where a step's time goes, op by op.
// Nothing here is asserted; see the final report / README for recorded numbers.
//
// Usage: engine_bench [--model PATH] [--threads N] [--prompt-tokens N] [--decode-tokens N]
//                     [--precision int8x2|int8|fp32] [--batch 1,8,32] [--op-times]
#include <cblas.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "bench/engine/bandwidth.h"
#include "bench/engine/compute_peak.h"
#include "bench/engine/timing_backend.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/backend/cpu/thread_pool.h"
#include "worker/kv/kv_cache.h"
#include "worker/model/llama.h"
#include "worker/model/model_loader.h"
#include "worker/parallel/communicator.h"
#include "worker/runtime/model_runner.h"

namespace tpserve {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// GFLOP/s of y[m, n] = x[m, k] · w[n, k]ᵀ split over the pool by columns of y, each thread one
// single-threaded sgemm: the way CpuBackend runs prefill matmuls.
double SgemmGflops(ThreadPool& pool, int64_t m, int64_t n, int64_t k, int reps) {
  std::vector<float> x(m * k, 0.5f), w(n * k, 0.25f), y(m * n);
  double best = 0.0;
  for (int rep = 0; rep < reps; ++rep) {
    const auto start = Clock::now();
    pool.ParallelFor(n, 64, [&](int64_t begin, int64_t end) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, end - begin, k, 1.0f, x.data(), k,
                  w.data() + begin * k, k, 0.0f, y.data() + begin, n);
    });
    best = std::max(best, 2.0 * m * n * k / Seconds(Clock::now() - start) / 1e9);
  }
  return best;
}

// "ms/<what> by op: ..." for op totals over `count` runs that took `seconds` in all.
void PrintOpTimes(const char* what, const std::map<std::string, TimingBackend::Total>& totals,
                  double seconds, int count) {
  double ops = 0.0;
  std::string line;
  for (const auto& [name, t] : totals) {
    ops += t.seconds;
    line += " " + name + " " + std::to_string(1e3 * t.seconds / count).substr(0, 5);
  }
  std::printf("  ms/%s by op:%s, outside ops %.2f\n", what, line.c_str(),
              1e3 * (seconds - ops) / count);
}

// "  matmuls by weight shape ..." for the matmul totals of `count` runs: ms per run, GMAC/s and,
// where there is one, the share of the multiply issue rate (`products_per_s`, in products of
// this precision per second).
void PrintMatMuls(const std::map<std::string, TimingBackend::MatMulTotal>& matmuls, int count,
                  double products_per_s) {
  std::string line;
  for (const auto& [shape, t] : matmuls) {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "; [%s] %.2f ms %.0f GMAC/s", shape.c_str(),
                  1e3 * t.seconds / count, t.macs / t.seconds / 1e9);
    line += buf;
    if (products_per_s > 0.0) {
      std::snprintf(buf, sizeof(buf), " (%.0f%%)", 100.0 * t.macs / t.seconds / products_per_s);
      line += buf;
    }
  }
  std::printf("  matmuls by weight shape (out x in), per step%s\n", line.c_str());
}

struct Options {
  std::string model;
  int threads = 2, prompt_tokens = 128, decode_tokens = 64;
  std::string precision = "default";
  std::string kv_dtype = "auto";
  std::vector<int> batch;
  bool op_times = false;
  int block_size = 16;
  bool interleave = false;
  bool shared_kv = false;
};

// Aggregate decode tokens/s of `b` sequences decoding together (each after its own prefill of
// the same prompt), `steps` steps. Each sequence's blocks are consecutive in the pool, or with
// `interleave` block i of sequence s is i * b + s (a server's sequences, growing together, take
// turns at the free list). With `shared_kv` every sequence's table is sequence 0's: the 32
// sequences read (and write) the same blocks, so attention's reads come from cache, not DRAM:
// its arithmetic alone (a diagnostic; the tokens are not a real batch's).
// The op times of `timer` cover the decode steps only; *seconds is their total wall time.
double BatchedDecode(ModelRunner& runner, const std::vector<int32_t>& prompt, int b, int steps,
                     int64_t blocks_per_seq, bool interleave, bool shared_kv, TimingBackend* timer,
                     double* seconds) {
  std::vector<std::vector<int32_t>> tables(b);
  for (int s = 0; s < b; ++s) {
    for (int64_t i = 0; i < blocks_per_seq; ++i) {
      tables[s].push_back(static_cast<int32_t>(interleave ? i * b + s : s * blocks_per_seq + i));
    }
  }
  if (shared_kv) {
    for (int s = 1; s < b; ++s) tables[s] = tables[0];
  }
  Step prefill;
  for (int s = 0; s < b; ++s) {
    prefill.sequences.push_back(
        StepSequence{.tokens = prompt, .start_pos = 0, .block_table = tables[s]});
  }
  auto r = runner.Execute(prefill);
  if (!r.ok()) {
    std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
    std::exit(1);
  }
  std::vector<int32_t> next = r->tokens;
  const int64_t p = static_cast<int64_t>(prompt.size());
  timer->Reset();
  const auto start = Clock::now();
  for (int i = 0; i < steps; ++i) {
    Step step;
    for (int s = 0; s < b; ++s) {
      step.sequences.push_back(
          StepSequence{.tokens = {next[s]}, .start_pos = p + i, .block_table = tables[s]});
    }
    auto d = runner.Execute(step);
    if (!d.ok()) {
      std::fprintf(stderr, "%s\n", d.status().ToString().c_str());
      std::exit(1);
    }
    next = d->tokens;
  }
  *seconds = Seconds(Clock::now() - start);
  return static_cast<double>(b) * steps / *seconds;
}

int Run(const Options& o) {
  const std::string& model_path = o.model;
  const int threads = o.threads, prompt_tokens = o.prompt_tokens, decode_tokens = o.decode_tokens;
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  std::printf("OpenBLAS: core %s (OPENBLAS_CORETYPE=%s), config %s\n", openblas_get_corename(),
              coretype ? coretype : "<unset>", openblas_get_config());

  // ---- machine limits ----
  ThreadPool pool1(1), pool_n(threads);
  const double bw1 = MemoryReadBandwidth(pool1);
  const double bw_n = MemoryReadBandwidth(pool_n);
  std::printf("memory read bandwidth: %.1f GB/s (1 thread), %.1f GB/s (%d threads)\n", bw1 / 1e9,
              bw_n / 1e9, threads);

  auto files = OpenModelFiles(model_path);
  if (!files.ok()) {
    std::fprintf(stderr, "%s\n", files.status().ToString().c_str());
    return 1;
  }
  const ModelConfig& c = files->config;
  const double sgemm = SgemmGflops(pool_n, prompt_tokens, c.intermediate_size, c.hidden_size, 5);
  std::printf("cblas_sgemm [%d x %lld x %lld], %d threads: %.1f GFLOP/s\n", prompt_tokens,
              static_cast<long long>(c.intermediate_size), static_cast<long long>(c.hidden_size),
              threads, sgemm);
  const double vnni = VnniInstructionRate(pool_n);
  if (vnni > 0.0) {
    std::printf("vpdpbusd issue rate, %d threads: %.2f G/s = %.0f G int8 products/s\n", threads,
                vnni / 1e9, 64.0 * vnni / 1e9);
  }

  // ---- the model ----
  absl::StatusOr<CpuPrecision> precision =
      ParseCpuPrecision(o.precision == "default" ? "" : o.precision);
  if (!precision.ok()) {
    std::fprintf(stderr, "%s\n", precision.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<std::optional<KvDType>> kv_dtype = ParseKvDType(o.kv_dtype);
  if (!kv_dtype.ok()) {
    std::fprintf(stderr, "%s\n", kv_dtype.status().ToString().c_str());
    return 2;
  }
  CpuBackend cpu(threads, *precision, *kv_dtype);
  std::printf("matmul precision: %s, KV cache %s\n", CpuPrecisionName(cpu.precision()),
              KvDTypeName(cpu.kv_dtype()));
  TimingBackend backend(cpu);
  LocalCommunicator comm;
  auto model = LoadCausalLm(*files, SingleRankPlan(c), backend, comm);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return 1;
  }
  // Bytes a decode step reads: every matrix once (the tied embedding as LM head), norms aside.
  size_t weight_bytes = 0;
  for (const std::string& name : files->source->Names()) {
    const TensorInfo* t = files->source->Find(name);
    if (t->shape.size() == 2) weight_bytes += t->nbytes;
  }
  const bool tied = files->source->Find("output.weight") == nullptr &&
                    files->source->Find("lm_head.weight") == nullptr;
  if (!tied) {  // the embedding matrix is only looked up (one row per token)
    const TensorInfo* e = files->source->Find("token_embd.weight");
    if (e == nullptr) e = files->source->Find("model.embed_tokens.weight");
    if (e != nullptr) weight_bytes -= e->nbytes;
  }
  // Matmul FLOPs per token: 2 per weight of every matrix applied (q,k,v,o,gate,up,down, head).
  const double layer_weights = static_cast<double>(c.hidden_size) *
                               (2.0 * c.num_heads * c.head_dim + 2.0 * c.num_kv_heads * c.head_dim +
                                3.0 * c.intermediate_size);
  const double flops_per_token =
      2.0 * (c.num_layers * layer_weights + static_cast<double>(c.vocab_size) * c.hidden_size);
  // The compute bound of batched decode: every token's matmul products at the machine's rate
  // for this precision (int8x2 issues two vpdpbusd per 64 products, int8 one; fp32: sgemm).
  double products_per_s = sgemm * 1e9 / 2.0;
  if (cpu.precision() == CpuPrecision::kInt8) products_per_s = 64.0 * vnni;
  if (cpu.precision() == CpuPrecision::kInt8x2) products_per_s = 32.0 * vnni;
  const double compute_bound = products_per_s / (flops_per_token / 2.0);

  const int64_t block_size = o.block_size;
  const int64_t blocks = (prompt_tokens + decode_tokens + block_size - 1) / block_size + 1;
  const int max_batch = o.batch.empty() ? 1 : *std::max_element(o.batch.begin(), o.batch.end());
  auto runner =
      ModelRunner::Create(**model, backend, true, blocks * std::max(1, max_batch), block_size);
  if (!runner.ok()) {
    std::fprintf(stderr, "%s\n", runner.status().ToString().c_str());
    return 1;
  }
  std::vector<int32_t> table(blocks);
  for (int64_t i = 0; i < blocks; ++i) table[i] = static_cast<int32_t>(i);
  std::vector<int32_t> prompt(prompt_tokens);
  for (int i = 0; i < prompt_tokens; ++i) prompt[i] = 1 + (i * 7919) % (c.vocab_size - 1);

  // Prefill, best of 3 (the cache is simply overwritten).
  double prefill_s = 1e30;
  int32_t next = 0;
  std::map<std::string, TimingBackend::Total> prefill_ops;  // of the best run
  for (int rep = 0; rep < 3; ++rep) {
    Step step{.sequences = {StepSequence{.tokens = prompt, .start_pos = 0, .block_table = table}}};
    backend.Reset();
    const auto start = Clock::now();
    auto r = (*runner)->Execute(step);
    const double s = Seconds(Clock::now() - start);
    if (s < prefill_s) prefill_ops = backend.totals();
    prefill_s = std::min(prefill_s, s);
    if (!r.ok()) {
      std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
      return 1;
    }
    next = r->tokens[0];
  }
  // Prefill FLOPs: matmuls for every token except the LM head (last position only) + attention.
  const double attn_flops = 4.0 * c.num_layers * c.num_heads * c.head_dim * 0.5 *
                            static_cast<double>(prompt_tokens) * prompt_tokens;
  const double prefill_flops =
      prompt_tokens * (flops_per_token - 2.0 * c.vocab_size * c.hidden_size) +
      2.0 * c.vocab_size * c.hidden_size + attn_flops;

  const auto decode_start = Clock::now();
  for (int i = 0; i < decode_tokens; ++i) {
    Step step{.sequences = {StepSequence{
                  .tokens = {next}, .start_pos = prompt_tokens + i, .block_table = table}}};
    auto r = (*runner)->Execute(step);
    if (!r.ok()) {
      std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
      return 1;
    }
    next = r->tokens[0];
  }
  const double decode_s = Seconds(Clock::now() - decode_start);
  const double decode_tps = decode_tokens / decode_s;
  const double roofline = bw_n / weight_bytes;

  std::printf("model: %s, %d threads\n", model_path.c_str(), threads);
  std::printf("weights read per decoded token: %.1f MB\n", weight_bytes / 1e6);
  std::printf("decode: %d tokens after a %d-token prompt: %.1f tok/s (%.2f ms/token)\n",
              decode_tokens, prompt_tokens, decode_tps, 1e3 / decode_tps);
  std::printf("decode roofline (%d-thread bandwidth / bytes per token): %.1f tok/s -> %.0f%%\n",
              threads, roofline, 100.0 * decode_tps / roofline);
  std::printf("prefill: %d tokens in %.3f s: %.1f tok/s, %.1f GFLOP/s = %.0f%% of sgemm\n",
              prompt_tokens, prefill_s, prompt_tokens / prefill_s, prefill_flops / prefill_s / 1e9,
              100.0 * prefill_flops / prefill_s / 1e9 / sgemm);
  if (o.op_times) PrintOpTimes("prefill", prefill_ops, prefill_s, 1);
  std::printf(
      "batched decode compute bound (%.2f GMAC per token at %.0f G products/s, %s): %.1f tok/s "
      "= %.2fx the decode roofline: the most batching can give on this machine\n",
      flops_per_token / 2e9, products_per_s / 1e9, CpuPrecisionName(cpu.precision()), compute_bound,
      compute_bound / roofline);

  // ---- batched decode ----
  double one = 0.0;
  for (int b : o.batch) {
    if (b < 1) continue;
    double step_s = 0.0;
    const double tps = BatchedDecode(**runner, prompt, b, decode_tokens, blocks, o.interleave,
                                     o.shared_kv, &backend, &step_s);
    if (one == 0.0) one = b == 1 ? tps : 0.0;
    std::printf(
        "batched decode: %2d sequences x %d steps: %7.1f tok/s aggregate, %6.2f ms/step, %3.0f%% "
        "of the compute bound%s\n",
        b, decode_tokens, tps, 1e3 * b / tps, 100.0 * tps / compute_bound,
        one > 0.0 ? (", " + std::to_string(tps / one).substr(0, 4) + "x one sequence").c_str()
                  : "");
    if (o.op_times) {
      PrintOpTimes("step", backend.totals(), step_s, decode_tokens);
      PrintMatMuls(backend.matmuls(), decode_tokens, products_per_s);
    }
  }
  return 0;
}

}  // namespace
}  // namespace tpserve

int main(int argc, char** argv) {
  CLI::App app{"tpserve engine benchmark"};
  const char* models = std::getenv("TPSERVE_MODELS");
  std::string model =
      std::string(models ? models : std::string(std::getenv("HOME")) + "/.cache/tpserve/models") +
      "/SmolLM2-135M-Instruct.Q4_1.gguf";
  tpserve::Options o;
  o.model = model;
  app.add_option("--model", o.model, "a .gguf file or a Hugging Face model folder");
  app.add_option("--threads", o.threads, "CPU threads");
  app.add_option("--prompt-tokens", o.prompt_tokens, "prefill length");
  app.add_option("--decode-tokens", o.decode_tokens, "tokens to decode (per batched run too)");
  app.add_option("--precision", o.precision, "CPU matmul precision: int8x2, int8, fp32 or default")
      ->check(CLI::IsMember({"int8x2", "int8", "fp32", "default"}));
  app.add_option("--kv-dtype", o.kv_dtype, "KV cache element type: auto, fp16, fp32 or int8")
      ->check(CLI::IsMember({"auto", "fp16", "fp32", "int8"}));
  app.add_option("--batch", o.batch, "batch sizes for the batched decode runs, e.g. 1,8,32")
      ->delimiter(',');
  app.add_flag("--op-times", o.op_times, "print each batched run's step time split by op");
  app.add_option("--block-size", o.block_size, "KV cache positions per block")
      ->check(CLI::Range(1, 1024));
  app.add_flag("--interleave-blocks", o.interleave,
               "batched runs: the sequences' blocks interleaved in the pool, as a server's are");
  app.add_flag("--shared-kv", o.shared_kv,
               "batched runs: every sequence reads sequence 0's blocks (attention from cache: its "
               "arithmetic without DRAM reads; a diagnostic)");
  CLI11_PARSE(app, argc, argv);
  return tpserve::Run(o);
}
