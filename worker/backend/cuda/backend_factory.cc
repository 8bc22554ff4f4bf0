#include "worker/backend/cuda/backend_factory.h"

#include <charconv>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/status_macros.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/backend/cuda/cuda_backend.h"

namespace tpserve {

absl::StatusOr<DeviceSpec> ParseDevice(const std::string& device) {
  const auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("--device ", device, ": expected cpu, cuda, cuda:K or cuda:K:fp32"));
  };
  if (device == "cpu") return DeviceSpec{};
  std::vector<std::string> parts = absl::StrSplit(device, ':');
  if (parts.empty() || parts[0] != "cuda" || parts.size() > 3) return bad();
  DeviceSpec spec{.cuda = true};
  if (parts.size() >= 2) {
    const auto [end, ec] =
        std::from_chars(parts[1].data(), parts[1].data() + parts[1].size(), spec.index);
    if (ec != std::errc() || end != parts[1].data() + parts[1].size() || spec.index < 0) {
      return bad();
    }
  }
  if (parts.size() == 3) {
    if (parts[2] == "fp32") {
      spec.fp32 = true;
    } else if (parts[2] != "bf16") {
      return bad();
    }
  }
  return spec;
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& device, int cpu_threads) {
  ASSIGN_OR_RETURN(DeviceSpec spec, ParseDevice(device));
  if (!spec.cuda) return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(cpu_threads));
  ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> cuda,
                   CudaBackend::Create(CudaBackendOptions{
                       .device = spec.index,
                       .precision = spec.fp32 ? CudaPrecision::kFp32 : CudaPrecision::kBf16}));
  return std::unique_ptr<Backend>(std::move(cuda));
}

}  // namespace tpserve
