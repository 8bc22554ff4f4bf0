// Op conformance (issue 6 "Proof"): every op of a backend against the CPU oracle, one table of
// cases run for each backend under test (cuda:0 in fp32 mode, tight tolerance; in bf16 mode,
// bf16 tolerance). Inputs are random normal values (never zeros), sizes are odd, and every output
// buffer starts poisoned with NaN so that an op that skips an element fails. Each op gets its
// tensors in the dtypes the model gives it (Backend::activation_dtype for the activations around
// the matmuls: bf16 on the bf16 backend, so the bf16 instance runs the bf16 paths).
//
// Label `gpu`: skips with the reason when ProbeDevices() finds no usable GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "tests/worker/backend/random_weights.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/backend/cuda/backend_factory.h"
#include "worker/backend/cuda/cuda_backend.h"
#include "worker/backend/cuda/cuda_probe.h"
#include "worker/backend/rope.h"
#include "worker/sampling/sampler.h"
#include "worker/service/logits_processing.h"

#if defined(TPSERVE_CUDA_EMULATOR)
#include "tpserve_cuda_emulator.h"
#endif

namespace tpserve {
namespace {

using testing::MakeRandomMatrix;
using testing::RandomFloats;

struct BackendUnderTest {
  std::string device;  // for ParseDevice
  double rtol;         // relative to max |reference| of the output
  double rtol_matmul;  // GEMMs: bf16 inputs lose ~3 significant digits
  // The KV pools' element type (nullopt: the backend's default); the oracle keeps the same, so
  // an fp16 pool's rounding is compared, not tolerated.
  std::optional<KvDType> kv = std::nullopt;
  std::string label;
};

std::ostream& operator<<(std::ostream& os, const BackendUnderTest& b) { return os << b.label; }
BackendUnderTest Under(std::string label, std::string device, double rtol, double rtol_matmul,
                       std::optional<KvDType> kv) {
  return BackendUnderTest{.device = std::move(device),
                          .rtol = rtol,
                          .rtol_matmul = rtol_matmul,
                          .kv = kv,
                          .label = std::move(label)};
}

// One op run on a backend: uploads its inputs, runs, returns the output(s) on the host.
using OpRun = std::function<std::vector<float>(Backend& be)>;
struct OpCase {
  std::string name;
  bool is_matmul = false;
  OpRun run;
};

Tensor Poisoned(Backend& be, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return be.FromHost(std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()),
                     std::move(shape));
}

// An activation (Backend::activation_dtype) of `values`, and one poisoned.
Tensor Act(Backend& be, const std::vector<float>& values, std::vector<int64_t> shape) {
  return be.ActivationFromHost(values, std::move(shape));
}
Tensor PoisonedAct(Backend& be, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return Act(be, std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()), std::move(shape));
}

// One layer's K and V pools in the backend's KV dtype (fp32 floats hold a pool of any dtype).
struct TestPool {
  Tensor k, v;
  KvLayerView view;
};
TestPool MakePool(Backend& be, int64_t blocks, int64_t bs, int64_t kv_heads, int64_t hd) {
  TestPool p{.k = be.Alloc({blocks * bs * kv_heads * hd}),
             .v = be.Alloc({blocks * bs * kv_heads * hd})};
  p.view = KvLayerView{.k = p.k.data(),
                       .v = p.v.data(),
                       .dtype = be.kv_dtype(),
                       .num_blocks = blocks,
                       .block_size = bs,
                       .kv_heads = kv_heads,
                       .head_dim = hd};
  return p;
}

TensorView ViewOf(const Weight& w) {
  return TensorView{.dtype = w.dtype,
                    .rows = w.rows,
                    .cols = w.cols,
                    .data = w.data,
                    .row_stride_bytes = w.row_stride_bytes};
}

