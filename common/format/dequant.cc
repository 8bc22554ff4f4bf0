// Block layouts follow ggml-common.h; the arithmetic follows gguf-py's quants.py step by step
// (fp16 scales widened to fp32, every product rounded to fp32 in the same order), so results match
// `gguf.quants.dequantize` bit for bit. This file is compiled with -ffp-contract=off: a fused
// multiply-add would round once instead of twice and differ from numpy in the last bit.
#include "common/format/dequant.h"

namespace tpserve::dequant {
namespace {

constexpr int kQK = 256;  // elements of a K-quant super-block

float F16At(const uint8_t* p) { return HalfToFloat(LoadU16(p)); }

// {f16 d, u8 qs[16]}: x = d * (q - 8); low nibbles are elements 0..15, high nibbles 16..31.
void Q4_0Block(const uint8_t* b, float* y) {
  const float d = F16At(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 0x0f) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

// {f16 d, f16 m, u8 qs[16]}: x = d * q + m.
void Q4_1Block(const uint8_t* b, float* y) {
  const float d = F16At(b), m = F16At(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0x0f) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

// 5-bit quants: low nibble as Q4_*, bit 4 of element j is bit j of the u32 qh.
uint32_t LoadQh(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// {f16 d, u8 qh[4], u8 qs[16]}: x = d * (q - 16).
void Q5_0Block(const uint8_t* b, float* y) {
  const float d = F16At(b);
  const uint32_t qh = LoadQh(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + 16] = d * static_cast<float>(hi - 16);
  }
}

// {f16 d, f16 m, u8 qh[4], u8 qs[16]}: x = d * q + m.
void Q5_1Block(const uint8_t* b, float* y) {
  const float d = F16At(b), m = F16At(b + 2);
  const uint32_t qh = LoadQh(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo) + m;
    y[j + 16] = d * static_cast<float>(hi) + m;
  }
}

// {f16 d, i8 qs[32]}: x = q * d.
void Q8_0Block(const uint8_t* b, float* y) {
  const float d = F16At(b);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

// {f16 d, f16 s (= d * sum(qs), unused here), i8 qs[32]}: x = q * d.
void Q8_1Block(const uint8_t* b, float* y) {
  const float d = F16At(b);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[4 + j])) * d;
}

// {u8 scales[16], u8 qs[64], f16 d, f16 dmin}: 16 groups of 16; group g has scale d * (sc & 15)
// and min dmin * (sc >> 4). Element e = h*128 + s*32 + l holds bits 2s..2s+1 of qs[h*32 + l].
void Q2_KBlock(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = F16At(b + 80), dmin = F16At(b + 82);
  for (int e = 0; e < kQK; ++e) {
    const int h = e / 128, s = (e / 32) % 4, l = e % 32, g = e / 16;
    const float dl = d * static_cast<float>(scales[g] & 0x0f);
    const float ml = dmin * static_cast<float>(scales[g] >> 4);
    const int q = (qs[h * 32 + l] >> (2 * s)) & 3;
    y[e] = dl * static_cast<float>(q) - ml;
  }
}

// {u8 hmask[32], u8 qs[64], u8 scales[12], f16 d}: 16 groups of 16 with 6-bit signed scales
// (low 4 bits in scales[0..7] nibbles, high 2 bits in scales[8..11]); q = low 2 bits from qs
// minus 4 where the hmask bit is 0.
void Q3_KBlock(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = F16At(b + 108);
  float dl[16];
  for (int k = 0; k < 16; ++k) {
    const int lo = (sc[k % 8] >> (4 * (k / 8))) & 0x0f;
    const int hi = (sc[8 + k % 4] >> (2 * (k / 4))) & 0x03;
    dl[k] = d * static_cast<float>((lo | (hi << 4)) - 32);
  }
  for (int e = 0; e < kQK; ++e) {
    const int h = e / 128, s = (e / 32) % 4, l = e % 32;
    const int ql = (qs[h * 32 + l] >> (2 * s)) & 3;
    const int qh = ((hmask[l] >> (e / 32)) & 1) ^ 1;
    y[e] = dl[e / 16] * static_cast<float>(ql - (qh << 2));
  }
}

// 6-bit scales and mins of Q4_K / Q5_K for the 8 groups of 32, packed into 12 bytes.
void ScaleMinK4(const uint8_t* s, int* sc, int* mn) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 0x3f;
    mn[j] = s[4 + j] & 0x3f;
    sc[4 + j] = (s[8 + j] & 0x0f) | ((s[j] >> 2) & 0x30);
    mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
  }
}

