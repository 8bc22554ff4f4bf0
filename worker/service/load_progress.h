// Shard-loading progress of one rank: bytes of weight slices handed to the backend out of the
// slice's total (ShardWeightBytes), reported every ~10 % or every second, whichever comes first.
//
// The model loader (worker/model) reads every weight through Backend::LoadWeight / LoadVector, so
// a Backend decorator sees the bytes without the loader knowing: the engine puts its backend
// behind a CountingBackend and arms it for the duration of a load.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "worker/backend/backend.h"

namespace tpserve {

class LoadProgress {
 public:
  // `report(done, total)` is called from Add when a report is due, and once from Finish.
  using Report = std::function<void(int64_t done_bytes, int64_t total_bytes)>;
  LoadProgress(int64_t total_bytes, Report report, absl::Duration interval = absl::Seconds(1));

  void Add(int64_t bytes);
  // The final report (done = total, whatever was counted).
  void Finish();

  int64_t done() const { return done_; }

 private:
  const int64_t total_;
  const Report report_;
  const absl::Duration interval_;
  int64_t done_ = 0;
  int next_tenth_ = 1;  // next 10 % step to report
  absl::Time last_ = absl::Now();
};

// The text tpserve-worker logs for a report; `tpserve up` recognises it (ParseLoadProgress).
std::string FormatLoadProgress(int64_t done_bytes, int64_t total_bytes);
// Finds a FormatLoadProgress text anywhere in `line` (a text or JSON log line).
bool ParseLoadProgress(const std::string& line, int64_t* done_bytes, int64_t* total_bytes);

// Forwards every op to `inner`; counts the bytes of the views LoadWeight / LoadVector read into
// the armed LoadProgress (none armed: nothing counted).
class CountingBackend final : public Backend {
 public:
  explicit CountingBackend(Backend& inner) : inner_(inner) {}

  void Arm(LoadProgress* progress) { progress_ = progress; }

  std::string name() const override { return inner_.name(); }
  Device device() const override { return inner_.device(); }
  Tensor Alloc(std::vector<int64_t> shape) override { return inner_.Alloc(std::move(shape)); }
  Tensor AllocUninitialized(std::vector<int64_t> shape) override {
    return inner_.AllocUninitialized(std::move(shape));
  }
  Tensor FromHost(std::span<const float> values, std::vector<int64_t> shape) override {
    return inner_.FromHost(values, std::move(shape));
  }
  std::vector<float> ToHost(const Tensor& t) override { return inner_.ToHost(t); }
  DType activation_dtype() const override { return inner_.activation_dtype(); }
  Tensor AllocActivation(std::vector<int64_t> shape) override {
    return inner_.AllocActivation(std::move(shape));
  }
  Tensor ActivationFromHost(std::span<const float> values, std::vector<int64_t> shape) override {
    return inner_.ActivationFromHost(values, std::move(shape));
  }
  absl::StatusOr<Weight> LoadWeight(const TensorView& view) override;
  absl::StatusOr<Tensor> LoadVector(const TensorView& view) override;
  void MatMul(const Tensor& x, const Weight& w, Tensor* y) override { inner_.MatMul(x, w, y); }
  void MatMulAdd(const Tensor& x, const Weight& w, Tensor* y) override {
    inner_.MatMulAdd(x, w, y);
  }
  void MatMulShared(const Tensor& x, std::span<const Weight* const> ws,
                    std::span<Tensor* const> ys) override {
    inner_.MatMulShared(x, ws, ys);
  }
  void CopyColumns(const Tensor& src, int64_t col_begin, Tensor* dst) override {
    inner_.CopyColumns(src, col_begin, dst);
  }
  void AddBias(const Tensor& bias, Tensor* y) override { inner_.AddBias(bias, y); }
  void Add(const Tensor& x, Tensor* y) override { inner_.Add(x, y); }
  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor* y) override {
    inner_.RmsNorm(x, weight, eps, y);
  }
  void SiluMul(const Tensor& gate, const Tensor& up, Tensor* out) override {
    inner_.SiluMul(gate, up, out);
  }
  void RopeTable(std::span<const int32_t> positions, std::span<const float> inv_freq,
                 Tensor* cos_sin) override {
    inner_.RopeTable(positions, inv_freq, cos_sin);
  }
  void Rope(const Tensor& cos_sin, bool interleaved, Tensor* x) override {
    inner_.Rope(cos_sin, interleaved, x);
  }
  void RopeQK(const Tensor& cos_sin, bool interleaved, Tensor* q, Tensor* k) override {
    inner_.RopeQK(cos_sin, interleaved, q, k);
  }
  void Embedding(std::span<const int32_t> tokens, const Weight& table, int64_t vocab_begin,
                 Tensor* out) override {
    inner_.Embedding(tokens, table, vocab_begin, out);
  }
  KvDType kv_dtype() const override { return inner_.kv_dtype(); }
  void WriteKv(const Tensor& k, const Tensor& v, std::span<const int64_t> slots,
               const KvLayerView& cache) override {
    inner_.WriteKv(k, v, slots, cache);
  }
  void Attention(const Tensor& q, const KvLayerView& cache, std::span<const AttentionSeq> seqs,
                 const AttentionParams& params, Tensor* out) override {
    inner_.Attention(q, cache, seqs, params, out);
  }
  bool samples_on_device() const override { return inner_.samples_on_device(); }
  absl::StatusOr<std::vector<DeviceDrawn>> SampleOnDevice(
      const Tensor& logits, std::span<const int64_t> rows,
      std::span<const DeviceDraw> draws) override {
    return inner_.SampleOnDevice(logits, rows, draws);
  }
  int64_t max_recorded_rows() const override { return inner_.max_recorded_rows(); }
  absl::Status RunRecorded(const std::string& key, bool with_peers,
                           const std::function<absl::Status()>& step) override {
    return inner_.RunRecorded(key, with_peers, step);
  }
  void DropRecorded(const std::string& key_prefix) override { inner_.DropRecorded(key_prefix); }
  void ForEachOnHost(int64_t n, const std::function<void(int64_t)>& fn) override {
    inner_.ForEachOnHost(n, fn);
  }

 private:
  void Count(const TensorView& view);

  Backend& inner_;
  LoadProgress* progress_ = nullptr;  // executor thread only (loads run there)
};

}  // namespace tpserve
