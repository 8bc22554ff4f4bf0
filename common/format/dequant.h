// Internal: per-block dequantisation of GGML quant types (used by ToFloat).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/format/dtype.h"

namespace tpserve::dequant {

// Decodes one block of the type (block_bytes in, block_elems floats out).
using BlockFn = void (*)(const uint8_t* block, float* out);
// nullptr for dense types.
BlockFn BlockFunction(DType t);

inline uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

}  // namespace tpserve::dequant
