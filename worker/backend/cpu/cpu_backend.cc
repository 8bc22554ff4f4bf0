// Memory, elementwise, position and vocabulary ops of the CPU backend (matmul and attention live
// in cpu_matmul.cc and cpu_attention.cc).
#include "worker/backend/cpu/cpu_backend.h"

#include <cblas.h>
#include <malloc.h>

#include <cmath>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "worker/backend/check.h"
#include "worker/backend/cpu/int8_gemm.h"
#include "worker/backend/cpu/quant_kernels.h"
#include "worker/backend/cpu/vec_math.h"
#include "worker/backend/host_memory.h"

namespace tpserve {
namespace {

// A forward pass allocates its activations and frees them at the end (a 32-sequence decode step:
// ~7 MB of logits and their host copy). glibc's defaults hand memory over a few MB back to the
// kernel when it is freed, so every step paid page faults to touch it again and a brk or munmap
// to return it (~4 % of a 32-sequence step under perf). Keep freed memory up to 32 MB blocks in
// the heap and return it only past 1 GB.
void KeepFreedMemory() {
  static std::once_flag once;
  std::call_once(once, [] {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  });
}

void CheckSameShape(const Tensor& a, const Tensor& b, const char* op) {
  TPSERVE_CHECK(a.shape() == b.shape(), "%s: %s vs %s", op, a.ShapeString().c_str(),
                b.ShapeString().c_str());
}

}  // namespace

absl::StatusOr<CpuPrecision> ParseCpuPrecision(std::string_view name) {
  if (name.empty()) return CpuPrecision::kDefault;
  if (name == "fp32" || name == "f32" || name == "float32") return CpuPrecision::kFp32;
  if (name != "int8" && name != "int8x2") {
    return absl::InvalidArgumentError(
        absl::StrCat("CPU precision \"", std::string(name), "\": expected int8x2, int8 or fp32"));
  }
  if (!Int8GemmAvailable()) {
    return absl::FailedPreconditionError(
        absl::StrCat(std::string(name),
                     ": this build has no AVX-512 VNNI kernel (build on a CPU "
                     "with AVX-512 VNNI, TPSERVE_NATIVE=ON); use fp32"));
  }
  return name == "int8" ? CpuPrecision::kInt8 : CpuPrecision::kInt8x2;
}

const char* CpuPrecisionName(CpuPrecision p) {
  switch (p) {
    case CpuPrecision::kInt8x2:
      return "int8x2";
    case CpuPrecision::kInt8:
      return "int8";
    case CpuPrecision::kFp32:
      return "fp32";
    case CpuPrecision::kDefault:
      break;
  }
  return "default";
}

absl::StatusOr<std::optional<KvDType>> ParseKvDType(std::string_view name) {
  if (name.empty() || name == "auto") return std::nullopt;
  if (name == "fp16" || name == "f16" || name == "float16") return KvDType::kFp16;
  if (name == "fp32" || name == "f32" || name == "float32") return KvDType::kFp32;
  if (name == "int8" || name == "i8" || name == "q8") return KvDType::kInt8;
  return absl::InvalidArgumentError(absl::StrCat("KV cache dtype \"", std::string(name),
                                                 "\": expected auto, fp16, fp32 or int8"));
}

CpuBackend::CpuBackend(int num_threads, CpuPrecision precision, std::optional<KvDType> kv_dtype)
    : pool_(num_threads),
      precision_(precision != CpuPrecision::kDefault ? precision
                 : Int8GemmAvailable()               ? CpuPrecision::kInt8x2
                                                     : CpuPrecision::kFp32),
      kv_dtype_(
          kv_dtype.value_or(precision_ == CpuPrecision::kFp32 ? KvDType::kFp32 : KvDType::kFp16)) {
  TPSERVE_CHECK(!int8_matmuls() || Int8GemmAvailable(),
                "CpuBackend: int8 matmuls need a build with AVX-512 VNNI");
  // Prefill calls sgemm from every pool thread at once, one tile each.
  openblas_set_num_threads(1);
  KeepFreedMemory();
}

Tensor CpuBackend::Alloc(std::vector<int64_t> shape) { return Tensor(std::move(shape)); }

Tensor CpuBackend::AllocUninitialized(std::vector<int64_t> shape) {
  return Tensor::Uninitialized(std::move(shape));
}

Tensor CpuBackend::FromHost(std::span<const float> values, std::vector<int64_t> shape) {
  Tensor t = Tensor::Uninitialized(std::move(shape));  // every element copied below
  TPSERVE_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "FromHost: %zu values for %s",
                values.size(), t.ShapeString().c_str());
  std::memcpy(t.data(), values.data(), values.size() * sizeof(float));
  return t;
}

std::vector<float> CpuBackend::ToHost(const Tensor& t) {
  return std::vector<float>(t.data(), t.data() + t.numel());
}

