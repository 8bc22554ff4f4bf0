// CPU element-wise, position, vocabulary and attention ops against scalar double references on
// random inputs with odd sizes.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <thread>

#include "common/format/dtype.h"
#include "tests/worker/backend/random_weights.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/backend/cpu/thread_pool.h"
#include "worker/backend/cpu/vec_math.h"
#include "worker/backend/rope.h"

namespace tpserve {
namespace {

using testing::MakeRandomMatrix;
using testing::RandomFloats;

TEST(ThreadPool, ParallelForCoversEveryIndexOnce) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (int64_t n : {1, 2, 7, 64, 1000, 4097}) {
      for (int64_t grain : {1, 16, 128}) {
        std::vector<std::atomic<int>> hits(n);
        pool.ParallelFor(n, grain, [&](int64_t b, int64_t e) {
          EXPECT_TRUE(b % grain == 0) << b;
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
        for (int64_t i = 0; i < n; ++i)
          ASSERT_EQ(hits[i].load(), 1) << n << " " << grain << " " << i;
      }
    }
  }
}

TEST(ThreadPool, ReturnsWhenTheCallerSleepsThroughTheLastChunks) {
  // Chunks slower than the pool's spin send the caller to sleep on the done counter; it must
  // be woken however the chunks' sizes add up (a chunk past the end once left it asleep).
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    for (int64_t n : {5, 17, 40, 100}) {
      std::vector<std::atomic<int>> hits(n);
      pool.ParallelFor(n, 1, [&](int64_t b, int64_t e) {
        std::this_thread::sleep_for(std::chrono::microseconds(300));
        for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << n << " " << i;
    }
  }
}

TEST(CpuOps, RmsNorm) {
  std::mt19937 rng(2);
  CpuBackend be(2);
  const int64_t rows = 5, n = 77;
  Tensor x = be.FromHost(RandomFloats(rows * n, rng, 3.0f), {rows, n});
  Tensor w = be.FromHost(RandomFloats(n, rng), {n});
  Tensor y = be.Alloc({rows, n});
  const float eps = 1e-5f;
  be.RmsNorm(x, w, eps, &y);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += double(x.row(r)[i]) * x.row(r)[i];
    const double inv = 1.0 / std::sqrt(ss / n + eps);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(y.row(r)[i], x.row(r)[i] * inv * w.data()[i], 1e-5) << r << " " << i;
    }
  }
  be.RmsNorm(x, w, eps, &x);  // in place gives the same
  for (int64_t i = 0; i < rows * n; ++i) EXPECT_EQ(x.data()[i], y.data()[i]);
}

TEST(CpuOps, SiluMulAddAndBias) {
  std::mt19937 rng(3);
  CpuBackend be(2);
  const int64_t rows = 3, n = 1001;
  Tensor g = be.FromHost(RandomFloats(rows * n, rng, 4.0f), {rows, n});
  Tensor u = be.FromHost(RandomFloats(rows * n, rng), {rows, n});
  Tensor out = be.Alloc({rows, n});
  be.SiluMul(g, u, &out);
  for (int64_t i = 0; i < rows * n; ++i) {
    const double gi = g.data()[i];
    EXPECT_NEAR(out.data()[i], gi / (1.0 + std::exp(-gi)) * u.data()[i], 1e-5) << i;
  }
  Tensor bias = be.FromHost(RandomFloats(n, rng), {n});
  Tensor y = be.FromHost(be.ToHost(u), {rows, n});
  be.AddBias(bias, &y);
  be.Add(g, &y);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_FLOAT_EQ(y.row(r)[i], u.row(r)[i] + bias.data()[i] + g.row(r)[i]);
    }
  }
}