std::vector<OpCase> MakeCases() {
  std::vector<OpCase> cases;
  auto rng = std::make_shared<std::mt19937>(1234);

  // ---- MatMul over the weight types GGUF/safetensors files hold; decode and prefill rows ----
  struct MatMulShape {
    DType dtype;
    int64_t n, out, in;
  };
  for (const MatMulShape& s :
       {MatMulShape{DType::kF32, 1, 77, 200}, MatMulShape{DType::kF32, 37, 131, 96},
        MatMulShape{DType::kBF16, 3, 65, 130}, MatMulShape{DType::kF16, 19, 33, 62},
        MatMulShape{DType::kQ8_0, 5, 49, 96}, MatMulShape{DType::kQ4_1, 41, 57, 128},
        MatMulShape{DType::kQ4_0, 1, 300, 64}}) {
    auto m = std::make_shared<testing::RandomMatrix>(
        MakeRandomMatrix(s.dtype, s.out, s.in, *rng, /*pad_bytes=*/s.dtype == DType::kF32 ? 8 : 0));
    auto x = std::make_shared<std::vector<float>>(RandomFloats(s.n * s.in, *rng));
    cases.push_back({std::string("MatMul_") + DTypeName(s.dtype) + "_n" + std::to_string(s.n), true,
                     [m, x, s](Backend& be) {
                       absl::StatusOr<Weight> w = be.LoadWeight(ViewOf(m->weight));
                       EXPECT_TRUE(w.ok()) << w.status();
                       Tensor y = Poisoned(be, {s.n, s.out});
                       // fp32 x for the fp32 weights (the bf16 backend rounds it), an activation
                       // (bf16 there) for the others.
                       be.MatMul(s.dtype == DType::kF32 ? be.FromHost(*x, {s.n, s.in})
                                                        : Act(be, *x, {s.n, s.in}),
                                 *w, &y);
                       return be.ToHost(y);
                     }});
  }

  // ---- the fused forms: a residual add in the product, several weights over one input ----
  for (DType dtype : {DType::kF32, DType::kQ4_1}) {
    const int64_t n = 9, in = 96;
    auto a = std::make_shared<testing::RandomMatrix>(MakeRandomMatrix(dtype, 70, in, *rng));
    auto b = std::make_shared<testing::RandomMatrix>(MakeRandomMatrix(dtype, 33, in, *rng));
    auto x = std::make_shared<std::vector<float>>(RandomFloats(n * in, *rng));
    auto residual = std::make_shared<std::vector<float>>(RandomFloats(n * 70, *rng));
    cases.push_back({std::string("MatMulAdd_") + DTypeName(dtype), true, [=](Backend& be) {
                       absl::StatusOr<Weight> w = be.LoadWeight(ViewOf(a->weight));
                       EXPECT_TRUE(w.ok()) << w.status();
                       Tensor y = be.FromHost(*residual, {n, 70});  // the fp32 residual stream
                       be.MatMulAdd(Act(be, *x, {n, in}), *w, &y);
                       return be.ToHost(y);
                     }});
    cases.push_back({std::string("MatMulShared_") + DTypeName(dtype), true, [=](Backend& be) {
                       absl::StatusOr<Weight> wa = be.LoadWeight(ViewOf(a->weight));
                       absl::StatusOr<Weight> wb = be.LoadWeight(ViewOf(b->weight));
                       EXPECT_TRUE(wa.ok() && wb.ok());
                       // q/k/v, gate/up: activations in and out.
                       Tensor ya = PoisonedAct(be, {n, 70}), yb = PoisonedAct(be, {n, 33});
                       const Weight* ws[] = {&*wa, &*wb};
                       Tensor* ys[] = {&ya, &yb};
                       be.MatMulShared(Act(be, *x, {n, in}), ws, ys);
                       std::vector<float> out = be.ToHost(ya);
                       const std::vector<float> second = be.ToHost(yb);
                       out.insert(out.end(), second.begin(), second.end());
                       return out;
                     }});
  }

  // ---- elementwise and norms ----
  {
    auto x = std::make_shared<std::vector<float>>(RandomFloats(7 * 577, *rng));
    auto y = std::make_shared<std::vector<float>>(RandomFloats(7 * 577, *rng));
    auto w = std::make_shared<std::vector<float>>(RandomFloats(577, *rng));
    cases.push_back(
        {"CopyColumns", false, [=](Backend& be) {
           Tensor dst = be.FromHost(*y, {7, 577});  // the other columns stay
           be.CopyColumns(be.FromHost(std::vector<float>(x->begin(), x->begin() + 7 * 61), {7, 61}),
                          300, &dst);
           return be.ToHost(dst);
         }});
    cases.push_back({"AddBias", false, [=](Backend& be) {
                       Tensor t = Act(be, *y, {7, 577});  // q/k/v
                       be.AddBias(be.FromHost(*w, {577}), &t);
                       return be.ToHost(t);
                     }});
    cases.push_back({"Add", false, [=](Backend& be) {
                       Tensor t = be.FromHost(*y, {7, 577});
                       be.Add(be.FromHost(*x, {7, 577}), &t);
                       return be.ToHost(t);
                     }});
    cases.push_back({"RmsNorm", false, [=](Backend& be) {
                       Tensor out = PoisonedAct(be, {7, 577});  // from the fp32 residual
                       be.RmsNorm(be.FromHost(*x, {7, 577}), be.FromHost(*w, {577}), 1e-5f, &out);
                       return be.ToHost(out);
                     }});
    cases.push_back({"RmsNormInPlace", false, [=](Backend& be) {
                       Tensor t = be.FromHost(*x, {7, 577});
                       be.RmsNorm(t, be.FromHost(*w, {577}), 1e-6f, &t);
                       return be.ToHost(t);
                     }});
    cases.push_back({"SiluMul", false, [=](Backend& be) {
                       Tensor out = PoisonedAct(be, {7, 577});
                       be.SiluMul(Act(be, *x, {7, 577}), Act(be, *y, {7, 577}), &out);
                       return be.ToHost(out);
                     }});
  }

  // ---- RoPE: both pairings, the three scalings, large positions ----
  for (RopeParams::Scaling scaling :
       {RopeParams::Scaling::kNone, RopeParams::Scaling::kLinear, RopeParams::Scaling::kLlama3}) {
    for (bool interleaved : {false, true}) {
      const RopeParams p{.head_dim = 64,
                         .theta = 500000.0,
                         .interleaved = interleaved,
                         .scaling = scaling,
                         .factor = 8.0};
      auto inv = std::make_shared<std::vector<float>>(RopeInverseFrequencies(p));
      auto x = std::make_shared<std::vector<float>>(RandomFloats(11 * 3 * 64, *rng));
      auto pos = std::make_shared<std::vector<int32_t>>();
      std::uniform_int_distribution<int32_t> any_pos(0, 9000);
      for (int i = 0; i < 11; ++i) pos->push_back(i < 3 ? i : any_pos(*rng));
      cases.push_back({"Rope_scaling" + std::to_string(static_cast<int>(scaling)) +
                           (interleaved ? "_interleaved" : "_half"),
                       false, [=](Backend& be) {
                         Tensor table = Poisoned(be, {11, 64});
                         be.RopeTable(*pos, *inv, &table);
                         Tensor t = Act(be, *x, {11, 3, 64});
                         be.Rope(table, interleaved, &t);
                         std::vector<float> out = be.ToHost(table);
                         std::vector<float> rotated = be.ToHost(t);
                         out.insert(out.end(), rotated.begin(), rotated.end());
                         return out;
                       }});
    }
  }

  // ---- vocab-parallel embedding: this rank holds rows [100, 100 + 53) ----
  for (DType dtype : {DType::kF32, DType::kQ8_0}) {
    auto table = std::make_shared<testing::RandomMatrix>(MakeRandomMatrix(dtype, 53, 96, *rng));
    auto tokens = std::make_shared<std::vector<int32_t>>(
        std::vector<int32_t>{100, 152, 7, 153, 130, 99, 100, 141, 5000});
    cases.push_back({std::string("Embedding_") + DTypeName(dtype), false, [=](Backend& be) {
                       absl::StatusOr<Weight> w = be.LoadWeight(ViewOf(table->weight));
                       EXPECT_TRUE(w.ok()) << w.status();
                       Tensor out = Poisoned(be, {9, 96});
                       be.Embedding(*tokens, *w, 100, &out);
                       return be.ToHost(out);
                     }});
  }

  // ---- KV writes and paged attention: decode batch and chunked prefill, GQA, padding row ----
  struct AttnCase {
    std::string name;
    int64_t hd;
    std::vector<AttentionSeq> seqs;  // block tables filled below
    int64_t rows;
  };
  const int64_t heads = 6, kv_heads = 2, global_kv = 3, bs = 16;
  for (int64_t hd : {64, 80, 128}) {  // 80: not a multiple of the 32 lanes
    for (const char* kind : {"decode", "prefill", "long_prefill", "long_decode", "large_queries"}) {
      if (kind == std::string("large_queries") && hd != 64) continue;
      const bool decode = kind == std::string("decode");
      const bool long_prefill = kind == std::string("long_prefill");
      const bool long_decode = kind == std::string("long_decode");
      // Decode rows of 9000 (chunks of 1024), 1300, 513 (two chunks) and 512 positions (one).
      const int64_t long_ctx[] = {9000, 1300, 513, 512};
      // The last block takes the padding row.
      const int64_t blocks = long_decode ? 711 : (long_prefill ? 40 : 24);
      // Sequence i uses blocks {3i+2, 3i+1, 3i, 12+i}, or i, i+3, ..., i+30 in reverse, or (long
      // decode) a range of its own in reverse: the table, not contiguity, matters.
      auto tables = std::make_shared<std::vector<std::vector<int32_t>>>();
      int32_t next_block = 0;
      for (int i = 0; i < 4; ++i) {
        if (long_decode) {
          const int32_t n = static_cast<int32_t>((long_ctx[i] + bs - 1) / bs);
          tables->emplace_back();
          for (int32_t b = next_block + n - 1; b >= next_block; --b) tables->back().push_back(b);
          next_block += n;
          continue;
        }
        if (!long_prefill) {
          tables->push_back({3 * i + 2, 3 * i + 1, 3 * i, 12 + i});
          continue;
        }
        tables->emplace_back();
        for (int j = 10; j >= 0; --j) tables->back().push_back(i + 3 * j);
      }
      std::vector<AttentionSeq> seqs;
      int64_t rows = 0;
      float q_scale = 1.0f, k_scale = 1.0f;
      if (long_decode) {  // several chunks a row, spread over the blocks of a small batch
        for (int i = 0; i < 4; ++i) {
          seqs.push_back({.token_begin = i, .num_tokens = 1, .start_pos = long_ctx[i] - 1});
        }
        rows = 5;
        q_scale = 3.0f;
      } else if (long_prefill) {
        // Several query tiles and K/V tiles on every kernel: a 150-token prompt; a 30-token chunk
        // after 70 cached (its rows see 71..100 positions: across a 64-position tile boundary);
        // a decode row; padding. Larger queries make the softmax peaked, so the running maximum
        // and the rescaling of earlier tiles matter.
        seqs.push_back({.token_begin = 0, .num_tokens = 150, .start_pos = 0});
        seqs.push_back({.token_begin = 150, .num_tokens = 30, .start_pos = 70});
        seqs.push_back({.token_begin = 180, .num_tokens = 1, .start_pos = 90});
        rows = 182;
        q_scale = 3.0f;
      } else if (decode) {  // contexts 1, 17, 40, 64; one padding row at the end
        const int64_t starts[] = {0, 16, 39, 63};
        for (int i = 0; i < 4; ++i) {
          seqs.push_back({.token_begin = i, .num_tokens = 1, .start_pos = starts[i]});
        }
        rows = 5;
      } else {  // a 37-token prompt, a 5-token chunk after 20 cached, a 1-token decode, padding
        if (kind == std::string("large_queries")) {
          // Query values beyond fp16's range (65504) against small keys: the scores are
          // ordinary, and a kernel that rounds the queries to fp16 unscaled makes them inf.
          q_scale = 7e4f;
          k_scale = 1e-4f;
        }
        seqs.push_back({.token_begin = 0, .num_tokens = 37, .start_pos = 0});
        seqs.push_back({.token_begin = 37, .num_tokens = 5, .start_pos = 20});
        seqs.push_back({.token_begin = 42, .num_tokens = 1, .start_pos = 50});
        rows = 44;
      }
      // Each sequence's cached history (positions before start_pos) is written with WriteKv
      // first, then the step's rows: the pools' layout is each backend's own (backend.h), so
      // only what Attention reads back through the block tables is compared.
      auto hist_slots = std::make_shared<std::vector<int64_t>>();
      for (size_t s = 0; s < seqs.size(); ++s) {
        for (int64_t p = 0; p < seqs[s].start_pos; ++p) {
          hist_slots->push_back((*tables)[s][p / bs] * bs + p % bs);
        }
      }
      const int64_t hist = static_cast<int64_t>(hist_slots->size());
      auto k_hist =
          std::make_shared<std::vector<float>>(RandomFloats(hist * kv_heads * hd, *rng, k_scale));
      auto v_hist = std::make_shared<std::vector<float>>(RandomFloats(hist * kv_heads * hd, *rng));
      auto q = std::make_shared<std::vector<float>>(RandomFloats(rows * heads * hd, *rng, q_scale));
      auto k =
          std::make_shared<std::vector<float>>(RandomFloats(rows * kv_heads * hd, *rng, k_scale));
      auto v = std::make_shared<std::vector<float>>(RandomFloats(rows * kv_heads * hd, *rng));
      if (kind == std::string("large_queries")) {
        // Values exact in bf16: a score moves by 1.4% of a probability per bf16 step of these
        // queries, so every instance is given the same ones (the case is about the kernels'
        // range, not the rounding of their inputs).
        for (std::vector<float>* xs : {q.get(), k.get(), k_hist.get()}) {
          for (float& x : *xs) x = BFloat16ToFloat(FloatToBFloat16(x));
        }
      }
      auto slots = std::make_shared<std::vector<int64_t>>();
      for (size_t s = 0; s < seqs.size(); ++s) {
        for (int64_t t = 0; t < seqs[s].num_tokens; ++t) {
          const int64_t p = seqs[s].start_pos + t;
          slots->push_back((*tables)[s][p / bs] * bs + p % bs);
        }
      }
      while (static_cast<int64_t>(slots->size()) < rows) {
        slots->push_back((blocks - 1) * bs);  // padding
      }
      cases.push_back({"Attention_hd" + std::to_string(hd) + "_" + kind, false, [=](Backend& be) {
                         std::vector<AttentionSeq> ss = seqs;
                         for (size_t s = 0; s < ss.size(); ++s) ss[s].block_table = (*tables)[s];
                         const TestPool pool = MakePool(be, blocks, bs, kv_heads, hd);
                         const KvLayerView& view = pool.view;
                         if (hist > 0) {
                           be.WriteKv(Act(be, *k_hist, {hist, kv_heads, hd}),
                                      Act(be, *v_hist, {hist, kv_heads, hd}), *hist_slots, view);
                         }
                         be.WriteKv(Act(be, *k, {rows, kv_heads, hd}),
                                    Act(be, *v, {rows, kv_heads, hd}), *slots, view);
                         Tensor out = PoisonedAct(be, {rows, heads, hd});
                         // This rank: global query heads 3..8 of 9, global KV heads 1..2 of 3
                         // (group 3).
                         be.Attention(
                             Act(be, *q, {rows, heads, hd}), view, ss,
                             AttentionParams{.scale = 1.0f / std::sqrt(static_cast<float>(hd)),
                                             .group_size = 3,
                                             .q_head_begin = 3,
                                             .kv_head_begin = 1},
                             &out);
                         return be.ToHost(out);
                       }});
      (void)global_kv;
    }
  }
  // ---- an op whose output feeds a matmul next, as in the model ----
  {
    const int64_t n = 7, in = 96;
    auto w = std::make_shared<testing::RandomMatrix>(MakeRandomMatrix(DType::kBF16, 50, in, *rng));
    auto x = std::make_shared<std::vector<float>>(RandomFloats(n * in, *rng));
    auto u = std::make_shared<std::vector<float>>(RandomFloats(n * in, *rng));
    auto norm = std::make_shared<std::vector<float>>(RandomFloats(in, *rng));
    auto residual = std::make_shared<std::vector<float>>(RandomFloats(n * 50, *rng));
    cases.push_back({"RmsNorm_then_MatMul", true, [=](Backend& be) {
                       absl::StatusOr<Weight> wt = be.LoadWeight(ViewOf(w->weight));
                       EXPECT_TRUE(wt.ok()) << wt.status();
                       const Tensor nw = be.FromHost(*norm, {in});
                       Tensor h = PoisonedAct(be, {n, in}), y = Poisoned(be, {n, 50});
                       be.RmsNorm(be.FromHost(*x, {n, in}), nw, 1e-5f, &h);
                       be.MatMul(h, *wt, &y);
                       return be.ToHost(y);
                     }});
    cases.push_back({"SiluMul_then_MatMulAdd", true, [=](Backend& be) {
                       absl::StatusOr<Weight> wt = be.LoadWeight(ViewOf(w->weight));
                       EXPECT_TRUE(wt.ok()) << wt.status();
                       Tensor g = Act(be, *x, {n, in}), y = be.FromHost(*residual, {n, 50});
                       be.SiluMul(g, Act(be, *u, {n, in}), &g);
                       be.MatMulAdd(g, *wt, &y);
                       return be.ToHost(y);
                     }});
  }
  return cases;
}