// {f16 d, f16 dmin, u8 scales[12], u8 qs[128]}: x = (d*sc) * q - (dmin*m); element
// e = c*64 + s*32 + l is nibble s of qs[c*32 + l].
void Q4_KBlock(const uint8_t* b, float* y) {
  const float d = F16At(b), dmin = F16At(b + 2);
  int sc[8], mn[8];
  ScaleMinK4(b + 4, sc, mn);
  const uint8_t* qs = b + 16;
  for (int e = 0; e < kQK; ++e) {
    const int c = e / 64, s = (e / 32) % 2, l = e % 32, g = e / 32;
    const float dg = d * static_cast<float>(sc[g]);
    const float mg = dmin * static_cast<float>(mn[g]);
    const int q = (qs[c * 32 + l] >> (4 * s)) & 0x0f;
    y[e] = dg * static_cast<float>(q) - mg;
  }
}

// {f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]}: as Q4_K plus bit 4 of element e from
// bit e/32 of qh[e % 32].
void Q5_KBlock(const uint8_t* b, float* y) {
  const float d = F16At(b), dmin = F16At(b + 2);
  int sc[8], mn[8];
  ScaleMinK4(b + 4, sc, mn);
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int e = 0; e < kQK; ++e) {
    const int c = e / 64, s = (e / 32) % 2, l = e % 32, g = e / 32;
    const float dg = d * static_cast<float>(sc[g]);
    const float mg = dmin * static_cast<float>(mn[g]);
    const int q = ((qs[c * 32 + l] >> (4 * s)) & 0x0f) | (((qh[l] >> g) & 1) << 4);
    y[e] = dg * static_cast<float>(q) - mg;
  }
}

// {u8 ql[128], u8 qh[64], i8 scales[16], f16 d}: 16 groups of 16, x = (d*sc) * (q - 32); element
// e = h*128 + s*32 + l: low nibble (s/2) of ql[h*64 + (s%2)*32 + l], high 2 bits 2s.. of
// qh[h*32 + l].
void Q6_KBlock(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = F16At(b + 208);
  for (int e = 0; e < kQK; ++e) {
    const int h = e / 128, s = (e / 32) % 4, l = e % 32;
    const int lo = (ql[h * 64 + (s % 2) * 32 + l] >> (4 * (s / 2))) & 0x0f;
    const int hi = (qh[h * 32 + l] >> (2 * s)) & 0x03;
    const float dg = d * static_cast<float>(scales[e / 16]);
    y[e] = dg * static_cast<float>(static_cast<int8_t>(lo | (hi << 4)) - 32);
  }
}

// {f32 d, i8 qs[256], i16 bsums[16]}: x = d * q (ggml's dequantize_row_q8_K).
void Q8_KBlock(const uint8_t* b, float* y) {
  float d;
  std::memcpy(&d, b, 4);
  for (int e = 0; e < kQK; ++e) y[e] = d * static_cast<float>(static_cast<int8_t>(b[4 + e]));
}

}  // namespace

BlockFn BlockFunction(DType t) {
  switch (t) {
    case DType::kQ4_0:
      return Q4_0Block;
    case DType::kQ4_1:
      return Q4_1Block;
    case DType::kQ5_0:
      return Q5_0Block;
    case DType::kQ5_1:
      return Q5_1Block;
    case DType::kQ8_0:
      return Q8_0Block;
    case DType::kQ8_1:
      return Q8_1Block;
    case DType::kQ2_K:
      return Q2_KBlock;
    case DType::kQ3_K:
      return Q3_KBlock;
    case DType::kQ4_K:
      return Q4_KBlock;
    case DType::kQ5_K:
      return Q5_KBlock;
    case DType::kQ6_K:
      return Q6_KBlock;
    case DType::kQ8_K:
      return Q8_KBlock;
    default:
      return nullptr;
  }
}

}  // namespace tpserve::dequant
