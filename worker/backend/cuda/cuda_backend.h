// The CUDA backend (DESIGN.md §6): weights and GEMM inputs in bf16 with fp32 accumulation, or
// everything fp32 (for exact comparison with the CPU oracle). GEMMs through cuBLAS; RMSNorm,
// RoPE, SwiGLU, embedding, paged attention and sampling are own kernels (cuda_kernels.h).
//
// Activations are fp32 device Tensors (the Backend contract); in bf16 mode a matmul converts its
// input rows to bf16 on the fly, reads bf16 weights and writes fp32. All work goes to one stream
// per backend (one backend per worker); ToHost synchronises it. Device memory comes from a
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
  // Recorded steps so far: graphs held, captures made, replays run (all keys).
  struct RecordedStats {
    int64_t graphs = 0, captures = 0, replays = 0, fallbacks = 0;
  };
  RecordedStats recorded_stats() const;

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
  void CheckMatMul(const Tensor& x, const Weight& w, const Tensor& y, const char* op) const;
  // x rounded to bf16: the copy the previous op made of it (Bf16CopyOf), else rounded now.
  std::shared_ptr<void> Bf16Input(const Tensor& x);
  // bf16 mode: a buffer for the bf16 copy of `y` the calling op writes along with y, which the
  // next op may take as its matmul input instead of rounding y again (RmsNorm, SiluMul and
  // Attention each feed a matmul). Null in fp32 mode. Only the op right after may use it: any
  // backend call in between (each calls Bind) makes it stale.
  uint16_t* Bf16CopyOf(const Tensor& y);
  // y = x · wᵀ + beta y; x_bf16 is x rounded to bf16 where w is bf16.
  void Gemm(const Tensor& x, const void* x_bf16, const Weight& w, float beta, Tensor* y);
  // Makes this backend's device current in the calling thread; every op calls it first (which
  // also counts the calls, for Bf16CopyOf).
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
  struct Bf16Copy {
    const float* of = nullptr;  // the tensor's data
    int64_t numel = 0;
    uint64_t call = 0;  // the Bind() count of the op that made it
    std::shared_ptr<void> bits;
  };
  Bf16Copy bf16_copy_;
  mutable uint64_t binds_ = 0;
  // Recorded steps by key; the recorder of the step running now (null: none).
  std::map<std::string, std::shared_ptr<cuda::StepRecording>> recordings_;
  uint64_t recording_clock_ = 0;
  cuda::StepRecorder* recorder_ = nullptr;
  RecordedStats recorded_stats_;
};

}  // namespace tpserve