class OpsConformance : public ::testing::TestWithParam<BackendUnderTest> {
 protected:
  void SetUp() override {
    if (GetParam().device != "cpu") {
      absl::StatusOr<cuda::DeviceSummary> devices = cuda::ProbeDevices();
      if (!devices.ok()) GTEST_SKIP() << "no GPU here: " << devices.status();
    }
    if (GetParam().device == "cpu") {  // the harness against itself: the oracle's precision
      backend_ = std::make_unique<CpuBackend>(1, CpuPrecision::kFp32, GetParam().kv);
    } else {
      absl::StatusOr<DeviceSpec> spec = ParseDevice(GetParam().device);
      ASSERT_TRUE(spec.ok()) << spec.status();
      absl::StatusOr<std::unique_ptr<CudaBackend>> be = CudaBackend::Create(
          {.device = spec->index,
           .precision = spec->fp32 ? CudaPrecision::kFp32 : CudaPrecision::kBf16,
           .kv_dtype = GetParam().kv});
      ASSERT_TRUE(be.ok()) << be.status();
      backend_ = std::move(*be);
    }
    // The fp32 paths (what the GPU tolerances assume), with the KV pools of the backend under test.
    oracle_ = std::make_unique<CpuBackend>(2, CpuPrecision::kFp32, backend_->kv_dtype());
  }
  std::unique_ptr<CpuBackend> oracle_;
  std::unique_ptr<Backend> backend_;
};