TEST(Rope, InverseFrequencies) {
  RopeParams p{.head_dim = 16, .theta = 10000.0};
  const std::vector<float> plain = RopeInverseFrequencies(p);
  ASSERT_EQ(plain.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(plain[i], std::pow(10000.0, -2.0 * i / 16), 1e-6);
  p.scaling = RopeParams::Scaling::kLinear;
  p.factor = 4.0;
  const std::vector<float> linear = RopeInverseFrequencies(p);
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(linear[i], plain[i] / 4.0f);
  // llama3: wavelengths above original/low are divided by factor, below original/high kept,
  // and in between interpolated (Llama 3.1 rule).
  p.scaling = RopeParams::Scaling::kLlama3;
  p.factor = 8.0;
  p.low_freq_factor = 1.0;
  p.high_freq_factor = 4.0;
  p.original_max_position = 64;
  const std::vector<float> l3 = RopeInverseFrequencies(p);
  for (int i = 0; i < 8; ++i) {
    const double wavelen = 2 * M_PI / plain[i];
    if (wavelen < 64.0 / 4.0) {
      EXPECT_FLOAT_EQ(l3[i], plain[i]) << i;
    } else if (wavelen > 64.0) {
      EXPECT_FLOAT_EQ(l3[i], plain[i] / 8.0f) << i;
    } else {
      const double smooth = (64.0 / wavelen - 1.0) / (4.0 - 1.0);
      EXPECT_NEAR(l3[i], (1 - smooth) * plain[i] / 8.0 + smooth * plain[i], 1e-6 * plain[i]) << i;
    }
  }
}

TEST(CpuOps, RopeBothPairings) {
  std::mt19937 rng(4);
  CpuBackend be(1);
  const int64_t T = 4, heads = 3, hd = 12;
  const std::vector<int32_t> pos = {0, 1, 17, 250};
  const std::vector<float> inv = RopeInverseFrequencies({.head_dim = hd, .theta = 500.0});
  Tensor table = be.Alloc({T, hd});
  be.RopeTable(pos, inv, &table);
  for (bool interleaved : {false, true}) {
    const std::vector<float> x0 = RandomFloats(T * heads * hd, rng);
    Tensor x = be.FromHost(x0, {T, heads, hd});
    be.Rope(table, interleaved, &x);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        const float* in = &x0[(t * heads + h) * hd];
        const float* out = x.data() + (t * heads + h) * hd;
        for (int64_t i = 0; i < hd / 2; ++i) {
          const double a = double(pos[t]) * inv[i];
          const int64_t j0 = interleaved ? 2 * i : i, j1 = interleaved ? 2 * i + 1 : i + hd / 2;
          EXPECT_NEAR(out[j0], in[j0] * std::cos(a) - in[j1] * std::sin(a), 1e-4);
          EXPECT_NEAR(out[j1], in[j1] * std::cos(a) + in[j0] * std::sin(a), 1e-4);
        }
      }
    }
  }
}

TEST(CpuOps, EmbeddingOverAVocabRange) {
  std::mt19937 rng(5);
  CpuBackend be(1);
  for (DType t : {DType::kF32, DType::kBF16, DType::kQ8_0, DType::kQ4_1}) {
    SCOPED_TRACE(DTypeName(t));
    auto table = MakeRandomMatrix(t, 10, 64, rng);  // vocab rows [100, 110)
    const std::vector<int32_t> tokens = {100, 5, 109, 110, 104};
    Tensor out = be.Alloc({5, 64});
    be.Embedding(tokens, table.weight, 100, &out);
    for (int64_t r = 0; r < 5; ++r) {
      const int64_t local = tokens[r] - 100;
      for (int64_t i = 0; i < 64; ++i) {
        const float want = (local >= 0 && local < 10) ? table.dense[local * 64 + i] : 0.0f;
        EXPECT_NEAR(out.row(r)[i], want, 1e-6f * (1 + std::fabs(want))) << r << " " << i;
      }
    }
  }
}

