// Setup, memory, weight loading and the elementwise ops of the CUDA backend (matmul, attention
// and sampling live in cuda_matmul.cc, cuda_attention.cc and cuda_sampling.cc).
#include "worker/backend/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "worker/backend/check.h"
#include "worker/backend/cuda/cuda_kernels.h"
#include "worker/backend/cuda/cuda_status.h"

namespace tpserve {
namespace {

constexpr size_t kCublasWorkspaceBytes = 32u << 20;  // Hopper's recommended cuBLAS workspace
constexpr size_t kLoadChunkBytes = 64u << 20;        // host staging per weight upload

void CheckSameShape(const Tensor& a, const Tensor& b, const char* op) {
  TPSERVE_CHECK(a.shape() == b.shape(), "%s: %s vs %s", op, a.ShapeString().c_str(),
                b.ShapeString().c_str());
}

// fp32 -> bf16 bits, round to nearest even (NaN kept quiet), as __float2bfloat16_rn does.
uint16_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(
    const CudaBackendOptions& options) {
  const KvDType kv = options.kv_dtype.value_or(
      options.precision == CudaPrecision::kFp32 ? KvDType::kFp32 : KvDType::kFp16);
  if (kv == KvDType::kInt8) {
    return absl::InvalidArgumentError(
        "KV cache int8: the CUDA backend keeps its KV pools in fp16 or fp32");
  }
  int count = 0;
  RETURN_IF_ERROR(cuda::CudaStatus(cudaGetDeviceCount(&count), "cudaGetDeviceCount"));
  if (options.device < 0 || options.device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda:", options.device, ": this machine has ", count,
                     " CUDA device(s) (cuda:0 .. cuda:", count - 1, ")"));
  }
  RETURN_IF_ERROR(cuda::CudaStatus(cudaSetDevice(options.device), "cudaSetDevice"));
  auto backend = std::unique_ptr<CudaBackend>(new CudaBackend(options));
  backend->kv_dtype_ = kv;
  RETURN_IF_ERROR(cuda::CudaStatus(
      cudaStreamCreateWithFlags(&backend->stream_, cudaStreamNonBlocking), "cudaStreamCreate"));
  RETURN_IF_ERROR(cuda::CublasStatus(cublasCreate(&backend->cublas_), "cublasCreate"));
  RETURN_IF_ERROR(
      cuda::CublasStatus(cublasSetStream(backend->cublas_, backend->stream_), "cublasSetStream"));
  // Our own workspace, so cuBLAS allocates nothing per call. fp32 mode: pedantic math, so fp32
  // GEMMs stay fp32 (no TF32, no reduced-precision reductions) and compare tightly with the CPU.
  ASSIGN_OR_RETURN(backend->cublas_workspace_, backend->pool_.Get(kCublasWorkspaceBytes));
  RETURN_IF_ERROR(cuda::CublasStatus(
      cublasSetWorkspace(backend->cublas_, backend->cublas_workspace_.get(), kCublasWorkspaceBytes),
      "cublasSetWorkspace"));
  RETURN_IF_ERROR(cuda::CublasStatus(
      cublasSetMathMode(backend->cublas_, options.precision == CudaPrecision::kFp32
                                              ? CUBLAS_PEDANTIC_MATH
                                              : CUBLAS_DEFAULT_MATH),
      "cublasSetMathMode"));
  return backend;
}

