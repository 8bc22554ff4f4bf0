// The CPU backend: weights in their file type (F32/F16/BF16/Q4_0/Q4_1/Q8_0 read directly,
// others converted to fp32 at load), activations in fp32. The oracle every other backend is
// tested against.
//
// Matmul precision (CpuPrecision):
// - kInt8x2 (the default where the build has AVX-512 VNNI): Q4_0/Q4_1/Q8_0 weights are packed
//   at load and multiply activations held as two int8 terms per element (~15 bits), in
//   integers (cpu/int8_gemm.h). SmolLM2's logits stay within ~6e-4 of transformers' fp32 (with
//   the fp16 KV cache; ~3e-4 with an fp32 one).
// - kInt8: the same with one int8 term, llama.cpp's rounding: ~1.5x faster at large batches,
//   logits move by a few percent (a greedy continuation may differ at a near-tie).
// - kFp32: every weight is dequantised to fp32 and multiplies fp32 activations (exact up to
//   summation order; what the fp32 reference tests hold to 1e-4).
// On both int8 paths each output is bitwise the same whatever batch it is computed in. Dense
// (F32/F16/BF16) weights always take the fp32 paths.
//
// KV cache: fp16 by default on the int8 paths (half the memory and the bytes attention reads
// per cached token), fp32 with kFp32 (the oracle keeps everything fp32); either can be asked
// for, and int8 (a scale per position and head: half the bytes of fp16 again). Within a block
// the pools are laid out for the attention kernel, which multiplies one query with 16 cached
// positions per vector instruction:
//   K [num_blocks, kv_heads, head_dim, block_size]  (positions innermost)
//   V [num_blocks, kv_heads, block_size, head_dim]
// and with int8 each (block, KV head) tile is followed by its block_size fp32 scales.
//
// Threads: one pool of `num_threads` (the caller included) shared by all ops. On the fp32
// paths, matmuls with few activation rows (decode) use fused dequantise+dot kernels; with many
// rows (prefill) each thread dequantises tiles of weight rows to fp32 and multiplies them with
// single-threaded OpenBLAS sgemm (so OpenBLAS's own threading is switched off when a
// CpuBackend is created).
#pragma once

#include <memory>
#include <optional>
#include <string_view>

#include "absl/status/statusor.h"
#include "worker/backend/backend.h"
#include "worker/backend/cpu/int8_gemm.h"
#include "worker/backend/cpu/thread_pool.h"

namespace tpserve {

enum class CpuPrecision {
  kDefault,  // kInt8x2 where Int8GemmAvailable(), else kFp32
  kInt8,     // activations as one int8 per element (llama.cpp's rounding)
  kInt8x2,   // activations as two int8 terms (~15 bits)
  kFp32,
};

// "" -> kDefault, "int8" -> kInt8 and "int8x2" -> kInt8x2 (FAILED_PRECONDITION in a build
// without the VNNI kernel), "fp32" / "f32" / "float32" -> kFp32; INVALID_ARGUMENT otherwise.
absl::StatusOr<CpuPrecision> ParseCpuPrecision(std::string_view name);
// "int8x2", "int8", "fp32" ("default" for kDefault).
const char* CpuPrecisionName(CpuPrecision p);

// "" / "auto" -> nullopt (the backend's default), "fp16" / "f16" / "float16" -> kFp16,
// "fp32" / "f32" / "float32" -> kFp32, "int8" / "i8" / "q8" -> kInt8; INVALID_ARGUMENT otherwise.
absl::StatusOr<std::optional<KvDType>> ParseKvDType(std::string_view name);

class CpuBackend final : public Backend {
 public:
  // kInt8 / kInt8x2 on a build without the VNNI kernel is a programming error (callers check
  // Int8GemmAvailable(), or go through ParseCpuPrecision).
  // kv_dtype: nullopt picks fp16 on the int8 paths, fp32 with kFp32.
  explicit CpuBackend(int num_threads = 1, CpuPrecision precision = CpuPrecision::kDefault,
                      std::optional<KvDType> kv_dtype = std::nullopt);

  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::kCpu; }
  int num_threads() const { return pool_.size(); }
  ThreadPool& pool() { return pool_; }
  CpuPrecision precision() const { return precision_; }  // never kDefault
  bool int8_matmuls() const {
    return precision_ == CpuPrecision::kInt8 || precision_ == CpuPrecision::kInt8x2;
  }

  KvDType kv_dtype() const override { return kv_dtype_; }

  Tensor Alloc(std::vector<int64_t> shape) override;
  Tensor AllocUninitialized(std::vector<int64_t> shape) override;
  Tensor FromHost(std::span<const float> values, std::vector<int64_t> shape) override;
  std::vector<float> ToHost(const Tensor& t) override;
  absl::StatusOr<Weight> LoadWeight(const TensorView& view) override;
  absl::StatusOr<Tensor> LoadVector(const TensorView& view) override;

  void MatMul(const Tensor& x, const Weight& w, Tensor* y) override;
  // Packed weights: the sum is added in the kernel's epilogue (no temporary, no separate pass).
  void MatMulAdd(const Tensor& x, const Weight& w, Tensor* y) override;
  // Packed weights: x is rounded to int8 once and all products run as one parallel job.
  void MatMulShared(const Tensor& x, std::span<const Weight* const> ws,
                    std::span<Tensor* const> ys) override;
  void AddBias(const Tensor& bias, Tensor* y) override;
  void Add(const Tensor& x, Tensor* y) override;
  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor* y) override;
  void SiluMul(const Tensor& gate, const Tensor& up, Tensor* out) override;
  void RopeTable(std::span<const int32_t> positions, std::span<const float> inv_freq,
                 Tensor* cos_sin) override;
  void Rope(const Tensor& cos_sin, bool interleaved, Tensor* x) override;
  void Embedding(std::span<const int32_t> tokens, const Weight& table, int64_t vocab_begin,
                 Tensor* out) override;
  void WriteKv(const Tensor& k, const Tensor& v, std::span<const int64_t> slots,
               const KvLayerView& cache) override;
  void Attention(const Tensor& q, const KvLayerView& cache, std::span<const AttentionSeq> seqs,
                 const AttentionParams& params, Tensor* out) override;
  void ForEachOnHost(int64_t n, const std::function<void(int64_t)>& fn) override;

  // Activation rows up to which MatMul uses the fused kernels instead of tiles + sgemm.
  static constexpr int64_t kFusedMaxRows = 16;

 private:
  // ys[i] = x · ws[i]ᵀ for packed weights (x.rows() > 0, shapes checked): x rounded to int8
  // once (one or two terms, as precision_ says), the products as one pool job; with
  // `accumulate`, ys[i] += the product.
  void PackedMatMul(const Tensor& x, std::span<const Weight* const> ws, std::span<Tensor* const> ys,
                    bool accumulate = false);

  ThreadPool pool_;
  CpuPrecision precision_;
  KvDType kv_dtype_;
};

}  // namespace tpserve
