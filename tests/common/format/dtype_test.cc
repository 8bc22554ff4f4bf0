// DType tables and fp16 / bf16 conversions against gguf-py and numpy (dtypes.json).
#include "common/format/dtype.h"

#include <bit>
#include <cmath>

#include "gtest/gtest.h"
#include "tests/common/format/format_test_util.h"

namespace tpserve {
namespace {

using testing::Golden;
using testing::ReadJson;

constexpr DType kAllTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kF64,  DType::kI8,
                               DType::kI16,  DType::kI32,  DType::kI64,  DType::kU8,   DType::kBool,
                               DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0,
                               DType::kQ8_1, DType::kQ2_K, DType::kQ3_K, DType::kQ4_K, DType::kQ5_K,
                               DType::kQ6_K, DType::kQ8_K};

TEST(DTypeTest, BlockSizesAndIdsMatchGgufPy) {
  const nlohmann::json sizes = ReadJson(Golden("dtypes.json"))["sizes"];
  int checked = 0;
  for (DType t : kAllTypes) {
    const DTypeInfo& info = GetDTypeInfo(t);
    if (!sizes.contains(info.name)) continue;  // U8 / BOOL: safetensors-only
    const auto& s = sizes[info.name];
    SCOPED_TRACE(info.name);
    EXPECT_EQ(info.block_elems, s["block_elems"].get<int64_t>());
    if (t == DType::kQ8_1) {
      // ggml's block_q8_1 is {f16 d, f16 s, i8 qs[32]}; gguf-py's table (4 + 4 + 32) predates the
      // switch to fp16 d/s. We follow ggml (what llama.cpp writes).
      EXPECT_EQ(info.block_bytes, 2 + 2 + 32);
    } else {
      EXPECT_EQ(info.block_bytes, s["block_bytes"].get<int64_t>());
    }
    EXPECT_EQ(info.quantized, info.block_elems > 1);
    EXPECT_EQ(GgmlTypeOf(t), s["id"].get<uint32_t>());
    EXPECT_EQ(DTypeFromGgmlType(s["id"].get<uint32_t>()), t);
    ++checked;
  }
  EXPECT_EQ(checked, 20);
  EXPECT_FALSE(DTypeFromGgmlType(16).has_value());  // IQ2_XXS: not supported
  EXPECT_FALSE(DTypeFromGgmlType(4).has_value());   // removed Q4_2
}

TEST(DTypeTest, ElementsToBytes) {
  const nlohmann::json sizes = ReadJson(Golden("dtypes.json"))["sizes"];
  EXPECT_EQ(ElementsToBytes(DType::kQ4_1, 576),
            576 / 32 * sizes["Q4_1"]["block_bytes"].get<size_t>());
  EXPECT_EQ(ElementsToBytes(DType::kQ6_K, 512), 2 * sizes["Q6_K"]["block_bytes"].get<size_t>());
  EXPECT_EQ(ElementsToBytes(DType::kBF16, 7), 14u);
}

TEST(DTypeTest, SafetensorsNames) {
  EXPECT_EQ(DTypeFromSafetensors("BF16"), DType::kBF16);
  EXPECT_EQ(DTypeFromSafetensors("BOOL"), DType::kBool);
  EXPECT_FALSE(DTypeFromSafetensors("F8_E4M3").has_value());
}

TEST(DTypeTest, FloatToHalfMatchesNumpy) {
  const nlohmann::json j = ReadJson(Golden("dtypes.json"));
  const auto& f32 = j["f32_bits"];
  const auto& f16 = j["f16_bits"];
  ASSERT_EQ(f32.size(), f16.size());
  for (size_t i = 0; i < f32.size(); ++i) {
    const float x = std::bit_cast<float>(f32[i].get<uint32_t>());
    EXPECT_EQ(FloatToHalf(x), f16[i].get<uint16_t>()) << "x = " << x;
  }
}

TEST(DTypeTest, FloatToBFloat16MatchesGgufPy) {
  const nlohmann::json j = ReadJson(Golden("dtypes.json"));
  const auto& f32 = j["f32_bits"];
  const auto& bf16 = j["bf16_bits"];
  for (size_t i = 0; i < f32.size(); ++i) {
    const float x = std::bit_cast<float>(f32[i].get<uint32_t>());
    EXPECT_EQ(FloatToBFloat16(x), bf16[i].get<uint16_t>()) << "x = " << x;
  }
}

TEST(DTypeTest, HalfRoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_EQ(h & 0x7c00, 0x7c00u);
      continue;
    }
    ASSERT_EQ(FloatToHalf(f), h) << "h = " << h << " f = " << f;
  }
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
}

TEST(DTypeTest, ToFloatRejectsPartialBlocks) {
  std::vector<uint8_t> block(20, 0);
  std::vector<float> out(32);
  const absl::Status st = ToFloat(DType::kQ4_1, block.data(), out.data(), 31);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("Q4_1"), std::string::npos) << st;
  EXPECT_TRUE(ToFloat(DType::kQ4_1, block.data(), out.data(), 32).ok());
}

}  // namespace
}  // namespace tpserve