TEST_P(OpsConformance, EveryOpMatchesTheCpuOracle) {
  for (const OpCase& c : MakeCases()) {
    SCOPED_TRACE(c.name);
    const std::vector<float> want = c.run(*oracle_);
    const std::vector<float> got = c.run(*backend_);
    ASSERT_EQ(got.size(), want.size());
    double max_ref = 0.0;
    for (float w : want) max_ref = std::max(max_ref, std::fabs(static_cast<double>(w)));
    ASSERT_GT(max_ref, 0.0) << "reference is all zeros: the case tests nothing";
    const double tol = (c.is_matmul ? GetParam().rtol_matmul : GetParam().rtol) * max_ref;
    int64_t bad = 0, first_bad = -1;
    for (size_t i = 0; i < want.size(); ++i) {
      if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= tol)) {  // NaN fails too
        if (bad++ == 0) first_bad = static_cast<int64_t>(i);
      }
    }
    EXPECT_EQ(bad, 0) << bad << " of " << want.size() << " elements beyond " << tol << "; first at "
                      << first_bad << ": got " << got[first_bad] << ", want " << want[first_bad];
  }
}

// Same seed, same step: the device draw equals the CPU sampler's (greedy exactly; filtered draws
// wherever both see the same distribution, which random continuous logits make almost sure).
TEST_P(OpsConformance, SamplingMatchesTheCpuSampler) {
  auto* cuda = dynamic_cast<CudaBackend*>(backend_.get());
  if (cuda == nullptr) GTEST_SKIP() << "device sampling is a CUDA backend feature";
  std::mt19937 rng(99);
  const int64_t rows = 48, V = 1001;
  std::vector<float> logits = RandomFloats(rows * V, rng, 3.0f);
  logits[6 * V + 17] = logits[6 * V + 900] = 50.0f;  // row 6 is greedy  // a tie: the lower id wins
  std::vector<SamplingParams> params(rows);
  std::vector<uint64_t> steps(rows);
  for (int64_t r = 0; r < rows; ++r) {
    params[r] = SamplingParams{.temperature = r % 6 == 0 ? 0.0f : 0.3f + 0.1f * (r % 9),
                               .top_k = r % 4 == 1 ? 20 : (r % 8 == 3 ? 1 : 0),
                               .top_p = r % 3 == 2 ? 0.9f : 1.0f,
                               .min_p = r % 5 == 4 ? 0.05f : 0.0f,
                               .seed = static_cast<uint64_t>(1000 + r)};
    steps[r] = static_cast<uint64_t>(r * 7);
  }
  absl::StatusOr<std::vector<int32_t>> got =
      cuda->SampleTokens(cuda->FromHost(logits, {rows, V}), params, steps);
  ASSERT_TRUE(got.ok()) << got.status();
  int mismatches = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t want =
        SampleToken(std::span<const float>(&logits[r * V], V), params[r], steps[r]);
    if (params[r].temperature <= 0.0f || params[r].top_k == 1) {
      EXPECT_EQ((*got)[r], want) << "greedy row " << r;
    } else {
      mismatches += (*got)[r] != want;
    }
  }
  EXPECT_LE(mismatches, 1) << "filtered draws differing from the CPU sampler";
  EXPECT_EQ((*got)[6], 17);
}

