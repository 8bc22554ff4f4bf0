// CUDA backend throughput on a random-weight model with Llama-3-8B shapes (hidden 4096, 32
// layers, 32 heads, 8 KV heads, head dim 128, FFN 14336, vocab 128256), bf16 weights made on the
// device (no file, no host traffic). The forward pass is the llama architecture's, written here
// against the Backend ops directly (the model loader needs a file).
//
// Prints, as a table: batch-1 decode tokens/s and the fraction of the memory-bandwidth bound
// (weight bytes per token / bandwidth); prefill tokens/s and the fraction of dense bf16 peak
// (2 * matmul parameters FLOPs per token); and output tokens/s for a batch of 64 requests with
// 128-token prompts and 128 output tokens (one prefill step, then 128 decode steps).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/status_macros.h"
#include "worker/backend/cuda/cuda_backend.h"
#include "worker/backend/rope.h"
#include "worker/kv/kv_cache.h"

namespace tpserve {
namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
  int64_t hidden = 4096, layers = 32, heads = 32, kv_heads = 8, head_dim = 128, ffn = 14336,
          vocab = 128256;
};

struct Layer {
  Tensor attn_norm, ffn_norm;
  Weight wq, wk, wv, wo, gate, up, down;
};

struct Model {
  Shape s;
  Weight embedding, lm_head;
  Tensor final_norm;
  std::vector<Layer> layers;
  std::vector<float> inv_freq;
  size_t weight_bytes = 0;   // read once per decode step
  double matmul_params = 0;  // per token: 2 * this FLOPs
};

absl::StatusOr<Model> MakeModel(CudaBackend& be, const Shape& s) {
  Model m;
  m.s = s;
  uint64_t seed = 1;
  auto weight = [&](int64_t rows, int64_t cols) -> absl::StatusOr<Weight> {
    // Scale 1/sqrt(cols) keeps activations O(1) through 32 layers.
    ASSIGN_OR_RETURN(Weight w, be.RandomWeight(rows, cols, 1.0f / std::sqrt(float(cols)), seed++));
    m.weight_bytes += w.bytes();
    return w;
  };
  const std::vector<float> ones(s.hidden, 1.0f);
  ASSIGN_OR_RETURN(m.embedding, be.RandomWeight(s.vocab, s.hidden, 1.0f, seed++));
  ASSIGN_OR_RETURN(m.lm_head, weight(s.vocab, s.hidden));
  m.final_norm = be.FromHost(ones, {s.hidden});
  const int64_t q = s.heads * s.head_dim, kv = s.kv_heads * s.head_dim;
  for (int64_t l = 0; l < s.layers; ++l) {
    Layer L;
    L.attn_norm = be.FromHost(ones, {s.hidden});
    L.ffn_norm = be.FromHost(ones, {s.hidden});
    ASSIGN_OR_RETURN(L.wq, weight(q, s.hidden));
    ASSIGN_OR_RETURN(L.wk, weight(kv, s.hidden));
    ASSIGN_OR_RETURN(L.wv, weight(kv, s.hidden));
    ASSIGN_OR_RETURN(L.wo, weight(s.hidden, q));
    ASSIGN_OR_RETURN(L.gate, weight(s.ffn, s.hidden));
    ASSIGN_OR_RETURN(L.up, weight(s.ffn, s.hidden));
    ASSIGN_OR_RETURN(L.down, weight(s.hidden, s.ffn));
    m.layers.push_back(std::move(L));
  }
  m.matmul_params = static_cast<double>(m.weight_bytes) / 2.0;
  m.inv_freq = RopeInverseFrequencies(RopeParams{.head_dim = s.head_dim, .theta = 500000.0});
  RETURN_IF_ERROR(be.Synchronize());
  return m;
}

struct Seq {
  std::vector<int32_t> tokens;
  int64_t start_pos = 0;
  std::vector<int32_t> table;
};