// Two sequences (one continuing after cached positions, one fresh), GQA with 3 query heads per
// KV head, a rank's slice of heads, scattered block tables; reference in double over contiguous
// K/V.
TEST(VecMath, ExpShiftedSumAndMaxMatchLibm) {
  std::vector<float> x;
  for (float v = -90.0f; v <= 0.5f; v += 0.0137f) x.push_back(v);
  const float shift = -1.5f;
  std::vector<float> e = x;
  const float sum = ExpShiftedSum(e.data(), static_cast<int64_t>(e.size()), shift);
  double ref_sum = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double ref = std::exp(static_cast<double>(x[i]) - shift);
    ref_sum += ref;
    if (x[i] - shift >= -87.0f) {
      EXPECT_NEAR(e[i], ref, 4e-7 * ref) << x[i];
    } else {
      EXPECT_LE(e[i], 2e-38f) << x[i];  // clamped at e^-87
    }
  }
  EXPECT_NEAR(sum, ref_sum, 1e-5 * ref_sum);
  EXPECT_EQ(MaxOf(x.data(), static_cast<int64_t>(x.size())), x.back());
  EXPECT_EQ(MaxOf(x.data(), 5), x[4]);
}

struct AttentionCase {
  KvDType dtype;
  int64_t hd, block, rank_q_heads, rank_kv_heads, group_size, q_head_begin, kv_head_begin;
};

std::string CaseName(const AttentionCase& c) {
  return std::string(KvDTypeName(c.dtype)) + " hd " + std::to_string(c.hd) + " block " +
         std::to_string(c.block) + " q heads " + std::to_string(c.rank_q_heads) + " kv heads " +
         std::to_string(c.rank_kv_heads);
}

// The values a pool of `dtype` keeps of rows of `hd` values (int8: a step of max|x| / 127 per
// row, each value rounded to the nearest step).
std::vector<double> KeptRows(KvDType dtype, const std::vector<float>& x, int64_t hd) {
  std::vector<double> kept(x.size());
  for (size_t r = 0; r < x.size(); r += hd) {
    float amax = 0.0f;
    for (int64_t j = 0; j < hd; ++j) amax = std::max(amax, std::fabs(x[r + j]));
    for (int64_t j = 0; j < hd; ++j) {
      const float e = x[r + j];
      switch (dtype) {
        case KvDType::kFp16:
          kept[r + j] = HalfToFloat(FloatToHalf(e));
          break;
        case KvDType::kInt8:
          kept[r + j] = amax == 0.0f ? 0.0 : std::nearbyint(e * (127.0f / amax)) * (amax / 127.0f);
          break;
        case KvDType::kFp32:
          kept[r + j] = e;
          break;
      }
    }
  }
  return kept;
}

