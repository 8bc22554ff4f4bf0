#include "worker/service/device.h"

#include <charconv>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/service/memory_budget.h"

#if TPSERVE_HAVE_CUDA
#include "worker/service/cuda_device.h"
#endif

namespace tpserve {
namespace {

std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(colon + 1);
    name.erase(0, name.find_first_not_of(' '));
    return name;
  }
  return "cpu";
}

bool IsFp32(const std::string& dtype) {
  return dtype == "fp32" || dtype == "f32" || dtype == "float32";
}

class CpuDevice final : public WorkerDevice {
 public:
  CpuDevice(int threads, CpuPrecision precision, std::optional<KvDType> kv_dtype)
      : threads_(threads), backend_(threads, precision, kv_dtype) {}

  Backend& backend() override { return backend_; }

  DeviceDescription Describe() const override {
    return DeviceDescription{.kind = "cpu",
                             .index = 0,
                             .name = CpuModelName(),
                             .memory_total_bytes = HostTotalBytes(),
                             .memory_free_bytes = HostAvailableBytes(),
                             .compute_units = threads_,
                             .compute_capability = 0,
                             .compute_dtype = backend_.precision() == CpuPrecision::kFp32
                                                  ? "f32"
                                                  : CpuPrecisionName(backend_.precision()),
                             .kv_cache_dtype = KvDTypeName(backend_.kv_dtype())};
  }

  std::string Summary() const override {
    return absl::StrCat("cpu ", CpuPrecisionName(backend_.precision()), " (", threads_,
                        " threads), KV cache ", KvDTypeName(backend_.kv_dtype()),
                        ", collectives gloo");
  }

  absl::Status CheckDtype(const std::string& dtype) const override {
    if (dtype.empty() || IsFp32(dtype) || dtype == "int8" || dtype == "int8x2") {
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(
        absl::StrCat("dtype \"", dtype,
                     "\": the CPU backend computes in int8x2, int8 or f32 (send one, or \"\")"));
  }

  std::optional<int64_t> FreeDeviceBytes() const override { return std::nullopt; }

  absl::StatusOr<std::unique_ptr<Communicator>> Connect(const ConnectRequest& r) override {
    if (r.nccl_requested) {
      return absl::UnimplementedError(
          "communicator KIND_NCCL: this worker computes on the CPU; CPU ranks use KIND_GLOO "
          "(start it with --device cuda:K for NCCL)");
    }
    if (r.world_size == 1) return std::unique_ptr<Communicator>(new LocalCommunicator());
    return r.make_gloo();
  }

 private:
  const int threads_;
  CpuBackend backend_;
};

int ThreadsOrDefault(int threads) {
  if (threads > 0) return threads;
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace

bool BuiltWithCuda() { return TPSERVE_HAVE_CUDA != 0; }
bool BuiltWithNccl() { return TPSERVE_HAVE_NCCL != 0; }

std::unique_ptr<WorkerDevice> OpenCpuDevice(int threads, CpuPrecision precision,
                                            std::optional<KvDType> kv_dtype) {
  return std::make_unique<CpuDevice>(ThreadsOrDefault(threads), precision, kv_dtype);
}

absl::StatusOr<std::unique_ptr<WorkerDevice>> OpenDevice(const DeviceOptions& o) {
  if (o.collectives != "gloo" && o.collectives != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat("--collectives ", o.collectives, ": expected gloo or nccl"));
  }
  if (!o.dtype.empty() && !IsFp32(o.dtype) && o.dtype != "bf16" && o.dtype != "int8" &&
      o.dtype != "int8x2") {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype ", o.dtype, ": expected fp32, int8x2 or int8 (cpu), bf16 (cuda)"));
  }
  if (o.device == "cpu") {
    if (o.dtype == "bf16") {
      return absl::InvalidArgumentError(
          "--dtype bf16: the CPU backend computes in int8x2, int8 or fp32 (bf16 is for --device "
          "cuda:K)");
    }

    if (o.collectives == "nccl") {
      return absl::InvalidArgumentError(
          "--collectives nccl: NCCL connects GPUs; CPU ranks use gloo (or use --device cuda:K)");
    }
    absl::StatusOr<CpuPrecision> precision = ParseCpuPrecision(o.dtype);
    if (!precision.ok()) {
      return absl::Status(precision.status().code(),
                          absl::StrCat("--dtype ", precision.status().message()));
    }
    absl::StatusOr<std::optional<KvDType>> kv = ParseKvDType(o.kv_cache_dtype);
    if (!kv.ok()) {
      return absl::Status(kv.status().code(),
                          absl::StrCat("--kv-cache-dtype: ", kv.status().message()));
    }
    return OpenCpuDevice(o.threads, *precision, *kv);
  }
  // cuda or cuda:K
  int index = 0;
  const std::string prefix = "cuda:";
  if (o.device != "cuda") {
    if (o.device.rfind(prefix, 0) != 0 || o.device.size() == prefix.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--device ", o.device, ": expected cpu, cuda or cuda:K (K = GPU ordinal)"));
    }
    const char* begin = o.device.data() + prefix.size();
    const char* end = o.device.data() + o.device.size();
    const auto [stop, ec] = std::from_chars(begin, end, index);
    if (ec != std::errc() || stop != end || index < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--device ", o.device, ": expected cpu, cuda or cuda:K (K = GPU ordinal)"));
    }
  }
  absl::StatusOr<std::optional<KvDType>> kv = ParseKvDType(o.kv_cache_dtype);
  if (!kv.ok()) {
    return absl::Status(kv.status().code(),
                        absl::StrCat("--kv-cache-dtype: ", kv.status().message()));
  }
  if (*kv == KvDType::kInt8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--kv-cache-dtype ", o.kv_cache_dtype,
        ": the CUDA backend keeps its KV cache in fp16 or fp32 (int8 is --device cpu only)"));
  }
#if TPSERVE_HAVE_CUDA
  return OpenCudaDevice(index, !IsFp32(o.dtype), o.collectives == "nccl", *kv,
                        o.cuda_graph_max_batch);
#else
  return absl::FailedPreconditionError(absl::StrCat(
      "--device ", o.device,
      ": this tpserve-worker was built without CUDA (configure where nvcc is found, or with "
      "-DTPSERVE_WITH_CUDA=ON); use --device cpu"));
#endif
}

}  // namespace tpserve