// One step over `seqs`; returns the greedy next token of each (sampled on the device). The layer
// is LlamaModel's on one rank (worker/model/llama.cc: q/k/v and gate/up sharing their bf16 input,
// residual adds in the o/down GEMMs). With `record`, a decode step is padded to a recorded size
// and run through RunRecorded (a CUDA graph after its first time), as LlamaModel does.
absl::StatusOr<std::vector<int32_t>> Forward(CudaBackend& be, const Model& m, KvCache& cache,
                                             const std::vector<Seq>& seqs, bool record) {
  const Shape& s = m.s;
  const int64_t H = s.hidden, hd = s.head_dim, nq = s.heads, nkv = s.kv_heads;
  std::vector<int32_t> tokens, positions, last_rows;
  std::vector<int64_t> slots;
  std::vector<AttentionSeq> attn;
  const int64_t bs = cache.config().block_size;
  bool decode = true;
  for (const Seq& q : seqs) {
    const int64_t begin = static_cast<int64_t>(tokens.size());
    decode &= q.tokens.size() == 1;
    for (size_t i = 0; i < q.tokens.size(); ++i) {
      const int64_t p = q.start_pos + static_cast<int64_t>(i);
      tokens.push_back(q.tokens[i]);
      positions.push_back(static_cast<int32_t>(p));
      slots.push_back(KvCache::Slot(q.table, bs, p));
    }
    last_rows.push_back(static_cast<int32_t>(begin + q.tokens.size() - 1));
    attn.push_back({.token_begin = begin,
                    .num_tokens = static_cast<int64_t>(q.tokens.size()),
                    .start_pos = q.start_pos,
                    .block_table = q.table});
  }
  const int64_t real_rows = static_cast<int64_t>(last_rows.size());
  record &= decode && static_cast<int64_t>(tokens.size()) <= be.max_recorded_rows();
  if (record) {
    for (int64_t t = static_cast<int64_t>(tokens.size()); t < RecordedRows(real_rows); ++t) {
      tokens.push_back(0);
      positions.push_back(0);
      slots.push_back(kNoKvSlot);
      last_rows.push_back(static_cast<int32_t>(t));
    }
  }
  const int64_t T = static_cast<int64_t>(tokens.size());
  Tensor logits;
  auto body = [&]() -> absl::Status {
    Tensor x = be.AllocUninitialized({T, H});
    be.Embedding(tokens, m.embedding, 0, &x);
    Tensor cos_sin = be.AllocUninitialized({T, hd});
    be.RopeTable(positions, m.inv_freq, &cos_sin);
    // As the model does (worker/model/llama.cc): bf16 activations around the matmuls.
    Tensor h = be.AllocActivation({T, H}), q = be.AllocActivation({T, nq, hd}),
           k = be.AllocActivation({T, nkv, hd}), v = be.AllocActivation({T, nkv, hd}),
           o = be.AllocActivation({T, nq, hd}), gate = be.AllocActivation({T, s.ffn}),
           up = be.AllocActivation({T, s.ffn});
    Tensor q2 = q.Reshaped({T, nq * hd}), k2 = k.Reshaped({T, nkv * hd}),
           v2 = v.Reshaped({T, nkv * hd}), o2 = o.Reshaped({T, nq * hd});
    const AttentionParams params{.scale = 1.0f / std::sqrt(float(hd)), .group_size = nq / nkv};
    for (int64_t l = 0; l < s.layers; ++l) {
      const Layer& L = m.layers[l];
      const KvLayerView kv = cache.layer(l);
      be.RmsNorm(x, L.attn_norm, 1e-5f, &h);
      {
        const Weight* w[] = {&L.wq, &L.wk, &L.wv};
        Tensor* y[] = {&q2, &k2, &v2};
        be.MatMulShared(h, w, y);
      }
      be.RopeQK(cos_sin, false, &q, &k);
      be.WriteKv(k, v, slots, kv);
      be.Attention(q, kv, attn, params, &o);
      be.MatMulAdd(o2, L.wo, &x);
      be.RmsNorm(x, L.ffn_norm, 1e-5f, &h);
      {
        const Weight* w[] = {&L.gate, &L.up};
        Tensor* y[] = {&gate, &up};
        be.MatMulShared(h, w, y);
      }
      be.SiluMul(gate, up, &gate);
      be.MatMulAdd(gate, L.down, &x);
    }
    const int64_t R = static_cast<int64_t>(last_rows.size());
    Tensor last = be.AllocUninitialized({R, H});
    be.Embedding(last_rows, RowsAsWeight(x), 0, &last);
    logits = be.AllocUninitialized({R, s.vocab});
    Tensor last_normed = be.AllocActivation({R, H});
    be.RmsNorm(last, m.final_norm, 1e-5f, &last_normed);
    be.MatMul(last_normed, m.lm_head, &logits);
    return absl::OkStatus();
  };
  if (record) {
    RETURN_IF_ERROR(be.RunRecorded(absl::StrCat("bench decode ", T), false, body));
  } else {
    RETURN_IF_ERROR(body());
  }
  std::vector<SamplingParams> greedy(real_rows);
  std::vector<uint64_t> steps(real_rows, 0);
  return be.SampleTokens(logits.Slice0(0, real_rows), greedy, steps);
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Row {
  std::string what;
  double tok_s;
  std::string fraction;
};

// `batch` sequences with `prompt` tokens each, then `decode` greedy steps. Returns (prefill
// seconds, decode seconds).
absl::StatusOr<std::pair<double, double>> Run(CudaBackend& be, const Model& m, KvCache& cache,
                                              int64_t batch, int64_t prompt, int64_t decode,
                                              bool record = true) {
  const int64_t bs = cache.config().block_size;
  const int64_t per_seq = (prompt + decode + bs - 1) / bs;
  if (batch * per_seq > cache.config().num_blocks) {
    return absl::ResourceExhaustedError("KV pool too small for the benchmark");
  }
  std::vector<Seq> seqs(batch);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < prompt; ++i) {
      seqs[b].tokens.push_back(static_cast<int32_t>((b * 7919 + i * 104729) % m.s.vocab));
    }
    for (int64_t i = 0; i < per_seq; ++i) seqs[b].table.push_back(int32_t(b * per_seq + i));
  }
  const auto t0 = Clock::now();
  ASSIGN_OR_RETURN(std::vector<int32_t> next, Forward(be, m, cache, seqs, record));
  const auto t1 = Clock::now();
  for (int64_t step = 0; step < decode; ++step) {
    for (int64_t b = 0; b < batch; ++b) {
      seqs[b].start_pos += static_cast<int64_t>(seqs[b].tokens.size());
      seqs[b].tokens = {next[b]};
    }
    ASSIGN_OR_RETURN(next, Forward(be, m, cache, seqs, record));
  }
  const auto t2 = Clock::now();
  return std::make_pair(Seconds(t0, t1), Seconds(t1, t2));
}