// Paged causal attention (two sequences with scattered blocks, one with a cached history, the
// sliding window off and on) against a double reference that reads the K/V values the pool
// keeps: exact fp32 math up to summation order, whatever the dtype.
void CheckPagedAttention(const AttentionCase& c) {
  SCOPED_TRACE(CaseName(c));
  std::mt19937 rng(6);
  CpuBackend be(2, CpuPrecision::kDefault, c.dtype);
  ASSERT_EQ(be.kv_dtype(), c.dtype);
  const int64_t hd = c.hd, block = c.block, num_blocks = 12;
  const AttentionParams params{.scale = 0.35f,
                               .group_size = c.group_size,
                               .q_head_begin = c.q_head_begin,
                               .kv_head_begin = c.kv_head_begin};
  const int64_t kvh = c.rank_kv_heads, qh = c.rank_q_heads, row = kvh * hd;
  const int64_t pool_floats = (num_blocks * kvh * KvTileBytes(c.dtype, block, hd) + 3) / 4;
  Tensor kpool = be.Alloc({pool_floats});
  Tensor vpool = be.Alloc({pool_floats});
  KvLayerView cache{.k = kpool.data(),
                    .v = vpool.data(),
                    .dtype = c.dtype,
                    .num_blocks = num_blocks,
                    .block_size = block,
                    .kv_heads = kvh,
                    .head_dim = hd};
  struct Seq {
    std::vector<int32_t> table;
    int64_t start, n;
  };
  // Positions per sequence fit in its blocks (block >= 4 here).
  const std::vector<Seq> seqs = {{{7, 2, 9}, block + 1, block + 2}, {{0, 11}, 0, block + 3}};
  // Full K/V histories per sequence: [positions, kv heads, hd].
  std::vector<std::vector<float>> K, V;
  std::vector<std::vector<double>> Kk, Vk;  // what the pool keeps of them
  for (const Seq& s : seqs) {
    K.push_back(RandomFloats((s.start + s.n) * row, rng));
    V.push_back(RandomFloats((s.start + s.n) * row, rng));
    Kk.push_back(KeptRows(c.dtype, K.back(), hd));
    Vk.push_back(KeptRows(c.dtype, V.back(), hd));
  }
  const auto slot = [&](const Seq& s, int64_t p) { return s.table[p / block] * block + p % block; };
  // Cached history of sequence 0 first (one write), then the step's new rows of both.
  {
    std::vector<int64_t> slots;
    for (int64_t p = 0; p < seqs[0].start; ++p) slots.push_back(slot(seqs[0], p));
    Tensor k = be.FromHost(std::span(K[0]).first(seqs[0].start * row), {seqs[0].start, kvh, hd});
    Tensor v = be.FromHost(std::span(V[0]).first(seqs[0].start * row), {seqs[0].start, kvh, hd});
    be.WriteKv(k, v, slots, cache);
  }
  const int64_t T = seqs[0].n + seqs[1].n;
  std::vector<float> knew, vnew;
  std::vector<int64_t> slots;
  std::vector<AttentionSeq> aseqs;
  int64_t at = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int64_t i = 0; i < seqs[s].n; ++i) {
      const int64_t p = seqs[s].start + i;
      knew.insert(knew.end(), &K[s][p * row], &K[s][(p + 1) * row]);
      vnew.insert(vnew.end(), &V[s][p * row], &V[s][(p + 1) * row]);
      slots.push_back(slot(seqs[s], p));
    }
    aseqs.push_back({.token_begin = at,
                     .num_tokens = seqs[s].n,
                     .start_pos = seqs[s].start,
                     .block_table = seqs[s].table});
    at += seqs[s].n;
  }
  be.WriteKv(be.FromHost(knew, {T, kvh, hd}), be.FromHost(vnew, {T, kvh, hd}), slots, cache);
  Tensor q = be.FromHost(RandomFloats(T * qh * hd, rng), {T, qh, hd});
  for (int64_t window : {int64_t{0}, block + 1}) {  // whole prefix, then a sliding window
    SCOPED_TRACE("window " + std::to_string(window));
    AttentionParams wparams = params;
    wparams.sliding_window = window;
    Tensor out = be.Alloc({T, qh, hd});
    be.Attention(q, cache, aseqs, wparams, &out);
    int64_t bad = 0;
    for (size_t s = 0; s < seqs.size(); ++s) {
      for (int64_t i = 0; i < seqs[s].n; ++i) {
        const int64_t t = aseqs[s].token_begin + i, ctx = seqs[s].start + i + 1;
        const int64_t first = window > 0 ? std::max<int64_t>(0, ctx - window) : 0;
        for (int64_t h = 0; h < qh; ++h) {
          const int64_t g = (c.q_head_begin + h) / c.group_size - c.kv_head_begin;
          const float* qv = q.data() + (t * qh + h) * hd;
          std::vector<double> w(ctx, 0.0);
          double mx = -1e300, sum = 0;
          for (int64_t p = first; p < ctx; ++p) {
            double d = 0;
            for (int64_t j = 0; j < hd; ++j) d += double(qv[j]) * Kk[s][(p * kvh + g) * hd + j];
            w[p] = d * params.scale;
            mx = std::max(mx, w[p]);
          }
          for (int64_t p = first; p < ctx; ++p) sum += (w[p] = std::exp(w[p] - mx));
          for (int64_t j = 0; j < hd; ++j) {
            double o = 0;
            for (int64_t p = first; p < ctx; ++p) o += w[p] / sum * Vk[s][(p * kvh + g) * hd + j];
            const float got = out.data()[(t * qh + h) * hd + j];
            if (std::fabs(got - o) > 1e-5 && bad++ < 5) {
              ADD_FAILURE() << "seq " << s << " token " << i << " head " << h << " dim " << j
                            << ": " << got << " vs " << o;
            }
          }
        }
      }
    }
    EXPECT_EQ(bad, 0);
    // Each token alone (as a decode step would see it) gives bitwise the output it got as part
    // of its sequence's chunk, where it shared passes over K and V with the chunk's other tokens
    // (batch invariance: how a prompt is chunked must not change a single bit).
    int64_t differ = 0;
    for (size_t s = 0; s < seqs.size(); ++s) {
      for (int64_t i = 0; i < seqs[s].n; ++i) {
        const int64_t t = aseqs[s].token_begin + i;
        Tensor q1 =
            be.FromHost(std::span<const float>(q.data() + t * qh * hd, qh * hd), {1, qh, hd});
        const AttentionSeq one{.token_begin = 0,
                               .num_tokens = 1,
                               .start_pos = seqs[s].start + i,
                               .block_table = seqs[s].table};
        Tensor o1 = be.Alloc({1, qh, hd});
        be.Attention(q1, cache, std::span(&one, 1), wparams, &o1);
        differ += std::memcmp(o1.data(), out.data() + t * qh * hd, qh * hd * sizeof(float)) != 0;
      }
    }
    EXPECT_EQ(differ, 0) << "tokens whose output depends on the chunk they came in";
  }
}