absl::StatusOr<Weight> CpuBackend::LoadWeight(const TensorView& view) {
  if (view.data == nullptr || view.rows <= 0 || view.cols <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight view is empty (", view.rows, " x ", view.cols, ")"));
  }
  Weight w{.dtype = view.dtype,
           .rows = view.rows,
           .cols = view.cols,
           .data = view.data,
           .row_stride_bytes = view.row_stride_bytes,
           .owned = nullptr,
           .int8 = nullptr};
  if (int8_matmuls() && Int8GemmPacks(view.dtype) && view.cols % 32 == 0) {
    // Matmuls read the packed copy; the mapping stays for row lookups (embeddings).
    w.int8 =
        PackInt8Weight(view.dtype, view.rows, view.cols, view.data, view.row_stride_bytes, &pool_);
  }
  if (CpuKernelReads(view.dtype)) return w;  // zero copy: reads the mapping
  // K-quants and other types: fp32 copy, row by row (the view may be a column window).
  const size_t bytes = static_cast<size_t>(view.rows * view.cols) * sizeof(float);
  std::shared_ptr<float[]> buffer;
  if (bytes >= kHugePageBytes) {  // streamed every step: huge pages (host_memory.h)
    std::shared_ptr<void> huge = HugePageBuffer(bytes);
    buffer = std::shared_ptr<float[]>(huge, static_cast<float*>(huge.get()));
  } else {
    buffer = std::shared_ptr<float[]>(new float[view.rows * view.cols]);
  }
  for (int64_t r = 0; r < view.rows; ++r) {
    absl::Status st = ToFloat(view.dtype, view.row(r), buffer.get() + r * view.cols, view.cols);
    if (!st.ok()) return st;
  }
  w.dtype = DType::kF32;
  w.data = reinterpret_cast<const uint8_t*>(buffer.get());
  w.row_stride_bytes = view.cols * sizeof(float);
  w.owned = std::static_pointer_cast<void>(std::shared_ptr<float[]>(buffer));
  return w;
}

absl::StatusOr<Tensor> CpuBackend::LoadVector(const TensorView& view) {
  absl::StatusOr<std::vector<float>> values = ViewToFloat(view);
  if (!values.ok()) return values.status();
  return FromHost(*values, {static_cast<int64_t>(values->size())});
}

void CpuBackend::AddBias(const Tensor& bias, Tensor* y) {
  TPSERVE_CHECK(bias.numel() == y->cols(), "AddBias: bias %s for %s", bias.ShapeString().c_str(),
                y->ShapeString().c_str());
  const int64_t n = y->cols();
  for (int64_t r = 0; r < y->rows(); ++r) {
    float* row = y->row(r);
    for (int64_t i = 0; i < n; ++i) row[i] += bias.data()[i];
  }
}

void CpuBackend::Add(const Tensor& x, Tensor* y) {
  CheckSameShape(x, *y, "Add");
  const int64_t n = y->numel();
  const auto add = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) y->data()[i] += x.data()[i];
  };
  // Elementwise, so the split changes nothing but who computes; small inputs (decode of a few
  // sequences) stay on the caller.
  if (n >= 8192) {
    pool_.ParallelFor(n, 1024, add);
  } else {
    add(0, n);
  }
}

namespace {

// sum(x[i]^2) accumulated in double (exact to well below float rounding for any row length),
// in 4 x 8 independent lanes rather than one serial chain of adds.
double SumSquares(const float* x, int64_t n) {
  int64_t i = 0;
  double ss = 0.0;
#if defined(__AVX512F__)
  __m512d acc[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(),
                    _mm512_setzero_pd()};
  for (; i + 32 <= n; i += 32) {
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8 * k));
      acc[k] = _mm512_fmadd_pd(v, v, acc[k]);
    }
  }
  ss = _mm512_reduce_add_pd(
      _mm512_add_pd(_mm512_add_pd(acc[0], acc[1]), _mm512_add_pd(acc[2], acc[3])));
#endif
  for (; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  return ss;
}

}  // namespace

void CpuBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor* y) {
  CheckSameShape(x, *y, "RmsNorm");
  const int64_t n = x.cols();
  TPSERVE_CHECK(weight.numel() == n, "RmsNorm: weight %s for %s", weight.ShapeString().c_str(),
                x.ShapeString().c_str());
  pool_.ParallelFor(x.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x.row(r);
      float* yr = y->row(r);
      const float inv = 1.0f / std::sqrt(static_cast<float>(SumSquares(xr, n) / n) + eps);
      const float* w = weight.data();
      int64_t i = 0;
#if defined(__AVX512F__)
      const __m512 iv = _mm512_set1_ps(inv);
      for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(yr + i, _mm512_mul_ps(_mm512_loadu_ps(w + i),
                                               _mm512_mul_ps(_mm512_loadu_ps(xr + i), iv)));
      }
#endif
      for (; i < n; ++i) yr[i] = w[i] * (xr[i] * inv);
    }
  });
}

