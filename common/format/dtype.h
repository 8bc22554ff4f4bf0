// Element types of model tensors (dense and GGML block-quantised) and their conversion to fp32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "absl/status/status.h"

namespace tpserve {

// Dense types first, then GGML block-quantised types (names as in ggml / gguf-py).
// clang-format off
enum class DType {
  kF32, kF16, kBF16, kF64, kI8, kI16, kI32, kI64, kU8, kBool,
  kQ4_0, kQ4_1, kQ5_0, kQ5_1, kQ8_0, kQ8_1, kQ2_K, kQ3_K, kQ4_K, kQ5_K, kQ6_K, kQ8_K,
};
// clang-format on

// Storage layout of a type: `block_elems` elements are stored in `block_bytes` bytes (1 and
// sizeof(element) for dense types; e.g. 32 and 20 for Q4_1).
struct DTypeInfo {
  const char* name;  // "F32", "Q4_1", ... (GGUF spelling)
  int64_t block_elems;
  int64_t block_bytes;
  bool quantized;
};

const DTypeInfo& GetDTypeInfo(DType t);
inline const char* DTypeName(DType t) { return GetDTypeInfo(t).name; }

// Bytes of `n` consecutive elements (n must be a multiple of block_elems for quantized types).
size_t ElementsToBytes(DType t, int64_t n);

// Dequantises / converts `n` elements starting at `src` into fp32 `dst` (n multiple of
// block_elems). Matches gguf-py's `gguf.quants.dequantize` (fp16 scales are widened exactly, the
// block arithmetic is done in fp32). Returns INVALID_ARGUMENT for a bad `n`.
absl::Status ToFloat(DType t, const void* src, float* dst, int64_t n);

// IEEE binary16 / bfloat16 <-> binary32. FloatToHalf rounds to nearest even (inf on overflow).
float HalfToFloat(uint16_t h);
float BFloat16ToFloat(uint16_t b);
uint16_t FloatToHalf(float f);
uint16_t FloatToBFloat16(float f);  // round to nearest even; NaN stays NaN

// GGML type id (as stored in a GGUF tensor directory) -> DType; nullopt for ids we do not support
// (IQ*, TQ*, MXFP4, ...).
std::optional<DType> DTypeFromGgmlType(uint32_t ggml_type);
uint32_t GgmlTypeOf(DType t);
// Safetensors dtype string ("F32", "BF16", ...) -> DType; nullopt if unsupported.
std::optional<DType> DTypeFromSafetensors(std::string_view name);

}  // namespace tpserve
