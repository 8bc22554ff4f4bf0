// The CUDA backend (DESIGN.md §6): weights and GEMM inputs in bf16 with fp32 accumulation, or
// everything fp32 (for exact comparison with the CPU oracle). GEMMs through cuBLAS; RMSNorm,
// RoPE, SwiGLU, embedding, paged attention and sampling are own kernels (cuda_kernels.h).
//
// In bf16 mode the activations around the matmuls are bf16 (activation_dtype: normed inputs,
// q/k/v, attention output, feed-forward intermediates), computed in fp32 by every kernel and
// rounded once when stored; the matmuls read them and the bf16 weights directly (fp32 accumulate)
// and write bf16 or fp32 as the output tensor is. The residual stream and logits stay fp32 (a
// matmul given an fp32 input in bf16 mode rounds it first). fp32 mode: everything fp32. Every op
// takes fp32 or bf16 activations where the Backend contract allows either. All work goes to one
// stream per backend (one backend per worker); ToHost synchronises it. Device memory comes from a
// recycling pool of plain cudaMalloc buffers, so steady-state steps allocate nothing. Quantised
// GGUF weights are dequantised on the host at load (to bf16, or fp32 in fp32 mode).
//
// Ops return void (the Backend contract): a CUDA failure inside an op is a broken device and
// aborts with the CUDA error; everything a user can cause is reported by Create / LoadWeight.
#pragma once

#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/backend/backend.h"
#include "worker/backend/cuda/device_pool.h"
#include "worker/backend/cuda/pinned_ring.h"
#include "worker/backend/cuda/step_recorder.h"
#include "worker/sampling/sampler.h"

typedef struct CUstream_st* cudaStream_t;
typedef struct cublasContext* cublasHandle_t;

namespace tpserve {

namespace cuda {
// Appends `values` to `bytes` at a 16-byte boundary and returns their offset: per-step metadata
// packed into one upload (Upload / UploadBytes).
template <typename T>
size_t Pack(std::vector<uint8_t>* bytes, const std::vector<T>& values) {
  const size_t offset = (bytes->size() + 15) / 16 * 16;
  bytes->resize(offset + values.size() * sizeof(T));
  if (!values.empty()) {
    std::memcpy(bytes->data() + offset, values.data(), values.size() * sizeof(T));
  }
  return offset;
}
}  // namespace cuda

enum class CudaPrecision { kBf16, kFp32 };

struct CudaBackendOptions {
  int device = 0;  // CUDA device ordinal (the K of --device cuda:K)
  CudaPrecision precision = CudaPrecision::kBf16;
  // The KV pools' element type: fp32 or fp16 (half the bytes, so twice the positions and half
  // the attention reads); nullopt picks fp16 with bf16 weights, fp32 in the exact fp32 mode.
  // int8 is CPU-only (INVALID_ARGUMENT from Create).
  std::optional<KvDType> kv_dtype;
  // Decode steps of up to this many rows are recorded as CUDA graphs and replayed
  // (RunRecorded, step_recorder.h); 0 runs every step op by op.
  int64_t max_recorded_rows = 64;
  // bf16 mode: prefill attention on the tensor cores where it applies (fp16 pools, head_dim a
  // multiple of 16); false keeps the fp32 CUDA-core kernel (for comparison in benchmarks).
  bool tensor_core_prefill = true;
};

class CudaBackend final : public Backend {
 public:
  // FAILED_PRECONDITION when there is no GPU or driver (code 35: "no NVIDIA driver on this
  // machine"), INVALID_ARGUMENT for a device ordinal the machine does not have.
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const CudaBackendOptions& options);
  ~CudaBackend() override;

  std::string name() const override;
  Device device() const override { return Device::kCuda; }
  int device_index() const { return options_.device; }
  CudaPrecision precision() const { return options_.precision; }
  KvDType kv_dtype() const override { return kv_dtype_; }
  cudaStream_t stream() const { return stream_; }

