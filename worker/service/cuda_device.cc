#include "worker/service/cuda_device.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "worker/backend/cuda/cuda_backend.h"
#include "worker/backend/cuda/host_staged_communicator.h"

#if TPSERVE_HAVE_NCCL
#include "worker/parallel/nccl_communicator.h"
#endif

namespace tpserve {
namespace {

// Gloo between hosts, the activations copied device -> host -> device around each collective.
// Owns the Gloo communicator the staging wraps.
class OwningHostStaged final : public Communicator {
 public:
  OwningHostStaged(std::unique_ptr<Communicator> inner, CudaBackend& backend)
      : inner_(std::move(inner)), staged_(*inner_, backend) {}
  int rank() const override { return staged_.rank(); }
  int world_size() const override { return staged_.world_size(); }
  absl::Status AllReduceSum(float* data, size_t count) override {
    return staged_.AllReduceSum(data, count);
  }
  absl::Status GatherV(const float* in, std::span<const size_t> counts, float* out,
                       int root) override {
    return staged_.GatherV(in, counts, out, root);
  }
  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    return staged_.Broadcast(data, bytes, root);
  }
  absl::Status Barrier() override { return staged_.Barrier(); }
  absl::Status WaitPending() override { return staged_.WaitPending(); }

 private:
  std::unique_ptr<Communicator> inner_;
  HostStagedCommunicator staged_;
};

class CudaDevice final : public WorkerDevice {
 public:
  CudaDevice(std::unique_ptr<CudaBackend> backend, bool nccl)
      : backend_(std::move(backend)), nccl_(nccl) {}

  Backend& backend() override { return *backend_; }

  DeviceDescription Describe() const override {
    DeviceDescription d;
    d.kind = "cuda";
    d.index = backend_->device_index();
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, d.index) == cudaSuccess) {
      d.name = prop.name;
      d.memory_total_bytes = static_cast<int64_t>(prop.totalGlobalMem);
      d.compute_units = prop.multiProcessorCount;
      d.compute_capability = prop.major * 10 + prop.minor;
    }
    d.memory_free_bytes = FreeDeviceBytes().value_or(0);
    d.compute_dtype = bf16() ? "bf16" : "f32";
    d.kv_cache_dtype = KvDTypeName(backend_->kv_dtype());
    return d;
  }

  std::string Summary() const override {
    return absl::StrCat("cuda:", backend_->device_index(), " ", bf16() ? "bf16" : "fp32",
                        ", collectives ", nccl_ ? "nccl" : "gloo (staged through host memory)");
  }

  absl::Status CheckDtype(const std::string& dtype) const override {
    if (dtype.empty()) return absl::OkStatus();
    const bool fp32 = dtype == "fp32" || dtype == "f32" || dtype == "float32";
    if ((fp32 && !bf16()) || (dtype == "bf16" && bf16())) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        "dtype \"", dtype, "\": this worker computes in ", bf16() ? "bf16" : "fp32",
        " (tpserve-worker --dtype); send \"\" or restart the worker with --dtype ", dtype));
  }

  std::optional<int64_t> FreeDeviceBytes() const override {
    absl::StatusOr<size_t> free = backend_->FreeMemoryBytes();
    if (!free.ok()) return std::nullopt;
    return static_cast<int64_t>(*free);
  }

  absl::StatusOr<std::unique_ptr<Communicator>> Connect(const ConnectRequest& r) override {
    if (nccl_ || r.nccl_requested) return ConnectNccl(r);
    if (r.world_size == 1) return std::unique_ptr<Communicator>(new LocalCommunicator());
    ASSIGN_OR_RETURN(std::unique_ptr<Communicator> gloo, r.make_gloo());
    return std::unique_ptr<Communicator>(new OwningHostStaged(std::move(gloo), *backend_));
  }

 private:
  bool bf16() const { return backend_->precision() == CudaPrecision::kBf16; }

  absl::StatusOr<std::unique_ptr<Communicator>> ConnectNccl(const ConnectRequest& r) {
#if TPSERVE_HAVE_NCCL
    if (!r.make_store) {
      return absl::FailedPreconditionError(
          "NCCL needs the coordinator's rendezvous store (start the worker with --coordinator)");
    }
    std::unique_ptr<KvStore> store = r.make_store();
    // The Gloo prefix the coordinator sends ("g7/gloo/") is per generation: NCCL's id lives
    // beside it, so a new generation never reads an old id.
    NcclOptions options{.rank = r.rank,
                        .world_size = r.world_size,
                        .device = backend_->device_index(),
                        .store_prefix = absl::StrCat(r.store_prefix, "nccl/"),
                        .init_timeout = r.timeout,
                        .op_timeout = r.timeout};
    ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> comm,
                     NcclCommunicator::Create(*store, options, backend_->stream()));
    return std::unique_ptr<Communicator>(new HostAwareCommunicator(std::move(comm), *backend_));
#else
    return absl::UnimplementedError(
        "NCCL collectives: this tpserve-worker was built without NCCL (TPSERVE_WITH_NCCL=OFF); "
        "use --collectives gloo");
#endif
  }

  std::unique_ptr<CudaBackend> backend_;
  const bool nccl_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerDevice>> OpenCudaDevice(int index, bool bf16, bool nccl,
                                                             std::optional<KvDType> kv_dtype,
                                                             int64_t max_recorded_rows) {
#if !TPSERVE_HAVE_NCCL
  if (nccl) {
    return absl::InvalidArgumentError(
        "--collectives nccl: this tpserve-worker was built without NCCL; use --collectives gloo");
  }
#endif
  // Checked here rather than left to CudaBackend::Create so the message names the flag, the
  // driver call and the way out.
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaErrorInsufficientDriver) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device cuda:", index, ": no NVIDIA driver: cudaGetDeviceCount returned ",
                     static_cast<int>(err), " (", cudaGetErrorName(err),
                     ") on this machine; install the driver or use --device cpu"));
  }
  if (err != cudaSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device cuda:", index, ": no usable GPU: cudaGetDeviceCount returned ",
                     static_cast<int>(err), " (", cudaGetErrorName(err), ": ",
                     cudaGetErrorString(err), "); use --device cpu"));
  }
  if (index >= count) {
    return absl::InvalidArgumentError(absl::StrCat("--device cuda:", index, ": this machine has ",
                                                   count, " GPU(s) (cuda:0 .. cuda:", count - 1,
                                                   ")"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> backend,
                   CudaBackend::Create(CudaBackendOptions{
                       .device = index,
                       .precision = bf16 ? CudaPrecision::kBf16 : CudaPrecision::kFp32,
                       .kv_dtype = kv_dtype,
                       .max_recorded_rows = max_recorded_rows}));
  return std::unique_ptr<WorkerDevice>(new CudaDevice(std::move(backend), nccl));
}

}  // namespace tpserve