void CpuBackend::SiluMul(const Tensor& gate, const Tensor& up, Tensor* out) {
  CheckSameShape(gate, up, "SiluMul");
  CheckSameShape(gate, *out, "SiluMul");
  // Decode-sized inputs (a few thousand floats) run inline: waking threads would cost more.
  pool_.ParallelFor(gate.numel(), 8192, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#if defined(__AVX512F__)
    for (; i + 16 <= end; i += 16) {
      const __m512 g = _mm512_loadu_ps(gate.data() + i);
      const __m512 e = Exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
      const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
      _mm512_storeu_ps(out->data() + i, _mm512_mul_ps(silu, _mm512_loadu_ps(up.data() + i)));
    }
#endif
    for (; i < end; ++i) {
      const float g = gate.data()[i];
      out->data()[i] = g / (1.0f + std::exp(-g)) * up.data()[i];
    }
  });
}

void CpuBackend::RopeTable(std::span<const int32_t> positions, std::span<const float> inv_freq,
                           Tensor* cos_sin) {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  TPSERVE_CHECK(
      cos_sin->rows() == static_cast<int64_t>(positions.size()) && cos_sin->cols() == 2 * half,
      "RopeTable: %s for %zu positions, %lld pairs", cos_sin->ShapeString().c_str(),
      positions.size(), static_cast<long long>(half));
  for (size_t t = 0; t < positions.size(); ++t) {
    float* row = cos_sin->row(t);
    for (int64_t i = 0; i < half; ++i) {
      // fp32 product like the reference (inv_freq @ positions in fp32), then cos/sin of it.
      const float angle = static_cast<float>(positions[t]) * inv_freq[i];
      row[i] = std::cos(angle);
      row[half + i] = std::sin(angle);
    }
  }
}

void CpuBackend::Rope(const Tensor& cos_sin, bool interleaved, Tensor* x) {
  TPSERVE_CHECK(x->ndim() == 3 && x->dim(0) == cos_sin.rows() && x->dim(2) == cos_sin.cols(),
                "Rope: x %s, table %s", x->ShapeString().c_str(), cos_sin.ShapeString().c_str());
  const int64_t heads = x->dim(1), hd = x->dim(2), half = hd / 2;
  const auto rotate = [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* c = cos_sin.row(t);
      const float* s = c + half;
      for (int64_t h = 0; h < heads; ++h) {
        float* v = x->data() + (t * heads + h) * hd;
        int64_t i = 0;
#if defined(__AVX512F__)
        if (!interleaved) {  // rotate-half: both halves are contiguous runs
          for (; i + 16 <= half; i += 16) {
            const __m512 x0 = _mm512_loadu_ps(v + i), x1 = _mm512_loadu_ps(v + half + i);
            const __m512 ci = _mm512_loadu_ps(c + i), si = _mm512_loadu_ps(s + i);
            // x0 * c - x1 * s and x1 * c + x0 * s.
            _mm512_storeu_ps(v + i, _mm512_sub_ps(_mm512_mul_ps(x0, ci), _mm512_mul_ps(x1, si)));
            _mm512_storeu_ps(v + half + i,
                             _mm512_add_ps(_mm512_mul_ps(x1, ci), _mm512_mul_ps(x0, si)));
          }
        }
#endif
        for (; i < half; ++i) {
          // Rotate-half pairs (i, i + d/2); interleaved pairs (2i, 2i + 1).
          float* a = interleaved ? v + 2 * i : v + i;
          float* b = interleaved ? v + 2 * i + 1 : v + i + half;
          const float x0 = *a, x1 = *b;
          *a = x0 * c[i] - x1 * s[i];
          *b = x1 * c[i] + x0 * s[i];
        }
      }
    }
  };
  if (x->dim(0) * heads * hd >= 8192) {
    pool_.ParallelFor(x->dim(0), 1, rotate);
  } else {
    rotate(0, x->dim(0));
  }
}

void CpuBackend::ForEachOnHost(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 1) {
    if (n == 1) fn(0);
    return;
  }
  pool_.ParallelFor(n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(i);
  });
}

void CpuBackend::Embedding(std::span<const int32_t> tokens, const Weight& table,
                           int64_t vocab_begin, Tensor* out) {
  TPSERVE_CHECK(out->rows() == static_cast<int64_t>(tokens.size()) && out->cols() == table.cols,
                "Embedding: out %s for %zu tokens of width %lld", out->ShapeString().c_str(),
                tokens.size(), static_cast<long long>(table.cols));
  for (size_t t = 0; t < tokens.size(); ++t) {
    const int64_t local = static_cast<int64_t>(tokens[t]) - vocab_begin;
    if (local >= 0 && local < table.rows) {
      DequantizeRow(table.dtype, table.row(local), table.cols, out->row(t));
    } else {
      std::memset(out->row(t), 0, table.cols * sizeof(float));
    }
  }
}

}  // namespace tpserve