CudaBackend::~CudaBackend() {
  if (stream_ != nullptr) Bind();
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  cublas_workspace_.reset();
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

std::string CudaBackend::name() const {
  return absl::StrCat("cuda:", options_.device,
                      options_.precision == CudaPrecision::kBf16 ? " (bf16)" : " (fp32)");
}

std::shared_ptr<void> CudaBackend::Scratch(size_t bytes) {
  if (recorder_ != nullptr) {
    // The recording's memory; once the step is known not to be recorded (or not to match) any
    // small buffer does: nothing it issues from then on runs.
    if (std::shared_ptr<void> p = recorder_->Alloc(bytes)) return p;
    bytes = 256;
  }
  absl::StatusOr<std::shared_ptr<void>> p = pool_.Get(bytes);
  TPSERVE_CHECK(p.ok(), "%s", p.status().ToString().c_str());
  return *std::move(p);
}

namespace {
constexpr size_t kRecentUploads = 16;          // a step's distinct uploads, with room
constexpr size_t kRecentUploadMax = 64 << 10;  // larger ones are not kept for reuse
}  // namespace

const void* CudaBackend::UploadBytes(const void* data, size_t bytes, std::shared_ptr<void>* keep) {
  if (recorder_ != nullptr) {
    // Into the recording's arena, copied to the device in one go before the graph runs.
    keep->reset();
    if (const void* p = recorder_->Upload(data, bytes)) return p;
    *keep = Scratch(std::max<size_t>(bytes, 1));  // not matching: nothing will read it
    return keep->get();
  }
  if (bytes <= kRecentUploadMax) {
    for (auto it = recent_uploads_.begin(); it != recent_uploads_.end(); ++it) {
      if (it->bytes.size() == bytes && std::memcmp(it->bytes.data(), data, bytes) == 0) {
        *keep = it->device;
        if (it != recent_uploads_.begin()) {
          Uploaded hit = std::move(*it);
          recent_uploads_.erase(it);
          recent_uploads_.push_front(std::move(hit));
        }
        return keep->get();
      }
    }
  }
  *keep = Scratch(std::max<size_t>(bytes, 1));
  TPSERVE_CUDA_CHECK(staging_.CopyToDevice(keep->get(), data, bytes, stream_));
  if (bytes <= kRecentUploadMax) {
    const auto* p = static_cast<const uint8_t*>(data);
    recent_uploads_.push_front(Uploaded{std::vector<uint8_t>(p, p + bytes), *keep});
    if (recent_uploads_.size() > kRecentUploads) recent_uploads_.pop_back();
  }
  return keep->get();
}

template <typename T>
const T* CudaBackend::Upload(std::span<const T> values, std::shared_ptr<void>* keep) {
  return static_cast<const T*>(UploadBytes(values.data(), values.size_bytes(), keep));
}
template const int32_t* CudaBackend::Upload(std::span<const int32_t>, std::shared_ptr<void>*);
template const int64_t* CudaBackend::Upload(std::span<const int64_t>, std::shared_ptr<void>*);
template const float* CudaBackend::Upload(std::span<const float>, std::shared_ptr<void>*);
template const uint8_t* CudaBackend::Upload(std::span<const uint8_t>, std::shared_ptr<void>*);
template const cuda::SampleRowParams* CudaBackend::Upload(std::span<const cuda::SampleRowParams>,
                                                          std::shared_ptr<void>*);

void CudaBackend::Zero(void* device, size_t bytes) {
  const struct {
    const void* ptr;
    size_t bytes;
  } args{device, bytes};
  if (Observe("cudaMemsetAsync", args)) {
    TPSERVE_CUDA_CHECK(cudaMemsetAsync(device, 0, bytes, stream_));
  }
}

void CudaBackend::Bind() const {
  // The current device is per host thread; ops may come from any thread (one per rank in tests,
  // the service's threads in a worker), and the stream belongs to device K.
  int current = -1;
  if (cudaGetDevice(&current) != cudaSuccess || current != options_.device) {
    TPSERVE_CUDA_CHECK(cudaSetDevice(options_.device));
  }
}

void CudaBackend::CheckDevice(const Tensor& t, const char* op) const {
  TPSERVE_CHECK(t.device() == Device::kCuda || t.numel() == 0, "%s: a %s tensor on the CPU", op,
                t.ShapeString().c_str());
}

void CudaBackend::CheckLaunch(const char* op) {
  const cudaError_t err = cudaGetLastError();
  TPSERVE_CHECK(err == cudaSuccess, "%s: kernel launch failed: %s", op, cudaGetErrorString(err));
}

Tensor CudaBackend::AllocOf(std::vector<int64_t> shape, DType dtype, bool zero) {
  Bind();
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const size_t bytes = std::max<size_t>(static_cast<size_t>(n) * (dtype == DType::kF32 ? 4 : 2), 1);
  std::shared_ptr<void> storage = Scratch(bytes);
  if (zero) Zero(storage.get(), bytes);  // bf16 zero is all zero bits too
  void* data = storage.get();
  return Tensor(std::move(storage), data, std::move(shape), Device::kCuda, dtype);
}

Tensor CudaBackend::Alloc(std::vector<int64_t> shape) {
  return AllocOf(std::move(shape), DType::kF32, /*zero=*/true);
}

// Every element is written before it is read (the Backend contract): no clearing.
Tensor CudaBackend::AllocUninitialized(std::vector<int64_t> shape) {
  return AllocOf(std::move(shape), DType::kF32, /*zero=*/false);
}

DType CudaBackend::activation_dtype() const {
  return options_.precision == CudaPrecision::kBf16 ? DType::kBF16 : DType::kF32;
}

Tensor CudaBackend::AllocActivation(std::vector<int64_t> shape) {
  return AllocOf(std::move(shape), activation_dtype(), /*zero=*/false);
}

Tensor CudaBackend::FromHost(std::span<const float> values, std::vector<int64_t> shape) {
  Tensor t = Alloc(std::move(shape));
  TPSERVE_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "FromHost: %zu values for %s",
                values.size(), t.ShapeString().c_str());
  CopyFromHost(values.data(), t.data(), values.size());
  return t;
}

