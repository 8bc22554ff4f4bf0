// --device parsing and the backend factory; runs without a GPU.
#include "worker/backend/cuda/backend_factory.h"

#include <gtest/gtest.h>

#include "worker/backend/cuda/cuda_probe.h"

namespace tpserve {
namespace {

TEST(ParseDevice, AcceptsCpuAndCudaOrdinals) {
  absl::StatusOr<DeviceSpec> cpu = ParseDevice("cpu");
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_FALSE(cpu->cuda);
  absl::StatusOr<DeviceSpec> cuda = ParseDevice("cuda");
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  EXPECT_TRUE(cuda->cuda);
  EXPECT_EQ(cuda->index, 0);
  absl::StatusOr<DeviceSpec> three = ParseDevice("cuda:3:fp32");
  ASSERT_TRUE(three.ok()) << three.status();
  EXPECT_EQ(three->index, 3);
  EXPECT_TRUE(three->fp32);
  absl::StatusOr<DeviceSpec> bf16 = ParseDevice("cuda:1:bf16");
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_FALSE(bf16->fp32);
}

TEST(ParseDevice, RejectsOtherSpellings) {
  for (const char* bad :
       {"gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:0:fp16", "cuda:0:fp32:1", "CPU", ""}) {
    absl::StatusOr<DeviceSpec> spec = ParseDevice(bad);
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    if (!spec.ok()) {
      EXPECT_NE(spec.status().message().find("cuda:K"), std::string::npos) << spec.status();
    }
  }
}

TEST(MakeBackend, CpuAlwaysWorksCudaExplainsItself) {
  absl::StatusOr<std::unique_ptr<Backend>> cpu = MakeBackend("cpu", 1);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ((*cpu)->device(), Device::kCpu);
  absl::StatusOr<std::unique_ptr<Backend>> cuda = MakeBackend("cuda:0", 1);
  if (cuda::ProbeDevices().ok()) {
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    EXPECT_EQ((*cuda)->device(), Device::kCuda);
  } else {
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition) << cuda.status();
  }
}

}  // namespace
}  // namespace tpserve