// The worker's entry point: draws from the listed rows only (a step's logits hold a row per
// sequence, some of which do not sample), each with its own parameters, seed and step.
TEST_P(OpsConformance, SampleOnDeviceDrawsTheListedRows) {
  if (!backend_->samples_on_device()) GTEST_SKIP() << backend_->name() << " samples on the host";
  std::mt19937 rng(7);
  const int64_t rows = 9, V = 777;
  std::vector<float> logits = RandomFloats(rows * V, rng, 3.0f);
  const std::vector<int64_t> picked = {5, 0, 8, 2};
  std::vector<Backend::DeviceDraw> draws;
  for (size_t i = 0; i < picked.size(); ++i) {
    draws.push_back({.temperature = i == 1 ? 0.0f : 0.9f,
                     .top_k = i == 2 ? 40 : 0,
                     .top_p = i == 3 ? 0.8f : 1.0f,
                     .seed = 77 + i,
                     .step = 3 * i});
  }
  absl::StatusOr<std::vector<Backend::DeviceDrawn>> got =
      backend_->SampleOnDevice(backend_->FromHost(logits, {rows, V}), picked, draws);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), picked.size());
  for (size_t i = 0; i < picked.size(); ++i) {
    const SamplingParams p{.temperature = draws[i].temperature,
                           .top_k = draws[i].top_k,
                           .top_p = draws[i].top_p,
                           .min_p = draws[i].min_p,
                           .seed = draws[i].seed};
    EXPECT_EQ((*got)[i].token,
              SampleToken(std::span<const float>(&logits[picked[i] * V], V), p, draws[i].step))
        << "draw " << i << " (row " << picked[i] << ")";
  }
  // Every row in one call: the logits themselves, no gather.
  std::vector<int64_t> all(rows);
  std::vector<Backend::DeviceDraw> greedy(rows);
  for (int64_t r = 0; r < rows; ++r) all[r] = r;
  absl::StatusOr<std::vector<Backend::DeviceDrawn>> argmax =
      backend_->SampleOnDevice(backend_->FromHost(logits, {rows, V}), all, greedy);
  ASSERT_TRUE(argmax.ok()) << argmax.status();
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = &logits[r * V];
    EXPECT_EQ((*argmax)[r].token, std::max_element(row, row + V) - row) << "row " << r;
  }
  const std::vector<int64_t> outside = {rows};
  const std::vector<Backend::DeviceDraw> one(1);
  EXPECT_EQ(
      backend_->SampleOnDevice(backend_->FromHost(logits, {rows, V}), outside, one).status().code(),
      absl::StatusCode::kInvalidArgument);
}