Tensor CudaBackend::ActivationFromHost(std::span<const float> values, std::vector<int64_t> shape) {
  if (activation_dtype() == DType::kF32) return FromHost(values, std::move(shape));
  Tensor t = AllocOf(std::move(shape), DType::kBF16, /*zero=*/true);
  TPSERVE_CHECK(static_cast<int64_t>(values.size()) == t.numel(),
                "ActivationFromHost: %zu values for %s", values.size(), t.ShapeString().c_str());
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) bits[i] = FloatToBFloat16(values[i]);
  if (bits.empty() || Unrecordable("a copy from pageable host memory")) return t;
  // Pageable source: returns once the data is staged, so `bits` may go right after.
  TPSERVE_CUDA_CHECK(cudaMemcpyAsync(t.raw(), bits.data(), bits.size() * sizeof(uint16_t),
                                     cudaMemcpyHostToDevice, stream_));
  return t;
}

std::vector<float> CudaBackend::ToHost(const Tensor& t) {
  Bind();
  std::vector<float> host(t.numel());
  if (t.dtype() == DType::kF32) {
    CopyToHost(t.data(), host.data(), host.size());
    return host;
  }
  std::vector<uint16_t> bits(host.size());
  if (!bits.empty() && !Unrecordable("a copy to the host")) {
    TPSERVE_CUDA_CHECK(cudaMemcpyAsync(bits.data(), t.raw(), bits.size() * sizeof(uint16_t),
                                       cudaMemcpyDeviceToHost, stream_));
    TPSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  for (size_t i = 0; i < bits.size(); ++i) host[i] = BFloat16ToFloat(bits[i]);
  return host;
}

void CudaBackend::CopyToHost(const float* device, float* host, size_t count) {
  Bind();
  if (count == 0) return;
  if (Unrecordable("a copy to the host")) {
    std::fill(host, host + count, 0.0f);
    return;
  }
  TPSERVE_CUDA_CHECK(
      cudaMemcpyAsync(host, device, count * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  TPSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::CopyFromHost(const float* host, float* device, size_t count) {
  Bind();
  if (count == 0 || Unrecordable("a copy from pageable host memory")) return;
  // Pageable source: returns once the data is staged, so `host` may be freed right after.
  TPSERVE_CUDA_CHECK(
      cudaMemcpyAsync(device, host, count * sizeof(float), cudaMemcpyHostToDevice, stream_));
}

absl::Status CudaBackend::Synchronize() {
  Bind();
  if (Unrecordable("a wait for the device")) return absl::OkStatus();
  return cuda::CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
}

absl::StatusOr<size_t> CudaBackend::FreeMemoryBytes() const {
  Bind();
  size_t free_bytes = 0, total = 0;
  RETURN_IF_ERROR(cuda::CudaStatus(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo"));
  return free_bytes;
}

absl::StatusOr<Weight> CudaBackend::LoadWeight(const TensorView& view) {
  Bind();
  if (Unrecordable("loading a weight")) {
    return absl::FailedPreconditionError("LoadWeight inside a recorded step");
  }
  if (view.data == nullptr || view.rows <= 0 || view.cols <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight view is empty (", view.rows, " x ", view.cols, ")"));
  }
  const bool bf16 = options_.precision == CudaPrecision::kBf16;
  const size_t elem = bf16 ? 2 : 4;
  const size_t row_bytes = static_cast<size_t>(view.cols) * elem;
  ASSIGN_OR_RETURN(std::shared_ptr<void> device, pool_.Get(row_bytes * view.rows));
  // Rows in chunks: dequantise to fp32 on the host (the CPU oracle's ToFloat, so fp32 mode holds
  // exactly the oracle's values), round to bf16 if asked, upload.
  const int64_t chunk_rows =
      std::max<int64_t>(1, static_cast<int64_t>(kLoadChunkBytes / (view.cols * sizeof(float))));
  std::vector<float> f32(static_cast<size_t>(std::min(chunk_rows, view.rows) * view.cols));
  std::vector<uint16_t> b16(bf16 ? f32.size() : 0);
  for (int64_t r0 = 0; r0 < view.rows; r0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, view.rows - r0);
    for (int64_t r = 0; r < rows; ++r) {
      RETURN_IF_ERROR(ToFloat(view.dtype, view.row(r0 + r), &f32[r * view.cols], view.cols));
    }
    const void* src = f32.data();
    if (bf16) {
      for (int64_t i = 0; i < rows * view.cols; ++i) b16[i] = ToBf16(f32[i]);
      src = b16.data();
    }
    // Pageable source: the call returns once `src` is staged, so the next chunk may reuse it.
    RETURN_IF_ERROR(
        cuda::CudaStatus(cudaMemcpyAsync(static_cast<uint8_t*>(device.get()) + r0 * row_bytes, src,
                                         rows * row_bytes, cudaMemcpyHostToDevice, stream_),
                         "uploading a weight"));
  }
  RETURN_IF_ERROR(Synchronize());
  return Weight{.dtype = bf16 ? DType::kBF16 : DType::kF32,
                .rows = view.rows,
                .cols = view.cols,
                .data = static_cast<const uint8_t*>(device.get()),
                .row_stride_bytes = row_bytes,
                .owned = device};
}

absl::StatusOr<Tensor> CudaBackend::LoadVector(const TensorView& view) {
  ASSIGN_OR_RETURN(std::vector<float> values, ViewToFloat(view));
  return FromHost(values, {static_cast<int64_t>(values.size())});
}

absl::StatusOr<Weight> CudaBackend::RandomWeight(int64_t rows, int64_t cols, float scale,
                                                 uint64_t seed) {
  Bind();
  const bool bf16 = options_.precision == CudaPrecision::kBf16;
  const size_t row_bytes = static_cast<size_t>(cols) * (bf16 ? 2 : 4);
  ASSIGN_OR_RETURN(std::shared_ptr<void> device, pool_.Get(row_bytes * rows));
  cuda::LaunchRandomFill(device.get(), bf16, rows * cols, scale, seed, stream_);
  RETURN_IF_ERROR(cuda::CudaStatus(cudaGetLastError(), "random fill"));
  return Weight{.dtype = bf16 ? DType::kBF16 : DType::kF32,
                .rows = rows,
                .cols = cols,
                .data = static_cast<const uint8_t*>(device.get()),
                .row_stride_bytes = row_bytes,
                .owned = device};
}

void CudaBackend::CopyColumns(const Tensor& src, int64_t col_begin, Tensor* dst) {
  Bind();
  CheckCopyColumns(src, col_begin, *dst);
  CheckDevice(src, "CopyColumns");
  CheckDevice(*dst, "CopyColumns");
  TPSERVE_CHECK(src.dtype() == dst->dtype(), "CopyColumns: %s into %s", DTypeName(src.dtype()),
                DTypeName(dst->dtype()));
  if (src.numel() == 0) return;
  const size_t elem = static_cast<size_t>(src.element_bytes());
  const size_t width = static_cast<size_t>(src.cols()) * elem;
  void* to = static_cast<char*>(dst->raw()) + col_begin * elem;
  const struct {
    const void *dst, *src;
    size_t dpitch, width, height;
  } copy_args{to, src.raw(), static_cast<size_t>(dst->cols()) * elem, width,
              static_cast<size_t>(src.rows())};
  if (!Observe("cudaMemcpy2DAsync", copy_args)) return;
  TPSERVE_CUDA_CHECK(cudaMemcpy2DAsync(to, copy_args.dpitch, src.raw(), width, width,
                                       copy_args.height, cudaMemcpyDeviceToDevice, stream_));
}

namespace {
bool IsBf16(const Tensor& t) { return t.dtype() == DType::kBF16; }
}  // namespace

void CudaBackend::AddBias(const Tensor& bias, Tensor* y) {
  Bind();
  TPSERVE_CHECK(bias.numel() == y->cols(), "AddBias: bias %s for %s", bias.ShapeString().c_str(),
                y->ShapeString().c_str());
  CheckDevice(bias, "AddBias");
  CheckDevice(*y, "AddBias");
  cuda::LaunchAddBias(bias.data(), y->raw(), IsBf16(*y), y->rows(), y->cols(), stream_);
  CheckLaunch("AddBias");
}

void CudaBackend::Add(const Tensor& x, Tensor* y) {
  Bind();
  CheckSameShape(x, *y, "Add");
  CheckDevice(x, "Add");
  CheckDevice(*y, "Add");
  cuda::LaunchAdd(x.raw(), IsBf16(x), y->raw(), IsBf16(*y), y->numel(), stream_);
  CheckLaunch("Add");
}

void CudaBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor* y) {
  Bind();
  CheckSameShape(x, *y, "RmsNorm");
  TPSERVE_CHECK(weight.numel() == x.cols(), "RmsNorm: weight %s for %s",
                weight.ShapeString().c_str(), x.ShapeString().c_str());
  TPSERVE_CHECK(x.raw() != y->raw() || x.dtype() == y->dtype(), "RmsNorm: in place from %s to %s",
                DTypeName(x.dtype()), DTypeName(y->dtype()));
  CheckDevice(x, "RmsNorm");
  CheckDevice(weight, "RmsNorm");
  CheckDevice(*y, "RmsNorm");
  cuda::LaunchRmsNorm(x.raw(), IsBf16(x), weight.data(), eps, y->raw(), IsBf16(*y), x.rows(),
                      x.cols(), stream_);
  CheckLaunch("RmsNorm");
}

void CudaBackend::SiluMul(const Tensor& gate, const Tensor& up, Tensor* out) {
  Bind();
  CheckSameShape(gate, up, "SiluMul");
  CheckSameShape(gate, *out, "SiluMul");
  TPSERVE_CHECK(gate.dtype() == up.dtype() && gate.dtype() == out->dtype(),
                "SiluMul: gate %s, up %s, out %s", DTypeName(gate.dtype()), DTypeName(up.dtype()),
                DTypeName(out->dtype()));
  CheckDevice(gate, "SiluMul");
  CheckDevice(up, "SiluMul");
  CheckDevice(*out, "SiluMul");
  cuda::LaunchSiluMul(gate.raw(), up.raw(), out->raw(), IsBf16(gate), gate.numel(), stream_);
  CheckLaunch("SiluMul");
}

void CudaBackend::RopeTable(std::span<const int32_t> positions, std::span<const float> inv_freq,
                            Tensor* cos_sin) {
  Bind();
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  TPSERVE_CHECK(
      cos_sin->rows() == static_cast<int64_t>(positions.size()) && cos_sin->cols() == 2 * half,
      "RopeTable: %s for %zu positions, %lld pairs", cos_sin->ShapeString().c_str(),
      positions.size(), static_cast<long long>(half));
  std::shared_ptr<void> keep_pos, keep_freq;
  const int32_t* pos = Upload(positions, &keep_pos);
  const float* freq = Upload(inv_freq, &keep_freq);
  cuda::LaunchRopeTable(pos, freq, cos_sin->data(), cos_sin->rows(), half, stream_);
  CheckLaunch("RopeTable");
}

void CudaBackend::Rope(const Tensor& cos_sin, bool interleaved, Tensor* x) {
  RopeQK(cos_sin, interleaved, x, nullptr);
}

// q and, when given, k in one launch.
void CudaBackend::RopeQK(const Tensor& cos_sin, bool interleaved, Tensor* q, Tensor* k) {
  Bind();
  for (const Tensor* x : {q, k}) {
    if (x == nullptr) continue;
    TPSERVE_CHECK(x->ndim() == 3 && x->dim(0) == cos_sin.rows() && x->dim(2) == cos_sin.cols(),
                  "Rope: x %s, table %s", x->ShapeString().c_str(), cos_sin.ShapeString().c_str());
    TPSERVE_CHECK(x->dtype() == q->dtype(), "Rope: q %s, k %s", DTypeName(q->dtype()),
                  DTypeName(x->dtype()));
    CheckDevice(*x, "Rope");
  }
  cuda::LaunchRope(cos_sin.data(), interleaved, q->raw(), q->dim(0), q->dim(1),
                   k != nullptr ? k->raw() : nullptr, k != nullptr ? k->dim(1) : 0, q->dim(2),
                   IsBf16(*q), stream_);
  CheckLaunch("Rope");
}

void CudaBackend::Embedding(std::span<const int32_t> tokens, const Weight& table,
                            int64_t vocab_begin, Tensor* out) {
  Bind();
  TPSERVE_CHECK(out->rows() == static_cast<int64_t>(tokens.size()) && out->cols() == table.cols,
                "Embedding: out %s for %zu tokens of width %lld", out->ShapeString().c_str(),
                tokens.size(), static_cast<long long>(table.cols));
  TPSERVE_CHECK(table.dtype == DType::kF32 || table.dtype == DType::kBF16,
                "Embedding: a %s table is not a CUDA weight", DTypeName(table.dtype));
  CheckDevice(*out, "Embedding");
  const bool bf16 = table.dtype == DType::kBF16;
  std::shared_ptr<void> keep;
  const int32_t* ids = Upload(tokens, &keep);
  cuda::LaunchEmbedding(ids, static_cast<int64_t>(tokens.size()), table.data, bf16, table.rows,
                        table.cols, static_cast<int64_t>(table.row_stride_bytes / (bf16 ? 2 : 4)),
                        vocab_begin, out->raw(), IsBf16(*out), stream_);
  CheckLaunch("Embedding");
}

}  // namespace tpserve
