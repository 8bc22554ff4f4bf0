#include "common/format/dtype.h"

#include <bit>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/format/dequant.h"

namespace tpserve {
namespace {

// Indexed by DType. Quantised block sizes follow ggml's block_* structs (ggml-common.h).
constexpr DTypeInfo kInfos[] = {
    {"F32", 1, 4, false},
    {"F16", 1, 2, false},
    {"BF16", 1, 2, false},
    {"F64", 1, 8, false},
    {"I8", 1, 1, false},
    {"I16", 1, 2, false},
    {"I32", 1, 4, false},
    {"I64", 1, 8, false},
    {"U8", 1, 1, false},
    {"BOOL", 1, 1, false},
    {"Q4_0", 32, 18, true},
    {"Q4_1", 32, 20, true},
    {"Q5_0", 32, 22, true},
    {"Q5_1", 32, 24, true},
    {"Q8_0", 32, 34, true},
    // Q8_1 is {f16 d, f16 s, i8 qs[32]} in ggml (36 bytes); gguf-py's size table still says 40.
    {"Q8_1", 32, 36, true},
    {"Q2_K", 256, 84, true},
    {"Q3_K", 256, 110, true},
    {"Q4_K", 256, 144, true},
    {"Q5_K", 256, 176, true},
    {"Q6_K", 256, 210, true},
    {"Q8_K", 256, 292, true},
};
static_assert(std::size(kInfos) == static_cast<size_t>(DType::kQ8_K) + 1);

// GGML type ids (ggml.h enum ggml_type) for each DType; -1 where GGML has none.
constexpr int kGgmlIds[] = {0, 1, 30, 28, 24, 25, 26, 27, -1, -1, 2,
                            3, 6, 7,  8,  9,  10, 11, 12, 13, 14, 15};
static_assert(std::size(kGgmlIds) == std::size(kInfos));

template <typename T>
void Convert(const void* src, float* dst, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, p + i * sizeof(T), sizeof(T));
    dst[i] = static_cast<float>(v);
  }
}

}  // namespace

const DTypeInfo& GetDTypeInfo(DType t) { return kInfos[static_cast<int>(t)]; }

size_t ElementsToBytes(DType t, int64_t n) {
  const DTypeInfo& info = GetDTypeInfo(t);
  return static_cast<size_t>(n / info.block_elems) * static_cast<size_t>(info.block_bytes);
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / NaN (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal half: normalise into a float (exactly representable).
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while ((mant & 0x400) == 0);
    bits = sign | static_cast<uint32_t>(112 - e) << 23 | ((mant & 0x3ff) << 13);
  }
  return std::bit_cast<float>(bits);
}

float BFloat16ToFloat(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t FloatToBFloat16(float f) {
  uint32_t n = std::bit_cast<uint32_t>(f);
  if ((n & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((n >> 16) | 64);  // quiet NaN
  return static_cast<uint16_t>((static_cast<uint64_t>(n) + 0x7fff + ((n >> 16) & 1)) >> 16);
}

uint16_t FloatToHalf(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00 | static_cast<uint16_t>((abs >> 13) & 0x3ff);
  if (abs >= 0x477ff000u) return sign | 0x7c00;  // rounds to >= 65520: inf
  if (abs >= 0x38800000u) {                      // normal half range (>= 2^-14)
    const uint32_t mant_rounded = abs + 0xfff + ((abs >> 13) & 1);
    return sign | static_cast<uint16_t>((mant_rounded - 0x38000000u) >> 13);
  }
  if (abs < 0x33000000u) return sign;  // < 2^-25: rounds to zero
  // Subnormal half: value = m * 2^-24 with m rounded to nearest even.
  const int exp = static_cast<int>(abs >> 23);        // biased float exponent, 102..112
  const uint32_t mant = (abs & 0x7fffff) | 0x800000;  // 24-bit significand
  const int shift = 126 - exp;                        // 14..24
  uint32_t m = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (m & 1))) ++m;
  return sign | static_cast<uint16_t>(m);
}

std::optional<DType> DTypeFromGgmlType(uint32_t ggml_type) {
  for (size_t i = 0; i < std::size(kGgmlIds); ++i) {
    if (kGgmlIds[i] >= 0 && static_cast<uint32_t>(kGgmlIds[i]) == ggml_type) {
      return static_cast<DType>(i);
    }
  }
  return std::nullopt;
}

uint32_t GgmlTypeOf(DType t) {
  const int id = kGgmlIds[static_cast<int>(t)];
  return id < 0 ? UINT32_MAX : static_cast<uint32_t>(id);
}

std::optional<DType> DTypeFromSafetensors(std::string_view name) {
  struct Entry {
    std::string_view name;
    DType type;
  };
  static constexpr Entry kEntries[] = {
      {"F32", DType::kF32}, {"F16", DType::kF16},  {"BF16", DType::kBF16}, {"F64", DType::kF64},
      {"I8", DType::kI8},   {"I16", DType::kI16},  {"I32", DType::kI32},   {"I64", DType::kI64},
      {"U8", DType::kU8},   {"BOOL", DType::kBool}};
  for (const Entry& e : kEntries) {
    if (e.name == name) return e.type;
  }
  return std::nullopt;
}

absl::Status ToFloat(DType t, const void* src, float* dst, int64_t n) {
  const DTypeInfo& info = GetDTypeInfo(t);
  if (n < 0 || n % info.block_elems != 0) {
    return absl::InvalidArgumentError(absl::StrCat("ToFloat(", info.name, "): element count ", n,
                                                   " is not a multiple of the block size ",
                                                   info.block_elems));
  }
  const uint8_t* p = static_cast<const uint8_t*>(src);
  const int64_t nb = n / info.block_elems;
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      break;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = HalfToFloat(dequant::LoadU16(p + 2 * i));
      break;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = BFloat16ToFloat(dequant::LoadU16(p + 2 * i));
      break;
    case DType::kF64:
      Convert<double>(src, dst, n);
      break;
    case DType::kI8:
      Convert<int8_t>(src, dst, n);
      break;
    case DType::kI16:
      Convert<int16_t>(src, dst, n);
      break;
    case DType::kI32:
      Convert<int32_t>(src, dst, n);
      break;
    case DType::kI64:
      Convert<int64_t>(src, dst, n);
      break;
    case DType::kU8:
      Convert<uint8_t>(src, dst, n);
      break;
    case DType::kBool:
      for (int64_t i = 0; i < n; ++i) dst[i] = p[i] != 0 ? 1.0f : 0.0f;
      break;
    default: {
      const dequant::BlockFn fn = dequant::BlockFunction(t);
      for (int64_t b = 0; b < nb; ++b) {
        fn(p + b * info.block_bytes, dst + b * info.block_elems);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace tpserve
