// Decode attention over the paged KV cache on the CPU backend, against memory bandwidth.
//
// B sequences of `context` cached positions each decode one token, through `layers` separate
// layer pools (so the KV read per step, like a real model's, is far beyond the caches), with
// SmolLM2-135M's heads by default (9 query heads, 3 KV heads, hd 64). Block tables are shuffled
// (--scatter, default on): a server's blocks come from a free list in no particular order. Prints
// ms per step (all layers), the KV bytes read per step and GB/s against the machine's read
// bandwidth measured in the same run. Nothing is asserted.
//
// Usage: attention_bench [--batch 8,32] [--context 160,1024] [--layers 30] [--heads 9]
//                        [--kv-heads 3] [--head-dim 64] [--block-size 16] [--kv-dtype
//                        fp16|fp32|int8]
//                        [--threads 2] [--steps 20] [--scatter 1] [--huge-pages 0]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/engine/bandwidth.h"
#include "common/format/dtype.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/backend/host_memory.h"

namespace tpserve {
namespace {

struct Options {
  std::vector<int> batch{8, 32};
  std::vector<int> context{160, 1024};
  int layers = 30, heads = 9, kv_heads = 3, head_dim = 64, block_size = 16, threads = 2;
  int steps = 20;
  bool scatter = true;
  bool huge_pages = false;
  std::string kv_dtype = "fp16";
};

// Pools of one layer, filled with random values (attention's cost does not depend on them).
struct LayerPools {
  std::shared_ptr<void> k, v;
};

// A pool's memory: 4 KB pages, as the engine's KV pools, or transparent huge pages as the weights'
// (host_memory.h).
std::shared_ptr<void> PoolBuffer(size_t bytes, bool huge_pages) {
  if (huge_pages) return HugePageBuffer(bytes);
  void* p = std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
  if (p == nullptr) std::abort();
  return std::shared_ptr<void>(p, std::free);
}

double RunCase(CpuBackend& backend, const Options& o, KvDType dtype, int batch, int context,
               std::mt19937& rng, double* bytes_per_step) {
  const int64_t bs = o.block_size, hd = o.head_dim, kvh = o.kv_heads;
  const int64_t blocks_per_seq = (context + 1 + bs - 1) / bs;
  const int64_t num_blocks = blocks_per_seq * batch;
  const size_t pool_bytes = static_cast<size_t>(num_blocks * kvh * KvTileBytes(dtype, bs, hd));
  std::vector<LayerPools> layers(o.layers);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  // Every position of every block written through WriteKv (the engine's path, whatever the
  // dtype), 1024 at a time.
  std::vector<int64_t> all_slots(num_blocks * bs);
  std::iota(all_slots.begin(), all_slots.end(), 0);
  const auto view_of = [&](const LayerPools& l) {
    return KvLayerView{.k = l.k.get(),
                       .v = l.v.get(),
                       .dtype = dtype,
                       .num_blocks = num_blocks,
                       .block_size = bs,
                       .kv_heads = kvh,
                       .head_dim = hd};
  };
  for (LayerPools& l : layers) {
    l.k = PoolBuffer(pool_bytes, o.huge_pages);
    l.v = PoolBuffer(pool_bytes, o.huge_pages);
    const KvLayerView view = view_of(l);
    for (size_t at = 0; at < all_slots.size(); at += 1024) {
      const int64_t n = static_cast<int64_t>(std::min<size_t>(1024, all_slots.size() - at));
      std::vector<float> kv(n * kvh * hd * 2);
      for (float& x : kv) x = u(rng);
      Tensor k = backend.FromHost(std::span(kv).first(n * kvh * hd), {n, kvh, hd});
      Tensor v = backend.FromHost(std::span(kv).last(n * kvh * hd), {n, kvh, hd});
      backend.WriteKv(k, v, std::span(all_slots).subspan(at, n), view);
    }
  }
  std::vector<int32_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  if (o.scatter) std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<AttentionSeq> seqs(batch);
  for (int s = 0; s < batch; ++s) {
    seqs[s] = AttentionSeq{
        .token_begin = s,
        .num_tokens = 1,
        .start_pos = context,
        .block_table = std::span<const int32_t>(ids.data() + s * blocks_per_seq, blocks_per_seq)};
  }
  std::vector<float> qv(static_cast<size_t>(batch) * o.heads * hd);
  for (float& x : qv) x = u(rng);
  Tensor q = backend.FromHost(qv, {batch, o.heads, hd});
  Tensor out = backend.Alloc({batch, o.heads, hd});
  const AttentionParams params{.scale = 1.0f / std::sqrt(static_cast<float>(hd)),
                               .group_size = o.heads / o.kv_heads};
  auto step = [&] {
    for (const LayerPools& l : layers) backend.Attention(q, view_of(l), seqs, params, &out);
  };
  step();  // warm-up
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < o.steps; ++i) step();
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / o.steps;
  // K and V of every cached position plus the query's own, every layer.
  *bytes_per_step = static_cast<double>(batch) * (context + 1) * kvh * 2 *
                    KvTileBytes(dtype, bs, hd) / bs * o.layers;
  return s;
}

int Run(const Options& o) {
  if (o.heads % o.kv_heads != 0) {
    std::fprintf(stderr, "attention_bench: --heads must be a multiple of --kv-heads\n");
    return 2;
  }
  const KvDType dtype = o.kv_dtype == "fp32"   ? KvDType::kFp32
                        : o.kv_dtype == "int8" ? KvDType::kInt8
                                               : KvDType::kFp16;
  CpuBackend backend(o.threads, CpuPrecision::kInt8x2, dtype);
  ThreadPool pool(o.threads);
  const double bw = MemoryReadBandwidth(pool);
  std::printf("memory read bandwidth: %.1f GB/s (%d threads)\n", bw / 1e9, o.threads);
  // The same tiles' reads alone, scattered as the kernel meets them, 3 tiles prefetched ahead.
  const int64_t tile = KvTileBytes(dtype, o.block_size, o.head_dim);
  const double scattered = ScatteredTileReadBandwidth(pool, tile, 3);
  std::printf(
      "scattered %lld-byte tile reads (3 ahead prefetched, no arithmetic): %.1f GB/s (%d "
      "threads)\n",
      static_cast<long long>(tile), scattered / 1e9, o.threads);
  std::printf("decode attention, %d layers, %d heads / %d KV heads, hd %d, block %d, KV %s, %s\n",
              o.layers, o.heads, o.kv_heads, o.head_dim, o.block_size, KvDTypeName(dtype),
              o.scatter ? "scattered blocks" : "blocks in order");
  std::printf("pools in %s\n", o.huge_pages ? "huge pages (advised)" : "4 KB pages");
  std::mt19937 rng(7);
  for (int context : o.context) {
    for (int batch : o.batch) {
      double bytes = 0.0;
      const double s = RunCase(backend, o, dtype, batch, context, rng, &bytes);
      std::printf(
          "batch %3d x context %5d: %7.3f ms/step, KV read %7.1f MB/step, %5.1f GB/s = %3.0f%% of "
          "read bandwidth, %3.0f%% of scattered tile reads\n",
          batch, context, 1e3 * s, bytes / 1e6, bytes / s / 1e9, 100.0 * bytes / s / bw,
          100.0 * bytes / s / scattered);
    }
  }
  return 0;
}

}  // namespace
}  // namespace tpserve

