// Tensor views keep their dtype: a bf16 tensor's slices step in 2-byte elements, and its fp32
// accessor refuses it.
#include "worker/backend/tensor.h"

#include <gtest/gtest.h>

#include <memory>

namespace tpserve {
namespace {

TEST(Tensor, Bf16ViewsKeepTheDtypeAndStepInItsElements) {
  auto storage = std::shared_ptr<void>(new uint16_t[24](),
                                       [](void* p) { delete[] static_cast<uint16_t*>(p); });
  const Tensor t(storage, storage.get(), {4, 3, 2}, Device::kCpu, DType::kBF16);
  EXPECT_EQ(t.dtype(), DType::kBF16);
  EXPECT_EQ(t.element_bytes(), 2);
  EXPECT_EQ(t.bytes(), 48);
  const Tensor rows = t.Slice0(1, 3);
  EXPECT_EQ(rows.dtype(), DType::kBF16);
  EXPECT_EQ(static_cast<char*>(rows.raw()) - static_cast<char*>(t.raw()), 1 * 3 * 2 * 2);
  const Tensor flat = rows.Reshaped({12});
  EXPECT_EQ(flat.dtype(), DType::kBF16);
  EXPECT_EQ(flat.raw(), rows.raw());

  const Tensor f({4, 3});
  EXPECT_EQ(f.dtype(), DType::kF32);
  EXPECT_EQ(static_cast<char*>(f.Slice0(2, 4).raw()) - static_cast<char*>(f.raw()), 2 * 3 * 4);
  EXPECT_EQ(f.Slice0(2, 4).data(), f.row(2));
}

TEST(TensorDeathTest, Fp32AccessToABf16TensorAborts) {
  auto storage =
      std::shared_ptr<void>(new uint16_t[4](), [](void* p) { delete[] static_cast<uint16_t*>(p); });
  const Tensor t(storage, storage.get(), {2, 2}, Device::kCpu, DType::kBF16);
  EXPECT_DEATH((void)t.data(), "fp32 elements of a BF16 tensor \\[2, 2\\]");
  EXPECT_DEATH(Tensor(storage, storage.get(), {2, 2}, Device::kCpu, DType::kF16), "a F16 tensor");
}

}  // namespace
}  // namespace tpserve
