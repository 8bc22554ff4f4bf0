// A Backend that forwards every op to another and adds up the wall time each kind of op takes:
// where a forward pass's time goes, op by op (engine_bench --op-times). The CPU backend's ops
// are synchronous, so an op's wall time is its cost; on an asynchronous backend the times would
// land on whichever op waits.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "worker/backend/backend.h"

namespace tpserve {

class TimingBackend final : public Backend {
 public:
  // Seconds per op kind since the last Reset, and how many calls.
  struct Total {
    double seconds = 0.0;
    int64_t calls = 0;
  };
  // Matmuls by weight shape, keys "out x in" (for a shared matmul, out is the weights' rows
  // added up): seconds and multiply-adds.
  struct MatMulTotal {
    double seconds = 0.0;
    double macs = 0.0;
  };

 private:
  template <typename F>
  auto Time(const char* what, F&& f) {
    struct Add {
      Total& t;
      std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
      ~Add() {
        t.seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        ++t.calls;
      }
    } add{totals_[what]};
    return f();
  }

 public:
  explicit TimingBackend(Backend& inner) : inner_(inner) {}

  const std::map<std::string, Total>& totals() const { return totals_; }
  const std::map<std::string, MatMulTotal>& matmuls() const { return matmuls_; }
  void Reset() {
    totals_.clear();
    matmuls_.clear();
  }

  std::string name() const override { return inner_.name(); }
  Device device() const override { return inner_.device(); }
  Tensor Alloc(std::vector<int64_t> shape) override {
    return Time("alloc", [&] { return inner_.Alloc(std::move(shape)); });
  }
  Tensor AllocUninitialized(std::vector<int64_t> shape) override {
    return Time("alloc", [&] { return inner_.AllocUninitialized(std::move(shape)); });
  }
  Tensor FromHost(std::span<const float> values, std::vector<int64_t> shape) override {
    return Time("copy", [&] { return inner_.FromHost(values, std::move(shape)); });
  }
  std::vector<float> ToHost(const Tensor& t) override {
    return Time("copy", [&] { return inner_.ToHost(t); });
  }
  DType activation_dtype() const override { return inner_.activation_dtype(); }
  Tensor AllocActivation(std::vector<int64_t> shape) override {
    return Time("alloc", [&] { return inner_.AllocActivation(std::move(shape)); });
  }
  Tensor ActivationFromHost(std::span<const float> values, std::vector<int64_t> shape) override {
    return Time("copy", [&] { return inner_.ActivationFromHost(values, std::move(shape)); });
  }
  absl::StatusOr<Weight> LoadWeight(const TensorView& view) override {
    return inner_.LoadWeight(view);
  }
  absl::StatusOr<Tensor> LoadVector(const TensorView& view) override {
    return inner_.LoadVector(view);
  }
  void MatMul(const Tensor& x, const Weight& w, Tensor* y) override {
    const auto start = std::chrono::steady_clock::now();
    Time("matmul", [&] { inner_.MatMul(x, w, y); });
    CountMatMul(start, x.rows(), w.rows, w.cols);
  }
  void MatMulAdd(const Tensor& x, const Weight& w, Tensor* y) override {
    const auto start = std::chrono::steady_clock::now();
    Time("matmul", [&] { inner_.MatMulAdd(x, w, y); });
    CountMatMul(start, x.rows(), w.rows, w.cols);
  }
  void MatMulShared(const Tensor& x, std::span<const Weight* const> ws,
                    std::span<Tensor* const> ys) override {
    const auto start = std::chrono::steady_clock::now();
    Time("matmul", [&] { inner_.MatMulShared(x, ws, ys); });
    int64_t out = 0;
    for (const Weight* w : ws) out += w->rows;
    CountMatMul(start, x.rows(), out, x.cols());
  }
  void CopyColumns(const Tensor& src, int64_t col_begin, Tensor* dst) override {
    Time("copy_columns", [&] { inner_.CopyColumns(src, col_begin, dst); });
  }
  void AddBias(const Tensor& bias, Tensor* y) override {
    Time("bias", [&] { inner_.AddBias(bias, y); });
  }
  void Add(const Tensor& x, Tensor* y) override {
    Time("add", [&] { inner_.Add(x, y); });
  }
  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor* y) override {
    Time("rmsnorm", [&] { inner_.RmsNorm(x, weight, eps, y); });
  }
  void SiluMul(const Tensor& gate, const Tensor& up, Tensor* out) override {
    Time("silu_mul", [&] { inner_.SiluMul(gate, up, out); });
  }
  void RopeTable(std::span<const int32_t> positions, std::span<const float> inv_freq,
                 Tensor* cos_sin) override {
    Time("rope", [&] { inner_.RopeTable(positions, inv_freq, cos_sin); });
  }
  void Rope(const Tensor& cos_sin, bool interleaved, Tensor* x) override {
    Time("rope", [&] { inner_.Rope(cos_sin, interleaved, x); });
  }
  void Embedding(std::span<const int32_t> tokens, const Weight& table, int64_t vocab_begin,
                 Tensor* out) override {
    Time("embedding", [&] { inner_.Embedding(tokens, table, vocab_begin, out); });
  }
  KvDType kv_dtype() const override { return inner_.kv_dtype(); }
  void WriteKv(const Tensor& k, const Tensor& v, std::span<const int64_t> slots,
               const KvLayerView& cache) override {
    Time("write_kv", [&] { inner_.WriteKv(k, v, slots, cache); });
  }
  void Attention(const Tensor& q, const KvLayerView& cache, std::span<const AttentionSeq> seqs,
                 const AttentionParams& params, Tensor* out) override {
    Time("attention", [&] { inner_.Attention(q, cache, seqs, params, out); });
  }
  bool samples_on_device() const override { return inner_.samples_on_device(); }
  absl::StatusOr<std::vector<DeviceDrawn>> SampleOnDevice(
      const Tensor& logits, std::span<const int64_t> rows,
      std::span<const DeviceDraw> draws) override {
    return Time("sample", [&] { return inner_.SampleOnDevice(logits, rows, draws); });
  }
  void ForEachOnHost(int64_t n, const std::function<void(int64_t)>& fn) override {
    Time("host", [&] { inner_.ForEachOnHost(n, fn); });
  }

 private:
  void CountMatMul(std::chrono::steady_clock::time_point start, int64_t rows, int64_t out,
                   int64_t in) {
    MatMulTotal& t = matmuls_[std::to_string(out) + " x " + std::to_string(in)];
    t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    t.macs += static_cast<double>(rows) * out * in;
  }

  Backend& inner_;
  std::map<std::string, Total> totals_;
  std::map<std::string, MatMulTotal> matmuls_;
};

}  // namespace tpserve
