#include "worker/backend/cuda/cuda_probe.h"

#include <gtest/gtest.h>

namespace tpserve::cuda {
namespace {

// Without a GPU the probe must explain itself rather than crash; with one, a kernel must run.
TEST(CudaProbe, ReportsDeviceOrExplainsWhyNot) {
  auto devices = ProbeDevices();
  if (!devices.ok()) {
    EXPECT_EQ(devices.status().code(), absl::StatusCode::kFailedPrecondition) << devices.status();
    EXPECT_NE(devices.status().message().find("no"), std::string::npos) << devices.status();
    GTEST_SKIP() << "no GPU here: " << devices.status();
  }
  EXPECT_GE(devices->count, 1);
  auto value = RoundTripKernel(1234);
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, 1234);
}

}  // namespace
}  // namespace tpserve::cuda
