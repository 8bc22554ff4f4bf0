// The CPU backend: fp32 compute, weights in their file type (F32/F16/BF16/Q4_0/Q4_1/Q8_0 read
// directly, others converted to fp32 at load). The oracle every other backend is tested against.
//
// Threads: one pool of `num_threads` (the caller included) shared by all ops. Matmuls with few
// activation rows (decode) use fused dequantise+dot kernels; with many rows (prefill) each
// thread dequantises tiles of weight rows to fp32 and multiplies them with single-threaded
// OpenBLAS sgemm (so OpenBLAS's own threading is switched off when a CpuBackend is created).
#pragma once

#include <memory>

#include "worker/backend/backend.h"
#include "worker/backend/cpu/thread_pool.h"

namespace tpserve {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int num_threads = 1);

  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::kCpu; }
  int num_threads() const { return pool_.size(); }
  ThreadPool& pool() { return pool_; }

  Tensor Alloc(std::vector<int64_t> shape) override;
  Tensor FromHost(std::span<const float> values, std::vector<int64_t> shape) override;
  std::vector<float> ToHost(const Tensor& t) override;
  absl::StatusOr<Weight> LoadWeight(const TensorView& view) override;
  absl::StatusOr<Tensor> LoadVector(const TensorView& view) override;

  void MatMul(const Tensor& x, const Weight& w, Tensor* y) override;
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

  // Activation rows up to which MatMul uses the fused kernels instead of tiles + sgemm.
  static constexpr int64_t kFusedMaxRows = 16;

 private:
  ThreadPool pool_;
};

}  // namespace tpserve