// Run sizes: Llama-3-8B's table, or a tiny model with tiny runs (--smoke) that only checks that
// the benchmark runs end to end (the CUDA emulator runs it in ctest; figures meaningless).
struct Runs {
  int64_t b1_prompt = 128, b1_decode = 64, pf_batch = 4, pf_prompt = 1024, big_batch = 64,
          big_prompt = 128, big_decode = 128, long_ctx = 8192, long_decode = 32;
};

absl::Status Main(int device, double bandwidth_tbs, double peak_tflops, int64_t layers,
                  bool smoke) {
  ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> be,
                   CudaBackend::Create({.device = device, .precision = CudaPrecision::kBf16}));
  Shape shape;
  shape.layers = layers;
  Runs runs;
  if (smoke) {
    shape = Shape{.hidden = 128,
                  .layers = 2,
                  .heads = 4,
                  .kv_heads = 2,
                  .head_dim = 32,
                  .ffn = 256,
                  .vocab = 512};
    runs = Runs{.b1_prompt = 8,
                .b1_decode = 3,
                .pf_batch = 2,
                .pf_prompt = 40,
                .big_batch = 5,
                .big_prompt = 6,
                .big_decode = 3,
                .long_ctx = 600,  // beyond one 512-position attention chunk
                .long_decode = 2};
  }
  const auto load0 = Clock::now();
  ASSIGN_OR_RETURN(Model m, MakeModel(*be, shape));
  std::printf("model: %s shapes, %lld layers, %.2f GB of bf16 matmul weights, made in %.1f s\n",
              smoke ? "tiny (--smoke)" : "Llama-3-8B", static_cast<long long>(shape.layers),
              m.weight_bytes / 1e9, Seconds(load0, Clock::now()));
  // KV pool: 80% of what is free now, at most what the runs need (64 x 256 positions + slack).
  ASSIGN_OR_RETURN(size_t free_bytes, be->FreeMemoryBytes());
  KvCacheConfig kv{.num_layers = shape.layers,
                   .num_blocks = 0,
                   .block_size = 16,
                   .kv_heads = shape.kv_heads,
                   .head_dim = shape.head_dim,
                   .dtype = be->kv_dtype()};
  const int64_t needed = std::max({runs.big_batch * ((runs.big_prompt + runs.big_decode + 15) / 16),
                                   runs.pf_batch * ((runs.pf_prompt + 15) / 16),
                                   (runs.long_ctx + runs.long_decode + 15) / 16});
  kv.num_blocks =
      std::min<int64_t>(static_cast<int64_t>(0.8 * free_bytes) / kv.BytesPerBlock(), needed + 256);
  ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(*be, kv));
  std::printf("KV pool: %lld blocks of 16 (%.2f GB %s)\n", static_cast<long long>(kv.num_blocks),
              kv.num_blocks * kv.BytesPerBlock() / 1e9, KvDTypeName(kv.dtype));

  // cuBLAS heuristics, pool warm-up, the batch-1 graph recorded at the contexts it will see.
  ASSIGN_OR_RETURN(auto warm, Run(*be, m, cache, 1, runs.b1_prompt, 4));
  (void)warm;
  std::vector<Row> rows;
  ASSIGN_OR_RETURN(auto b1, Run(*be, m, cache, 1, runs.b1_prompt, runs.b1_decode));
  const double decode_tok_s = runs.b1_decode / b1.second;
  const double bound = bandwidth_tbs * 1e12 / m.weight_bytes;
  rows.push_back({absl::StrFormat("decode, batch 1 (ctx %d-%d), graph", runs.b1_prompt,
                                  runs.b1_prompt + runs.b1_decode),
                  decode_tok_s,
                  absl::StrFormat("%.1f%% of %.1f TB/s bound (%.0f tok/s)",
                                  100 * decode_tok_s / bound, bandwidth_tbs, bound)});
  // The same steps op by op: what recording the decode steps as CUDA graphs gains.
  ASSIGN_OR_RETURN(auto b1_eager,
                   Run(*be, m, cache, 1, runs.b1_prompt, runs.b1_decode, /*record=*/false));
  const double eager_tok_s = runs.b1_decode / b1_eager.second;
  rows.push_back({"decode, batch 1, op by op (no graph)", eager_tok_s,
                  absl::StrFormat("%.1f%% of the bound; CUDA graph %.2fx",
                                  100 * eager_tok_s / bound, decode_tok_s / eager_tok_s)});
  ASSIGN_OR_RETURN(auto pf, Run(*be, m, cache, runs.pf_batch, runs.pf_prompt, 0));
  const double prefill_tok_s = double(runs.pf_batch * runs.pf_prompt) / pf.first;
  const double tflops = prefill_tok_s * 2 * m.matmul_params / 1e12;
  rows.push_back({absl::StrFormat("prefill, %d x %d tokens", runs.pf_batch, runs.pf_prompt),
                  prefill_tok_s,
                  absl::StrFormat("%.1f%% of %.0f TFLOP/s bf16 dense (%.0f TFLOP/s)",
                                  100 * tflops / peak_tflops, peak_tflops, tflops)});
  // The same prefill with the fp32 CUDA-core attention kernel: what the tensor cores gain.
  be->set_tensor_core_prefill(false);
  ASSIGN_OR_RETURN(auto pf_cores, Run(*be, m, cache, runs.pf_batch, runs.pf_prompt, 0));
  be->set_tensor_core_prefill(true);
  const double cores_tok_s = double(runs.pf_batch * runs.pf_prompt) / pf_cores.first;
  rows.push_back({"prefill, attention on CUDA cores", cores_tok_s,
                  absl::StrFormat("tensor-core attention %.2fx", prefill_tok_s / cores_tok_s)});
  // Batch 1 at a long context: the KV cache read every step adds to the weights; the decode
  // attention spreads each row's 512-position chunks over the GPU.
  ASSIGN_OR_RETURN(auto lc, Run(*be, m, cache, 1, runs.long_ctx, runs.long_decode));
  const double long_tok_s = runs.long_decode / lc.second;
  const double kv_bytes =  // per step, at the run's mean context
      double(runs.long_ctx + runs.long_decode / 2) * kv.BytesPerBlock() / kv.block_size;
  const double long_bound = bandwidth_tbs * 1e12 / (m.weight_bytes + kv_bytes);
  rows.push_back({absl::StrFormat("decode, batch 1 (ctx %d), graph", runs.long_ctx), long_tok_s,
                  absl::StrFormat("%.1f%% of %.1f TB/s bound with the KV reads (%.0f tok/s)",
                                  100 * long_tok_s / long_bound, bandwidth_tbs, long_bound)});
  ASSIGN_OR_RETURN(auto b64, Run(*be, m, cache, runs.big_batch, runs.big_prompt, runs.big_decode));
  const double out_tokens = double(runs.big_batch * runs.big_decode);
  rows.push_back({absl::StrFormat("batch %d, %d in + %d out: output", runs.big_batch,
                                  runs.big_prompt, runs.big_decode),
                  out_tokens / (b64.first + b64.second),
                  absl::StrFormat("prefill %.2f s, decode %.2f s (%.0f tok/s)", b64.first,
                                  b64.second, out_tokens / b64.second)});

  const CudaBackend::RecordedStats rs = be->recorded_stats();
  std::printf(
      "recorded decode steps (CUDA graphs): %lld graphs, %lld captures, %lld replays, %lld "
      "not recorded\n",
      static_cast<long long>(rs.graphs), static_cast<long long>(rs.captures),
      static_cast<long long>(rs.replays), static_cast<long long>(rs.fallbacks));
  std::printf("\n%-38s %12s  %s\n", "cuda_bench (bf16, random weights)", "tokens/s", "relative");
  for (const Row& r : rows)
    std::printf("%-38s %12.1f  %s\n", r.what.c_str(), r.tok_s, r.fraction.c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace tpserve

int main(int argc, char** argv) {
  CLI::App app("CUDA backend throughput, Llama-3-8B shapes with random bf16 weights");
  int device = 0;
  double bandwidth = 4.8, peak = 989.0;
  int64_t layers = 32;
  app.add_option("--device", device, "CUDA device ordinal");
  app.add_option("--bandwidth-tbs", bandwidth, "Memory bandwidth bound, TB/s (H200: 4.8)");
  app.add_option("--peak-tflops", peak, "Dense bf16 peak, TFLOP/s (H200 SXM: 989)");
  app.add_option("--layers", layers, "Decoder layers (32 for Llama-3-8B)");
  bool smoke = false;
  app.add_flag("--smoke", smoke, "A tiny model and tiny runs: checks that the benchmark runs");
  CLI11_PARSE(app, argc, argv);
  const absl::Status st = tpserve::Main(device, bandwidth, peak, layers, smoke);
  if (!st.ok()) {
    std::fprintf(stderr, "cuda_bench: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}
