// Huge-page host buffers (weights): aligned, zeroed, writable to the end, and advised.
#include "worker/backend/host_memory.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "common/format/dtype.h"
#include "tests/worker/backend/random_weights.h"
#include "worker/backend/cpu/int8_gemm.h"

namespace tpserve {
namespace {

// Whether this kernel has transparent huge pages at all (without them madvise refuses the advice).
bool KernelHasThp() { return std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good(); }

// The VmFlags line of the mapping of /proc/self/smaps that holds `p` ("" if none).
std::string VmFlagsOf(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const uintptr_t at = reinterpret_cast<uintptr_t>(p);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    unsigned long long lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') {
      inside = lo <= at && at < hi;
      continue;
    }
    if (inside && line.rfind("VmFlags:", 0) == 0) return line;
  }
  return "";
}

TEST(HugePageBuffer, AlignedZeroedWritableAndAdvised) {
  const size_t bytes = 5 * kHugePageBytes + 12345;  // not a whole number of huge pages
  std::shared_ptr<void> buffer = HugePageBuffer(bytes);
  auto* p = static_cast<uint8_t*>(buffer.get());
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kHugePageBytes, 0u);
  for (size_t i = 0; i < bytes; i += 4096) ASSERT_EQ(p[i], 0) << i;
  EXPECT_EQ(p[bytes - 1], 0);
  std::memset(p, 0xAB, bytes);
  EXPECT_EQ(p[bytes - 1], 0xAB);
  // MADV_HUGEPAGE shows as "hg" among the mapping's flags (whether the kernel then finds huge
  // pages for it is its business: the advice is a hint).
  const std::string flags = VmFlagsOf(p);
  ASSERT_FALSE(flags.empty()) << "no mapping holds the buffer";
  if (!KernelHasThp()) GTEST_SKIP() << "this kernel has no transparent huge pages";
  EXPECT_NE(flags.find(" hg"), std::string::npos) << flags;
}

TEST(HugePageBuffer, BigPackedWeightsLiveInItAndSmallOnesDoNot) {
  std::mt19937 rng(3);
  // 2048 x 1024 Q8_0 packs to ~2.1 MB: one huge page and more.
  const testing::RandomMatrix big = testing::MakeRandomMatrix(DType::kQ8_0, 2048, 1024, rng);
  const auto packed =
      PackInt8Weight(DType::kQ8_0, 2048, 1024, big.weight.data, big.weight.row_stride_bytes);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(packed->data.get()) % kHugePageBytes, 0u);
  if (KernelHasThp()) EXPECT_NE(VmFlagsOf(packed->data.get()).find(" hg"), std::string::npos);
  const testing::RandomMatrix small = testing::MakeRandomMatrix(DType::kQ4_1, 64, 576, rng);
  const auto small_packed =
      PackInt8Weight(DType::kQ4_1, 64, 576, small.weight.data, small.weight.row_stride_bytes);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small_packed->data.get()) % 64, 0u);
  EXPECT_EQ(VmFlagsOf(small_packed->data.get()).find(" hg"), std::string::npos);
}

}  // namespace
}  // namespace tpserve