  Tensor Alloc(std::vector<int64_t> shape) override;
  Tensor AllocUninitialized(std::vector<int64_t> shape) override;
  Tensor FromHost(std::span<const float> values, std::vector<int64_t> shape) override;
  std::vector<float> ToHost(const Tensor& t) override;
  DType activation_dtype() const override;
  Tensor AllocActivation(std::vector<int64_t> shape) override;
  Tensor ActivationFromHost(std::span<const float> values, std::vector<int64_t> shape) override;
  absl::StatusOr<Weight> LoadWeight(const TensorView& view) override;
  absl::StatusOr<Tensor> LoadVector(const TensorView& view) override;

  void MatMul(const Tensor& x, const Weight& w, Tensor* y) override;
  void MatMulShared(const Tensor& x, std::span<const Weight* const> ws,
                    std::span<Tensor* const> ys) override;
  void MatMulAdd(const Tensor& x, const Weight& w, Tensor* y) override;
  void CopyColumns(const Tensor& src, int64_t col_begin, Tensor* dst) override;
  void AddBias(const Tensor& bias, Tensor* y) override;
  void Add(const Tensor& x, Tensor* y) override;
  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor* y) override;
  void SiluMul(const Tensor& gate, const Tensor& up, Tensor* out) override;
  void RopeTable(std::span<const int32_t> positions, std::span<const float> inv_freq,
                 Tensor* cos_sin) override;
  void Rope(const Tensor& cos_sin, bool interleaved, Tensor* x) override;
  void RopeQK(const Tensor& cos_sin, bool interleaved, Tensor* q, Tensor* k) override;
  void Embedding(std::span<const int32_t> tokens, const Weight& table, int64_t vocab_begin,
                 Tensor* out) override;
  void WriteKv(const Tensor& k, const Tensor& v, std::span<const int64_t> slots,
               const KvLayerView& cache) override;
  void Attention(const Tensor& q, const KvLayerView& cache, std::span<const AttentionSeq> seqs,
                 const AttentionParams& params, Tensor* out) override;

  int64_t max_recorded_rows() const override { return options_.max_recorded_rows; }
  absl::Status RunRecorded(const std::string& key, bool with_peers,
                           const std::function<absl::Status()>& step) override;
  void DropRecorded(const std::string& key_prefix) override;

  bool samples_on_device() const override { return true; }
  absl::StatusOr<std::vector<DeviceDrawn>> SampleOnDevice(
      const Tensor& logits, std::span<const int64_t> rows,
      std::span<const DeviceDraw> draws) override;

  // ---- beyond the Backend interface ----
  // Tokens for each row of `logits` [rows, V] (device), sampled on the device with the CPU
  // sampler's rules and RNG: arg-max when greedy, else the filtered inverse-CDF draw at
  // CounterUniform(seed, steps[r]). params and steps have one entry per row.
  absl::StatusOr<std::vector<int32_t>> SampleTokens(const Tensor& logits,
                                                    std::span<const SamplingParams> params,
                                                    std::span<const uint64_t> steps);
  // A [rows, cols] weight of uniform(-scale, scale) values made on the device (benchmarks).
  absl::StatusOr<Weight> RandomWeight(int64_t rows, int64_t cols, float scale, uint64_t seed);
  // Bytes the device has free now (cudaMemGetInfo), for sizing the KV pool.
  absl::StatusOr<size_t> FreeMemoryBytes() const;
  // Waits for all queued work; the first asynchronous error, if any.
  absl::Status Synchronize();
  // Host <-> device copies of `count` floats (for collectives staged through host memory).
  void CopyToHost(const float* device, float* host, size_t count);
  void CopyFromHost(const float* host, float* device, size_t count);
  // Device buffer of `bytes` from the backend's pool.
  absl::StatusOr<std::shared_ptr<void>> DeviceBytes(size_t bytes) { return pool_.Get(bytes); }
  // Prefill attention on the tensor cores (CudaBackendOptions::tensor_core_prefill) from now on.
  void set_tensor_core_prefill(bool on) { options_.tensor_core_prefill = on; }
  // Recorded steps so far: graphs held, captures made, replays run (all keys); the device
  // memory the held recordings keep (their activations and upload arenas).
  struct RecordedStats {
    int64_t graphs = 0, captures = 0, replays = 0, fallbacks = 0;
    int64_t bytes = 0;
  };
  RecordedStats recorded_stats() const;
  // Device memory this backend holds for its tensors and weights (its pool's bytes in use, not
  // the cached free buffers): now, and the most since ResetPeakMemory.
  struct MemoryStats {
    int64_t in_use = 0, peak = 0;
  };
  MemoryStats memory_stats() const {
    return {static_cast<int64_t>(pool_.bytes_in_use()),
            static_cast<int64_t>(pool_.peak_bytes_in_use())};
  }
  void ResetPeakMemory() { pool_.ResetPeak(); }

 private:
  explicit CudaBackend(const CudaBackendOptions& options) : options_(options) {}
  std::shared_ptr<void> Scratch(size_t bytes);  // aborts when the device is out of memory
  // Whether a step is being recorded or replayed; then `what` (a call that waits for the device
  // or copies from pageable memory) spoils it, and the caller skips its device work.
  bool Unrecordable(const char* what);
  // Tells the recorder about a device call other than a kernel launch; false: do not make it.
  template <typename T>
  bool Observe(const char* what, const T& args) {
    static_assert(std::has_unique_object_representations_v<T>);
    return recorder_ == nullptr || recorder_->OnCall(what, &args, sizeof(T));
  }
  // Clears `bytes` of device memory on the stream (shown to a recording like a launch).
  void Zero(void* device, size_t bytes);
  // Replay: copies the uploads and launches the graph. Capture: also instantiates it first.
  absl::Status LaunchRecording(cuda::StepRecording& rec, cudaGraph_t captured);
  void EvictRecordings();
  // The error of a step with peers that this rank alone could not record (RunRecorded).
  absl::Status AloneFails(const std::string& key, const std::string& reason);
  // A device copy of a host array, for kernels to read (never write): copied on the stream
  // through page-locked staging, or an earlier upload of the same bytes (a step uploads the same
  // block tables and slots for every layer; the RoPE frequencies never change).
  template <typename T>
  const T* Upload(std::span<const T> values, std::shared_ptr<void>* keep);
  const void* UploadBytes(const void* data, size_t bytes, std::shared_ptr<void>* keep);
  // Adjustments, draws and log-probs for every row of `logits` (modified in place).
  absl::StatusOr<std::vector<DeviceDrawn>> DrawRows(const Tensor& logits,
                                                    std::span<const DeviceDraw> draws);
  // A device tensor of `shape` and `dtype` (kF32 / kBF16), cleared when `zero`.
  Tensor AllocOf(std::vector<int64_t> shape, DType dtype, bool zero);
  void CheckMatMul(const Tensor& x, const Weight& w, const Tensor& y, const char* op) const;
  // The matmul input for w: x itself where its dtype is w's, else x rounded to bf16 now (an fp32
  // input to a bf16 weight); `keep` holds the rounded copy.
  const void* MatMulInput(const Tensor& x, const Weight& w, std::shared_ptr<void>* keep);
  // y = x · wᵀ + beta y; `xin` is x in w's dtype (MatMulInput).
  void Gemm(const Tensor& x, const void* xin, const Weight& w, float beta, Tensor* y);
  // Makes this backend's device current in the calling thread; every op calls it first.
  void Bind() const;
  void CheckDevice(const Tensor& t, const char* op) const;
  void CheckLaunch(const char* op);

  CudaBackendOptions options_;
  KvDType kv_dtype_ = KvDType::kFp32;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cuda::DevicePool pool_;
  std::shared_ptr<void> cublas_workspace_;
  // 8 x 256 KiB of page-locked staging: a step's uploads take a few KiB.
  cuda::PinnedRing staging_{256 << 10, 8};
  struct Uploaded {
    std::vector<uint8_t> bytes;
    std::shared_ptr<void> device;
  };
  std::deque<Uploaded> recent_uploads_;  // newest first; small uploads only
  cuda::PinnedBuffer download_;          // sampled tokens on their way back
  // Recorded steps by key; the recorder of the step running now (null: none).
  std::map<std::string, std::shared_ptr<cuda::StepRecording>> recordings_;
  uint64_t recording_clock_ = 0;
  cuda::StepRecorder* recorder_ = nullptr;
  RecordedStats recorded_stats_;
};

}  // namespace tpserve