int main(int argc, char** argv) {
  CLI::App app{"tpserve decode attention benchmark"};
  tpserve::Options o;
  app.add_option("--batch", o.batch, "sequences decoding together, e.g. 8,32")->delimiter(',');
  app.add_option("--context", o.context, "cached positions per sequence, e.g. 160,1024")
      ->delimiter(',');
  app.add_option("--layers", o.layers, "layer pools per step");
  app.add_option("--heads", o.heads, "query heads");
  app.add_option("--kv-heads", o.kv_heads, "KV heads");
  app.add_option("--head-dim", o.head_dim, "head dimension");
  app.add_option("--block-size", o.block_size, "positions per KV block");
  app.add_option("--kv-dtype", o.kv_dtype, "fp16, fp32 or int8")
      ->check(CLI::IsMember({"fp16", "fp32", "int8"}));
  app.add_option("--threads", o.threads, "CPU threads");
  app.add_option("--steps", o.steps, "timed steps per case");
  app.add_option("--scatter", o.scatter, "shuffle the block tables (1) or keep them in order (0)");
  app.add_option("--huge-pages", o.huge_pages,
                 "pools in 4 KB pages as the engine's (0) or transparent huge pages (1)");
  CLI11_PARSE(app, argc, argv);
  return tpserve::Run(o);
}