TEST(CpuOps, PagedCausalAttentionMatchesReference) {
  for (KvDType dtype : {KvDType::kFp32, KvDType::kFp16, KvDType::kInt8}) {
    // Global q heads 3..5 -> global KV head 1 (tiny sizes, scalar tails everywhere).
    CheckPagedAttention({dtype, 8, 4, 3, 1, 3, 3, 1});
    // SmolLM2's shape: hd 64, blocks of 16, 9 q heads over 3 KV heads.
    CheckPagedAttention({dtype, 64, 16, 9, 3, 3, 0, 0});
    // Llama's hd 128 (two passes over V), 5 q heads per KV head (a pass of 4, then 1), blocks of
    // 20 (a vector of 16 positions and a masked one), hd not a multiple of 16 or 4.
    CheckPagedAttention({dtype, 128, 20, 10, 2, 5, 0, 0});
    CheckPagedAttention({dtype, 36, 32, 4, 2, 2, 0, 0});
    CheckPagedAttention({dtype, 6, 5, 2, 2, 1, 2, 2});
  }
}

TEST(CpuOps, Fp16KvPoolSaturatesInsteadOfOverflowing) {
  CpuBackend be(1, CpuPrecision::kDefault, KvDType::kFp16);
  const int64_t hd = 16, block = 16;
  Tensor kpool = be.Alloc({block * hd});
  Tensor vpool = be.Alloc({block * hd});
  KvLayerView cache{.k = kpool.data(),
                    .v = vpool.data(),
                    .dtype = KvDType::kFp16,
                    .num_blocks = 1,
                    .block_size = block,
                    .kv_heads = 1,
                    .head_dim = hd};
  std::vector<float> k(hd, 1.0f), v(hd, 0.5f);
  v[3] = 1e6f;  // beyond fp16's range: kept as 65504, not inf (which would make NaN outputs)
  std::vector<int64_t> slots = {0};
  be.WriteKv(be.FromHost(k, {1, 1, hd}), be.FromHost(v, {1, 1, hd}), slots, cache);
  Tensor q = be.FromHost(std::vector<float>(hd, 0.1f), {1, 1, hd});
  Tensor out = be.Alloc({1, 1, hd});
  const std::vector<int32_t> table = {0};
  const AttentionSeq seq{.token_begin = 0, .num_tokens = 1, .start_pos = 0, .block_table = table};
  be.Attention(q, cache, std::span(&seq, 1), AttentionParams{.scale = 0.25f}, &out);
  EXPECT_EQ(out.data()[3], 65504.0f);
  EXPECT_EQ(out.data()[0], 0.5f);
}

}  // namespace
}  // namespace tpserve