// The host's logits processing on the device: penalties, bias, suppressed ids, then the draw and
// the log-probs, against ApplyAdjustments, SampleToken and ComputeLogprobs on the same rows.
TEST_P(OpsConformance, SampleOnDeviceAppliesTheHostsAdjustmentsAndLogprobs) {
  if (!backend_->samples_on_device()) GTEST_SKIP() << backend_->name() << " samples on the host";
  std::mt19937 rng(11);
  const int64_t rows = 6, V = 901;
  std::vector<float> logits = RandomFloats(rows * V, rng, 3.0f);
  const std::vector<int64_t> picked = {4, 1, 3, 0, 5};
  std::vector<LogitsAdjustments> adjust(picked.size());
  std::vector<Backend::DeviceDraw> draws(picked.size());
  for (size_t i = 0; i < picked.size(); ++i) {
    LogitsAdjustments& a = adjust[i];
    a.repetition_penalty = i % 2 == 0 ? 1.3f : 1.0f;
    a.presence_penalty = i == 1 ? 0.5f : 0.0f;
    a.frequency_penalty = i == 2 ? 0.25f : 0.0f;
    for (int k = 0; k < 40; ++k) a.penalty_tokens.push_back(static_cast<int32_t>(rng() % 60));
    if (i != 3) a.logit_bias = {{7, 2.5f}, {700, -1.0f}, {7, 0.75f}};  // 7 twice: in order
    if (i == 4) a.suppressed_token_ids = {0, 1, 2, 900};
    Backend::DeviceDraw& d = draws[i];
    d.temperature = i == 0 ? 0.0f : 0.8f;
    d.top_p = i == 3 ? 0.9f : 1.0f;
    d.seed = 500 + i;
    d.step = i;
    d.repetition_penalty = a.repetition_penalty;
    d.presence_penalty = a.presence_penalty;
    d.frequency_penalty = a.frequency_penalty;
    std::map<int32_t, int32_t> counts;
    for (int32_t t : a.penalty_tokens) ++counts[t];
    d.penalty_counts.assign(counts.begin(), counts.end());
    d.logit_bias = a.logit_bias;
    d.suppressed = a.suppressed_token_ids;
    d.top_logprobs = i == 2 ? -1 : static_cast<int>(i * 2);  // none, only the token's, top 2..8
  }
  absl::StatusOr<std::vector<Backend::DeviceDrawn>> got =
      backend_->SampleOnDevice(backend_->FromHost(logits, {rows, V}), picked, draws);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), picked.size());
  for (size_t i = 0; i < picked.size(); ++i) {
    SCOPED_TRACE("draw " + std::to_string(i));
    std::vector<float> row(logits.begin() + picked[i] * V, logits.begin() + (picked[i] + 1) * V);
    ApplyAdjustments(adjust[i], row);
    const SamplingParams p{
        .temperature = draws[i].temperature, .top_p = draws[i].top_p, .seed = draws[i].seed};
    const int32_t want = SampleToken(row, p, draws[i].step);
    EXPECT_EQ((*got)[i].token, want);
    if (draws[i].top_logprobs < 0) {
      EXPECT_TRUE((*got)[i].top_ids.empty());
      continue;
    }
    const TokenLogprobs lp = ComputeLogprobs(row, want, draws[i].top_logprobs);
    EXPECT_NEAR((*got)[i].logprob, lp.logprob, 1e-5);
    EXPECT_EQ((*got)[i].top_ids, lp.top_ids);
    ASSERT_EQ((*got)[i].top_logprobs.size(), lp.top_logprobs.size());
    for (size_t j = 0; j < lp.top_logprobs.size(); ++j) {
      EXPECT_NEAR((*got)[i].top_logprobs[j], lp.top_logprobs[j], 1e-5) << "top " << j;
    }
  }
  // A token outside the vocabulary is refused, not written out of bounds.
  std::vector<Backend::DeviceDraw> bad(1);
  bad[0].logit_bias = {{static_cast<int32_t>(V), 1.0f}};
  const std::vector<int64_t> first = {0};
  EXPECT_EQ(
      backend_->SampleOnDevice(backend_->FromHost(logits, {rows, V}), first, bad).status().code(),
      absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(
    Cuda, OpsConformance,
    // "cpu" (a second CPU backend) checks the table itself on any machine:
    // every case has a non-zero reference and the oracle overwrites every
    // poisoned element. fp32_kv16: fp16 pools on both sides, so the tight fp32
    // tolerance holds for attention too; bf16 uses its default pools (fp16).
    ::testing::Values(Under("cpu_self", "cpu", 1e-6, 1e-6, KvDType::kFp32),
                      Under("cpu_self_kv16", "cpu", 1e-6, 1e-6, KvDType::kFp16),
                      Under("fp32", "cuda:0:fp32", 2e-5, 2e-5, KvDType::kFp32),
                      Under("fp32_kv16", "cuda:0:fp32", 2e-5, 2e-5, KvDType::kFp16),
                      Under("bf16", "cuda:0:bf16", 1e-2, 3e-2, std::nullopt)),
    [](const ::testing::TestParamInfo<BackendUnderTest>& info) { return info.param.label; });

// Runs `body` on a CUDA backend in bf16 mode and on one in fp32 mode.
void OnBf16AndFp32(const std::function<void(CudaBackend&)>& body) {
  for (CudaPrecision precision : {CudaPrecision::kBf16, CudaPrecision::kFp32}) {
    SCOPED_TRACE(precision == CudaPrecision::kBf16 ? "bf16" : "fp32");
    absl::StatusOr<std::unique_ptr<CudaBackend>> made =
        CudaBackend::Create({.device = 0, .precision = precision});
    ASSERT_TRUE(made.ok()) << made.status();
    body(**made);
  }
}

// A prompt row's attention is the same, bit for bit, however the prompt is chunked (into chunks of
// two rows or more: a one-row chunk takes the decode kernel) and whatever shares the step: the
// prefill kernels' tiles start wherever a chunk starts, and a row's sums must not depend on its
// place in a tile (bf16: the tensor-core kernel; fp32: the CUDA cores).
TEST(CudaPrefillAttention, RowsDoNotDependOnChunkingOrBatch) {
  absl::StatusOr<cuda::DeviceSummary> devices = cuda::ProbeDevices();
  if (!devices.ok()) GTEST_SKIP() << "no GPU here: " << devices.status();
  OnBf16AndFp32([](CudaBackend& be) {
    std::mt19937 rng(5);
    const int64_t heads = 4, kv_heads = 2, hd = 64, bs = 16, blocks = 16, n = 140;
    const TestPool pool = MakePool(be, blocks, bs, kv_heads, hd);
    const KvLayerView& view = pool.view;
    std::vector<int32_t> table;
    for (int b = 8; b >= 0; --b) table.push_back(b);  // 144 positions; blocks 9.. for the other
    const std::vector<int32_t> other_table = {12, 11};
    std::vector<int64_t> slots;
    for (int64_t p = 0; p < n; ++p) slots.push_back(table[p / bs] * bs + p % bs);
    for (int64_t p = 0; p < 20; ++p) slots.push_back(other_table[p / bs] * bs + p % bs);
    be.WriteKv(be.FromHost(RandomFloats((n + 20) * kv_heads * hd, rng), {n + 20, kv_heads, hd}),
               be.FromHost(RandomFloats((n + 20) * kv_heads * hd, rng), {n + 20, kv_heads, hd}),
               slots, view);
    const std::vector<float> q = RandomFloats(n * heads * hd, rng, 3.0f);
    const std::vector<float> other_q = RandomFloats(20 * heads * hd, rng, 3.0f);
    const AttentionParams params{.scale = 0.125f, .group_size = 2};
    const int64_t row = heads * hd;

    // Rows [begin, end) of the prompt as one chunk, after `lead` rows of another sequence's
    // 20-token prompt in the same step (0: alone).
    auto chunk = [&](int64_t begin, int64_t end, int64_t lead) {
      const int64_t rows = lead + end - begin;
      std::vector<float> qs(other_q.begin(), other_q.begin() + lead * row);
      qs.insert(qs.end(), q.begin() + begin * row, q.begin() + end * row);
      std::vector<AttentionSeq> seqs;
      if (lead > 0) {
        seqs.push_back({.token_begin = 0,
                        .num_tokens = lead,
                        .start_pos = 20 - lead,
                        .block_table = other_table});
      }
      seqs.push_back({.token_begin = lead,
                      .num_tokens = end - begin,
                      .start_pos = begin,
                      .block_table = table});
      Tensor out = Poisoned(be, {rows, heads, hd});
      be.Attention(be.FromHost(qs, {rows, heads, hd}), view, seqs, params, &out);
      std::vector<float> got = be.ToHost(out);
      return std::vector<float>(got.begin() + lead * row, got.end());
    };
    const std::vector<float> whole = chunk(0, n, 0);
    std::vector<float> pieces = chunk(0, 37, 0);
    for (const auto& [begin, end, lead] :
         {std::tuple<int64_t, int64_t, int64_t>{37, 101, 13}, {101, 140, 5}}) {
      const std::vector<float> part = chunk(begin, end, lead);
      pieces.insert(pieces.end(), part.begin(), part.end());
    }
    ASSERT_EQ(pieces.size(), whole.size());
    int64_t differ = 0;
    for (size_t i = 0; i < whole.size(); ++i) differ += !(pieces[i] == whole[i]);
    EXPECT_EQ(differ, 0) << "of " << whole.size() << " values; row 0: " << whole[0];
  });
}

// A decode row's attention is the same, bit for bit, alone (its chunks spread over many blocks)
// and in a batch of 41 rows (each row's chunks in one block), at contexts of one chunk and more.
TEST(CudaDecodeAttention, RowsDoNotDependOnTheBatch) {
  absl::StatusOr<cuda::DeviceSummary> devices = cuda::ProbeDevices();
  if (!devices.ok()) GTEST_SKIP() << "no GPU here: " << devices.status();
  OnBf16AndFp32([](CudaBackend& be) {
    std::mt19937 rng(11);
    const int64_t heads = 4, kv_heads = 2, hd = 64, bs = 16, blocks = 128, n = 1300;
    const TestPool pool = MakePool(be, blocks, bs, kv_heads, hd);
    std::vector<int32_t> table;
    for (int b = 0; b < (n + bs - 1) / bs; ++b) table.push_back(b);
    std::vector<int64_t> slots;
    for (int64_t p = 0; p < n; ++p) slots.push_back(table[p / bs] * bs + p % bs);
    be.WriteKv(be.FromHost(RandomFloats(n * kv_heads * hd, rng), {n, kv_heads, hd}),
               be.FromHost(RandomFloats(n * kv_heads * hd, rng), {n, kv_heads, hd}), slots,
               pool.view);
    const AttentionParams params{.scale = 0.125f, .group_size = 2};
    const int64_t row = heads * hd;
    for (int64_t ctx : {int64_t{300}, int64_t{1300}}) {
      SCOPED_TRACE("context " + std::to_string(ctx));
      // `batch` decode rows: the row under test first, then rows of the same sequence at
      // shorter contexts (their block tables are the same table).
      auto step = [&](int64_t batch) {
        std::vector<AttentionSeq> seqs;
        for (int64_t r = 0; r < batch; ++r) {
          seqs.push_back({.token_begin = r,
                          .num_tokens = 1,
                          .start_pos = r == 0 ? ctx - 1 : 10 * r,
                          .block_table = table});
        }
        std::vector<float> q = RandomFloats(batch * row, rng, 3.0f);
        std::mt19937 fixed(3);  // row 0's query is the same in every call
        const std::vector<float> q0 = RandomFloats(row, fixed, 3.0f);
        std::copy(q0.begin(), q0.end(), q.begin());
        Tensor out = Poisoned(be, {batch, heads, hd});
        be.Attention(be.FromHost(q, {batch, heads, hd}), pool.view, seqs, params, &out);
        const std::vector<float> got = be.ToHost(out);
        return std::vector<float>(got.begin(), got.begin() + row);
      };
      const std::vector<float> alone = step(1), batched = step(41);
      int64_t differ = 0;
      for (int64_t i = 0; i < row; ++i) differ += !(alone[i] == batched[i]);
      EXPECT_EQ(differ, 0) << "of " << row << " values; first: " << alone[0] << " vs "
                           << batched[0];
    }
  });
}

// In bf16 mode the activations around the matmuls are bf16: each op computes in fp32 from the
// values it reads and rounds once when it stores, so its bf16 output is its fp32 output (from the
// same values) rounded, bit for bit; a matmul takes a bf16 input as it is (no rounding launch)
// and one with an fp32 input rounds it first, to the same product.
TEST(CudaBf16Activations, RoundOnceAndFeedTheMatmulAsTheyAre) {
  absl::StatusOr<cuda::DeviceSummary> devices = cuda::ProbeDevices();
  if (!devices.ok()) GTEST_SKIP() << "no GPU here: " << devices.status();
  absl::StatusOr<std::unique_ptr<CudaBackend>> made =
      CudaBackend::Create({.device = 0, .precision = CudaPrecision::kBf16});
  ASSERT_TRUE(made.ok()) << made.status();
  CudaBackend& be = **made;
  ASSERT_EQ(be.activation_dtype(), DType::kBF16);
  std::mt19937 rng(99);
  const int64_t n = 5, in = 64, heads = 4, kv_heads = 2, hd = 16;
  // Values rounded to bf16: inputs exact in bf16, and what storing fp32 results in bf16 makes.
  auto rounded = [](std::vector<float> v) {
    for (float& x : v) x = BFloat16ToFloat(FloatToBFloat16(x));
    return v;
  };
  const std::vector<float> xv = RandomFloats(n * in, rng), uv = rounded(RandomFloats(n * in, rng));
  const std::vector<float> gv = rounded(RandomFloats(n * in, rng));
  const Tensor x = be.FromHost(xv, {n, in});  // the fp32 residual
  const Tensor norm = be.FromHost(RandomFloats(in, rng), {in});
  const Tensor bias = be.FromHost(RandomFloats(in, rng), {in});

  // RmsNorm from fp32 into bf16 and into fp32.
  Tensor h_bf = be.AllocActivation({n, in}), h_f = be.AllocUninitialized({n, in});
  ASSERT_EQ(h_bf.dtype(), DType::kBF16);
  be.RmsNorm(x, norm, 1e-5f, &h_bf);
  be.RmsNorm(x, norm, 1e-5f, &h_f);
  EXPECT_EQ(be.ToHost(h_bf), rounded(be.ToHost(h_f))) << "RmsNorm";

  // SiluMul and AddBias on bf16 inputs vs the same values in fp32.
  {
    Tensor out_bf = be.AllocActivation({n, in}), out_f = be.AllocUninitialized({n, in});
    be.SiluMul(be.ActivationFromHost(gv, {n, in}), be.ActivationFromHost(uv, {n, in}), &out_bf);
    be.SiluMul(be.FromHost(gv, {n, in}), be.FromHost(uv, {n, in}), &out_f);
    EXPECT_EQ(be.ToHost(out_bf), rounded(be.ToHost(out_f))) << "SiluMul";
    Tensor b_bf = be.ActivationFromHost(gv, {n, in}), b_f = be.FromHost(gv, {n, in});
    be.AddBias(bias, &b_bf);
    be.AddBias(bias, &b_f);
    EXPECT_EQ(be.ToHost(b_bf), rounded(be.ToHost(b_f))) << "AddBias";
  }

  // Rope of q and k together.
  {
    const std::vector<float> qv = rounded(RandomFloats(n * heads * hd, rng));
    const std::vector<float> kv = rounded(RandomFloats(n * kv_heads * hd, rng));
    const std::vector<int32_t> pos = {0, 1, 7, 300, 4000};
    std::vector<float> inv;
    for (int i = 0; i < hd / 2; ++i) inv.push_back(std::pow(10000.0f, -2.0f * i / hd));
    Tensor table = be.AllocUninitialized({n, hd});
    be.RopeTable(pos, inv, &table);
    Tensor q_bf = be.ActivationFromHost(qv, {n, heads, hd}), q_f = be.FromHost(qv, {n, heads, hd});
    Tensor k_bf = be.ActivationFromHost(kv, {n, kv_heads, hd});
    Tensor k_f = be.FromHost(kv, {n, kv_heads, hd});
    be.RopeQK(table, false, &q_bf, &k_bf);
    be.RopeQK(table, false, &q_f, &k_f);
    EXPECT_EQ(be.ToHost(q_bf), rounded(be.ToHost(q_f))) << "Rope q";
    EXPECT_EQ(be.ToHost(k_bf), rounded(be.ToHost(k_f))) << "Rope k";
  }

  // Attention: bf16 q and k/v written from bf16, against the same values in fp32 (each into a
  // pool of its own): a 6-token prompt (the tensor cores) and a decode row.
  {
    const int64_t bs = 16, T = 7;
    const std::vector<float> qv = rounded(RandomFloats(T * heads * hd, rng, 3.0f));
    const std::vector<float> kv = rounded(RandomFloats(T * kv_heads * hd, rng));
    const std::vector<float> vv = rounded(RandomFloats(T * kv_heads * hd, rng));
    const std::vector<int32_t> table0 = {1}, table1 = {0};
    const std::vector<int64_t> slots = {16, 17, 18, 19, 20, 21, 0};
    const std::vector<AttentionSeq> seqs = {
        {.token_begin = 0, .num_tokens = 6, .start_pos = 0, .block_table = table0},
        {.token_begin = 6, .num_tokens = 1, .start_pos = 0, .block_table = table1}};
    const AttentionParams params{.scale = 0.25f, .group_size = 2};
    auto attend = [&](bool bf16) {
      const TestPool pool = MakePool(be, 2, bs, kv_heads, hd);
      auto in = [&](const std::vector<float>& v, std::vector<int64_t> shape) {
        return bf16 ? be.ActivationFromHost(v, std::move(shape)) : be.FromHost(v, std::move(shape));
      };
      be.WriteKv(in(kv, {T, kv_heads, hd}), in(vv, {T, kv_heads, hd}), slots, pool.view);
      Tensor out =
          bf16 ? be.AllocActivation({T, heads, hd}) : be.AllocUninitialized({T, heads, hd});
      be.Attention(in(qv, {T, heads, hd}), pool.view, seqs, params, &out);
      return be.ToHost(out);
    };
    EXPECT_EQ(attend(true), rounded(attend(false))) << "Attention";
  }

  // A matmul of the bf16 activation equals that of the fp32 one (which it rounds first), and
  // takes it without a rounding launch. Into a bf16 output: the fp32 result rounded, within one
  // bf16 step (cuBLAS may pick another kernel for another output type).
  const testing::RandomMatrix m = MakeRandomMatrix(DType::kBF16, 40, in, rng);
  absl::StatusOr<Weight> w = be.LoadWeight(ViewOf(m.weight));
  ASSERT_TRUE(w.ok()) << w.status();
  auto matmul = [&](const Tensor& in_t) {
    Tensor y = be.AllocUninitialized({n, 40});
    be.MatMul(in_t, *w, &y);
    return be.ToHost(y);
  };
  const std::vector<float> y_f = matmul(h_f);
  EXPECT_EQ(matmul(h_bf), y_f);
  {
    Tensor y_bf = be.AllocActivation({n, 40});
    be.MatMul(h_bf, *w, &y_bf);
    const std::vector<float> got = be.ToHost(y_bf);
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_LE(std::fabs(got[i] - y_f[i]), std::ldexp(std::fabs(y_f[i]), -7)) << i;
    }
  }
#if defined(TPSERVE_CUDA_EMULATOR)
  tpserve_emu::ResetCounters();
  matmul(h_bf);
  const uint64_t direct = tpserve_emu::GetCounters().kernels;
  tpserve_emu::ResetCounters();
  matmul(h_f);
  EXPECT_EQ(tpserve_emu::GetCounters().kernels, direct + 1) << "the rounding of the fp32 input";
#endif
}

}  // namespace
}  // namespace tpserve
